"""Resolve ``data.source`` and load a Dataset: FER2013 CSV, image folders or synthetic faces.

``auto`` uses ``$FER_DATA``, else ``data/fer2013.csv[.gz]`` in the project, else the built-in synthetic
faces, and says which in the log (and, through the caller, in a run tag).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate.data import cache
from fer_ablate.data.dataset import DataError, Dataset, stratified_split, stratified_subset
from fer_ablate.data.fer_csv import SPLIT_CODES, USAGE_TO_SPLIT, parse_fer_csv
from fer_ablate.data.folders import is_hidden, load_image_folders
from fer_ablate.data.synthetic import GENERATOR_VERSION, make_synthetic_faces
from fer_ablate.paths import project_root

log = logging.getLogger(__name__)
SYNTHETIC_SEED = 2013  # fixed: every variant and every machine sees the same synthetic faces


def resolve_source(source: str) -> str:
    """Turn ``auto`` into a concrete source (a path or ``synthetic``); check that a given path exists."""
    if source == "auto":
        env = os.environ.get("FER_DATA")
        if env:
            source = env
        else:
            for name in ("fer2013.csv", "fer2013.csv.gz"):
                candidate = project_root() / "data" / name
                if candidate.is_file():
                    return str(candidate)
            return "synthetic"
    if source == "synthetic":
        return source
    if not Path(source).exists():
        raise DataError(f"{source}: data file or folder not found (data.source / $FER_DATA)")
    return source


def _load_csv(path: Path, skip_bad_rows: bool) -> tuple[dict, str, dict]:
    digest = cache.content_hash(path)
    key = f"fer2013-{digest}-{'skip' if skip_bad_rows else 'strict'}"
    hit = cache.load(key)
    if hit is not None:
        log.info("data: %s from cache (%s)", path.name, key)
        images, labels, usage, skipped = hit["images"], hit["labels"], hit["usage"], hit["_meta"]["skipped"]
    else:
        start = time.perf_counter()
        images, labels, usage, skipped_counter = parse_fer_csv(path, skip_bad_rows, progress=log.info)
        skipped = dict(skipped_counter)
        log.info("data: parsed %s in %.2f s", path.name, time.perf_counter() - start)
        try:
            cache.store(key, {"images": images, "labels": labels, "usage": usage}, {"skipped": skipped})
        except OSError as exc:  # a read-only or full cache folder costs the next run a parse, not this one
            log.warning("data: parse cache not written (%s): %s is parsed again next time", exc, path.name)
    if skipped:
        log.warning("data: skipped %d bad rows of %s: %s", sum(skipped.values()), path, skipped)
    splits = {}
    for split, code in SPLIT_CODES.items():
        mask = usage == code
        if mask.any():
            splits[split] = (images[mask], labels[mask])
    return splits, digest, skipped


def _carve_validation(splits: dict, val_fraction: float, split_seed: int) -> dict:
    """Carve a stratified validation split out of train when the source has none (and has a train split)."""
    if "validation" not in splits and "train" in splits:
        x, y = splits["train"]
        keep, carved = stratified_split(y, val_fraction, split_seed)
        splits["train"], splits["validation"] = (x[keep], y[keep]), (x[carved], y[carved])
    return splits


def _carve_test(splits: dict, test_fraction: float, split_seed: int) -> dict:
    """Carve a stratified held-out test split out of train when asked and the source has none (FER2013
    without PrivateTest), so a final number comes from faces no choice looked at. Seeded by
    ``split_seed + 1``: independent of the validation carving, the same for every variant."""
    if test_fraction > 0 and "test" not in splits and "train" in splits:
        x, y = splits["train"]
        keep, carved = stratified_split(y, test_fraction, split_seed + 1)
        splits["train"], splits["test"] = (x[keep], y[keep]), (x[carved], y[carved])
        log.info("data: held out %d training faces as the test split (data.test_fraction=%g)", len(carved),
                 test_fraction)
    elif test_fraction > 0 and "test" in splits:
        log.info("data: the source has its own test split (%d faces); data.test_fraction is not used",
                 len(splits["test"][1]))
    return splits


def _array_digest(splits: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        x, y = splits[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(x).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


PURPOSES = ("train", "evaluate")


def load_dataset(data_cfg: dict[str, Any], purpose: str = "train") -> Dataset:
    """Load the dataset described by the ``data`` section of a resolved config (limits applied).

    ``purpose="train"`` needs a train split and refuses a source without one (DataError); ``"evaluate"``
    (scoring a saved model) accepts a source that holds only evaluation splits, such as a file of
    PrivateTest rows or a folder with only ``test/``.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    source = resolve_source(data_cfg["source"])
    skipped: dict = {}
    if source == "synthetic":
        n = data_cfg["synthetic_samples"]
        x, y = make_synthetic_faces(n, seed=SYNTHETIC_SEED)
        train_idx, rest = stratified_split(y, 0.2, SYNTHETIC_SEED)
        val_local, test_local = stratified_split(y[rest], 0.5, SYNTHETIC_SEED)
        splits = {
            "train": (x[train_idx], y[train_idx]),
            "validation": (x[rest][val_local], y[rest][val_local]),
            "test": (x[rest][test_local], y[rest][test_local]),
        }
        kind, location = "synthetic", f"{GENERATOR_VERSION}(n={n}, seed={SYNTHETIC_SEED})"
        digest = _array_digest(splits)
        log.warning("data: no FER2013 found (data.source=%s): using the built-in synthetic faces, %s",
                    data_cfg["source"], location)
    elif Path(source).is_dir():
        splits, counter = load_image_folders(
            source, data_cfg["val_fraction"], data_cfg["split_seed"], data_cfg["skip_bad_rows"]
        )
        skipped = dict(counter)
        kind, location, digest = "image-folder", str(Path(source).resolve()), _array_digest(splits)
    else:
        splits, digest, skipped = _load_csv(Path(source), data_cfg["skip_bad_rows"])
        splits = _carve_validation(splits, data_cfg["val_fraction"], data_cfg["split_seed"])
        kind, location = "fer2013-csv", str(Path(source).resolve())
    if purpose == "train" and "train" not in splits:
        raise DataError(_no_train_message(source, splits))
    splits = _carve_test(splits, data_cfg["test_fraction"], data_cfg["split_seed"])
    splits = _apply_limits(splits, data_cfg)
    dataset = Dataset(splits=splits, source=kind, location=location, digest=digest, skipped=skipped)
    log.info("data: %s %s, sizes %s", kind, location, dataset.sizes())
    return dataset


def _no_train_message(source: str, splits: dict) -> str:
    is_csv = Path(source).is_file()
    usage = {split: name for name, split in USAGE_TO_SPLIT.items()}
    held = ", ".join(f"{len(y):,} {usage[name] if is_csv else name}" for name, (_, y) in splits.items())
    what = "Training rows" if is_csv else "train/ folder"
    return (f"{source}: no {what} (only {held}): training needs {'them' if is_csv else 'one'}; to score a "
            f"saved model on it: "
            f"fer-ablate evaluate --model MODEL --data {source}")


def _apply_limits(splits: dict, data_cfg: dict) -> dict:
    """Stratified subsets for quick runs (``data.train_limit``, ``data.eval_limit``)."""
    limited = {}
    for name, (x, y) in splits.items():
        limit = data_cfg["train_limit"] if name == "train" else data_cfg["eval_limit"]
        idx = stratified_subset(y, limit, data_cfg["split_seed"])
        limited[name] = (x[idx], y[idx])
    return limited


def data_identity(data_cfg: dict[str, Any]) -> tuple[str, str]:
    """``(concrete source, content digest)`` of the ``data`` section, cheaply, without loading the data.

    ``auto`` is resolved (so adding ``data/fer2013.csv`` changes the identity); a CSV's digest is its
    content hash (the one its cache and its runs' ``data_digest`` use); an image folder's is a digest of its
    files' names and bytes (hidden files left out, as the loader does); the synthetic faces' is their
    generator version, seed and size. Each is computed once per file and remembered (data/cache.py). A
    resume key that includes the digest reruns everything when the data changes. Raises DataError for a
    source that does not exist.
    """
    source = resolve_source(data_cfg["source"])
    if source == "synthetic":
        blob = f"{GENERATOR_VERSION}|{SYNTHETIC_SEED}|{data_cfg['synthetic_samples']}"
        return source, hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = Path(source)
    if path.is_dir():
        return str(path.resolve()), cache.folder_hash(path, lambda name: not is_hidden(Path(name)))
    return str(path.resolve()), cache.content_hash(path)


def source_identity(source: str) -> str:
    """What ``data.source`` stands for in a config hash: ``synthetic`` for the built-in faces (given as
    ``synthetic`` or reached through ``auto``), ``content:<digest>`` for a file or image folder, so the same
    data at another path, through a symlink or spelled ``./x.csv`` rather than ``/abs/x.csv`` is the same
    configuration. A path that does not exist keeps its spelling (loading it raises DataError, naming it).
    """
    try:
        concrete = resolve_source(source)
    except DataError:
        return source
    if concrete == "synthetic":
        return concrete
    try:
        return "content:" + data_identity({"source": concrete})[1]
    except OSError:  # unreadable: loading it says so with the path; the hash only has to be defined
        return source
