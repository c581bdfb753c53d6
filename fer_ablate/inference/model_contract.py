"""The model contract, checked when a model is loaded: grey ``[n, 48, 48, 1]`` in, 7 probabilities out.

A model that breaks it used to fail late and quietly: an 8-class FER+ model made ``evaluate`` report
accuracy 0 and exit 0, and ``predict`` crash in ``zip()``. Model files are also sniffed by their first
bytes before Keras reads them, because Keras 3 names every foreign file "File not found" or
"Could not deserialize class 'Functional'": an HDF5 file renamed ``.keras`` and a file saved by Keras 2
get a line that says what they are and what to do instead. A file Keras cannot load keeps the real cause in
its one line (a custom class Keras could not locate is named, with how to register it).

Outputs are checked on a probe batch at load: rows must be non-negative and sum to 1. A model whose last
layer gives logits (rows summing to -1008 were served as "probabilities") gets a softmax added, said in
one warning line; outputs in 0..1 that do not sum to 1 (a sigmoid, multi-label head) or NaN are refused.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE, DataError

log = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
EXPECTED = f"grey [n, {IMAGE_SIZE}, {IMAGE_SIZE}, 1] images in, {len(CLASS_NAMES)} class probabilities out " \
           f"({', '.join(CLASS_NAMES)})"


class ModelError(DataError):
    """A model file or model that fer-ablate cannot use; the message names it, says what it is and what is needed."""


@dataclass(frozen=True)
class ModelFile:
    """What a model file really is: ``kind`` is "keras" (a Keras v3 zip), "hdf5", "savedmodel", "zip" or "unknown"."""

    path: Path
    kind: str
    keras_version: str | None = None


def sniff_model_file(path: str | Path) -> ModelFile:
    """Identify a model file by its content, not its name; ModelError if it does not exist."""
    path = Path(path)
    if path.is_dir():
        return ModelFile(path, "savedmodel" if (path / "saved_model.pb").is_file() else "unknown")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: {exc.strerror or exc}") from None
    if head.startswith(HDF5_MAGIC):
        return ModelFile(path, "hdf5", _hdf5_keras_version(path))
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if "config.json" not in names:
                    return ModelFile(path, "zip")
                meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        except (zipfile.BadZipFile, ValueError):
            return ModelFile(path, "zip")
        return ModelFile(path, "keras", str(meta.get("keras_version")) if meta.get("keras_version") else None)
    return ModelFile(path, "unknown")


def _hdf5_keras_version(path: Path) -> str | None:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version")
    except (ImportError, OSError):
        return None
    return version.decode() if isinstance(version, bytes) else (str(version) if version is not None else None)


def check_model_file(path: str | Path) -> ModelFile:
    """Refuse, before Keras reads it, a file whose content is no loadable Keras model for its name.

    Raises ModelError: missing file, an HDF5 file named ``.keras``, a Keras 2 ``.keras`` file, a zip that
    is no Keras model, a TensorFlow SavedModel folder, or bytes that are no known model format.
    """
    found = sniff_model_file(path)
    path, suffix = found.path, found.path.suffix.lower()
    if found.kind == "hdf5" and suffix != ".h5":
        raise ModelError(f"{path}: this is an HDF5 (legacy .h5) Keras file, not a .keras zip: rename it to "
                         f"{path.with_suffix('.h5').name}, or load it and re-save it as .keras with Keras 3")
    if found.kind == "keras" and _keras2(found):
        raise ModelError(_keras2_message(found))
    if found.kind == "zip":
        raise ModelError(f"{path}: a zip archive without config.json, not a Keras model")
    if found.kind == "savedmodel":
        raise ModelError(f"{path}: a TensorFlow SavedModel folder; Keras 3 cannot load it as a model: load it "
                         "with Keras 2 (tf_keras) and save it as .keras, or export the model with Keras 3")
    if found.kind == "unknown":
        with path.open("rb") as f:
            head = f.read(8)
        raise ModelError(f"{path}: not a Keras model file (starts with {head!r}; a .keras file is a zip "
                         "starting with PK, a .h5 file starts with \\x89HDF)")
    return found


def _keras2(found: ModelFile) -> bool:
    return bool(found.keras_version) and found.keras_version.split(".")[0] in {"1", "2"}


def _keras2_message(found: ModelFile) -> str:
    return (f"{found.path}: saved by Keras {found.keras_version} (TensorFlow 2.15 or older); Keras 3 cannot read "
            "it: re-save it with Keras 3 (rebuild the model and load its weights) or export it again")


def load_model_file(path: str | Path, loader: Callable[[str], Any]) -> Any:
    """Sniff ``path``, load it with ``loader`` and check the contract; ModelError with one line on failure."""
    found = check_model_file(path)
    try:
        model = loader(str(path))
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, OSError) as exc:
        if _keras2(found):
            raise ModelError(_keras2_message(found)) from exc
        raise ModelError(f"{path}: Keras could not load this {found.kind} file: {load_error_cause(exc)}") from exc
    return check_model(model, str(path))


def load_error_cause(exc: BaseException) -> str:
    """The real cause of a Keras load error, in one line: Keras 3 wraps it ("<class Functional> could not be
    deserialized properly ... Exception encountered: Could not locate class 'Scale' ..."), its first line
    names only the wrapper. A class Keras could not locate is named with how to make it known."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:  # the exception, then what it was raised from
        seen.add(id(exc))
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(chain)
    missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if missing:
        registered = re.search(r"'registered_name': '([^']+)'", text[missing.end():])
        alias = f" (registered as '{registered.group(1)}')" if registered else ""
        return (f"the custom {missing.group(1)} '{missing.group(2)}'{alias} is unknown here: import the module that "
                "defines it (decorated with @keras.saving.register_keras_serializable()) before loading the model")
    inner = text.rsplit("Exception encountered:", 1)[-1].strip()
    first = inner.splitlines()[0].strip() if inner else type(exc).__name__
    return first[:300]


def is_model_file(uri: str) -> bool:
    """True for a local path (``x.keras``, ``x.h5``, a folder), False for an MLflow URI (``runs:/``, ``models:/``)."""
    if "://" in uri or uri.split(":", 1)[0] in {"runs", "models"}:
        return False
    return Path(uri).exists() or Path(uri).suffix.lower() in {".keras", ".h5", ".hdf5"}


def load_checked(uri: str, loader: Callable[[str], Any]) -> Any:
    """``loader(uri)`` with the contract checked; a local file is sniffed first (see ``load_model_file``)."""
    if is_model_file(uri):
        return load_model_file(uri, loader)
    return check_model(loader(uri), uri)


def _shape(tensor: Any) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("n" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def check_model(model: Any, source: str) -> Any:
    """Return ``model`` when it maps ``[n, 48, 48, 1]`` to ``[n, 7]`` probabilities (a model giving logits:
    with a softmax added, see ``check_outputs``); ModelError naming ``source`` otherwise.

    Spatial sizes left open (``None``) are accepted: such a model takes 48x48 too.
    """
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):  # a subclassed model that was never called: nothing to read
        return model
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{source}: the model has {len(inputs)} input(s) and {len(outputs)} output(s); "
                         f"fer-ablate needs one of each: {EXPECTED}")
    given, gives = _shape(inputs[0]), _shape(outputs[0])
    want_in = (IMAGE_SIZE, IMAGE_SIZE, 1)
    fits_in = len(given) == 4 and all(d is None or d == w for d, w in zip(given[1:], want_in, strict=True))
    fits_out = len(gives) == 2 and gives[1] == len(CLASS_NAMES)
    if fits_in and fits_out:
        return check_outputs(model, source)
    hints = []
    if len(given) == 4 and given[3] == 3:
        hints.append("an RGB model")
    elif len(given) == 4 and given[1:3] != (IMAGE_SIZE, IMAGE_SIZE) and None not in given[1:3]:
        hints.append(f"made for {given[1]}x{given[2]} images")
    if len(gives) == 2 and gives[1] == 8:
        hints.append("8 classes: a FER+ model? FER+ adds contempt and orders its classes differently")
    elif not fits_out:
        hints.append(f"{gives[-1]} classes" if gives else "no class axis")
    detail = f" ({'; '.join(hints)})" if hints else ""
    raise ModelError(f"{source}: the model takes {_fmt(given)} and gives {_fmt(gives)}{detail}; "
                     f"fer-ablate needs {EXPECTED}")


PROBE_TOLERANCE = 1e-2  # a bf16 softmax sums to 1 within ~4e-3; logits that happen to within 1% do not occur


def probe_batch() -> np.ndarray:
    """``float32 [8, 48, 48, 1]`` raw 0-255 images: black, white, mid-grey, a gradient and 4 of noise (seeded)."""
    rng = np.random.default_rng(0)
    flat = [np.full((IMAGE_SIZE, IMAGE_SIZE), v, np.float32) for v in (0, 255, 128)]
    ramp = np.tile(np.linspace(0, 255, IMAGE_SIZE, dtype=np.float32), (IMAGE_SIZE, 1))
    noise = list(rng.integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32))
    return np.stack([*flat, ramp, *noise])[..., None]


def check_outputs(model: Any, source: str) -> Any:
    """``model`` if its outputs on ``probe_batch()`` are probabilities (non-negative, rows summing to 1
    within ``PROBE_TOLERANCE``); a model giving logits gets a softmax layer added, said in one warning.

    Raises ModelError naming ``source`` for NaN or infinite outputs, or outputs in 0..1 that do not sum to
    1 (a sigmoid head: each class scored on its own, no distribution to take a label from).
    """
    out = np.asarray(model(probe_batch(), training=False), dtype=np.float64)
    sums = out.sum(axis=1)
    if not np.isfinite(out).all():
        raise ModelError(f"{source}: the model gives NaN or infinite outputs on a probe batch of 8 images; "
                         f"fer-ablate needs {EXPECTED}")
    if out.min() >= -PROBE_TOLERANCE and np.abs(sums - 1).max() <= PROBE_TOLERANCE:
        return model
    seen = f"rows of a probe batch sum to {sums.min():.4g}..{sums.max():.4g}, outputs {out.min():.4g}..{out.max():.4g}"
    if out.min() >= 0 and out.max() <= 1:
        raise ModelError(f"{source}: the model's outputs are not probabilities ({seen}: a sigmoid head?); "
                         f"fer-ablate needs {EXPECTED}")
    log.warning("%s: the model gives logits, not probabilities (%s): a softmax is applied to its outputs", source, seen)
    return _with_softmax(model)


def _with_softmax(model: Any) -> Any:
    import keras

    probabilities = keras.layers.Softmax(dtype="float32", name="fer_ablate_softmax")(model.outputs[0])
    return keras.Model(model.inputs[0], probabilities, name=f"{model.name}_softmax")  # one input: the contract
