"""fer-ablate: tracked, comparable, reproducible ablations of facial-expression-recognition CNNs."""

from __future__ import annotations

import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path

__version__ = "0.1.0"

# JAX's CUDA plugins, installed by `pip install -e ".[gpu]"` (jax[cuda12]); CPU-only jax (the dev extra) has none.
JAX_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def choose_backend(environ: dict[str, str], has_module, keras_config: Path | None = None) -> str | None:
    """The Keras backend to set before Keras is imported, or None to leave Keras' own choice.

    An explicit choice wins: ``$KERAS_BACKEND``, or a backend other than ``tensorflow`` in ``keras_config``
    (``~/.keras/keras.json``; Keras writes that file with ``tensorflow`` on first import, so that value is
    no choice).
    Otherwise ``jax`` when JAX's CUDA plugin is installed (the ``gpu`` extra: the GPU is used with no further
    step), or when JAX is installed and TensorFlow is not; else None (TensorFlow, the CPU default).
    ``has_module(name)`` says whether a top-level module is importable (``importlib.util.find_spec``).
    """
    if environ.get("KERAS_BACKEND"):
        return None
    if keras_config is not None and keras_config.is_file():
        try:
            if json.loads(keras_config.read_text()).get("backend", "tensorflow") != "tensorflow":
                return None
        except (ValueError, OSError):
            pass  # Keras reports a broken keras.json itself
    if any(has_module(name) for name in JAX_GPU_PLUGINS):
        return "jax"
    if has_module("jax") and not has_module("tensorflow"):
        return "jax"
    return None


def _set_backend() -> None:
    if "keras" in sys.modules:  # too late to choose: Keras fixed its backend at import
        return
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    backend = choose_backend(os.environ, lambda name: find_spec(name) is not None, home / "keras.json")
    if backend:
        os.environ["KERAS_BACKEND"] = backend


_set_backend()

# 40 M pixels is a 7,300 x 5,500 photo, beyond any camera a face would come from; a larger image is a
# decompression bomb (a 50 kB PNG can declare 1e10 pixels) or a mistake. Pillow's own limit is 179 M.
# data/images.py refuses larger images. OpenCV (the decoder of what Pillow does not identify: EXR, HDR) checks
# a header against $OPENCV_IO_MAX_IMAGE_PIXELS (default 2**30) before decoding, but reads it once, when cv2
# is imported, and Keras imports cv2: so it is set here, before any module can import either. A user's value
# is kept.
MAX_IMAGE_PIXELS = 40_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
