"""Image-folder datasets: ``<root>/<split>/<class>/<image>``, as in the FER2013 image-folder release.

Split folders are matched without case: ``train``/``training``, ``val``/``valid``/``validation``/``dev``,
``test``/``testing`` (``Test/`` and ``TRAIN/`` too). Class folders (angry, disgust, ...) map to FER2013's
label order. Validation comes from a validation folder when present, else is carved from train
(stratified, seeded). Hidden files and folders (dot-names, ``__MACOSX``, ``Thumbs.db``) are ignored; every
other file that is not loaded is counted by reason, logged in one line and returned for the run record.
Images are decoded by data/images.py, the decoder ``predict`` and serving use.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from fer_ablate.data.dataset import CLASS_NAMES, DataError, show_data, stratified_split
from fer_ablate.data.images import IMAGE_SUFFIXES, fit_face, read_grey

log = logging.getLogger(__name__)
SPLIT_NAMES = {
    "train": ("train", "training", "trainset", "trainimages"),
    "validation": ("val", "valid", "validation", "dev", "validationset", "valset", "publictest"),
    "test": ("test", "testing", "testset", "testimages", "privatetest"),
}
_SPLIT_OF = {alias: split for split, aliases in SPLIT_NAMES.items() for alias in aliases}
# Class folder spellings of other FER datasets' image-folder releases (FER+, AffectNet, RAF-DB, CK+).
CLASS_SYNONYMS = {
    "angry": ("angry", "anger", "angered"), "disgust": ("disgust", "disgusted"),
    "fear": ("fear", "fearful", "afraid", "scared"), "happy": ("happy", "happiness", "joy"),
    "sad": ("sad", "sadness"), "surprise": ("surprise", "surprised"), "neutral": ("neutral", "calm"),
}
_CLASS_OF = {alias: name for name, aliases in CLASS_SYNONYMS.items() for alias in aliases}
NO_FER2013_CLASS = ("contempt",)  # FER+ and AffectNet have it; FER2013's 7 classes do not
_LITTER = {"__macosx", "thumbs.db", "desktop.ini"}


def split_of(name: str) -> str | None:
    """The split a folder name stands for (``Test`` -> test, ``train_set`` -> train), or None."""
    return _SPLIT_OF.get(re.sub(r"[\s_\-.]", "", name.lower()))


def class_of(name: str) -> str | None:
    """The FER2013 class a folder name stands for (``Happiness`` -> happy, ``Fearful`` -> fear), or None."""
    return _CLASS_OF.get(re.sub(r"[\s_\-.]", "", name.lower()))


def is_hidden(path: Path) -> bool:
    """Dot-names (``.DS_Store``, macOS ``._x.jpg``, ``.ipynb_checkpoints``) and OS litter are ignored."""
    return path.name.startswith(".") or path.name.lower() in _LITTER


def read_face(path: Path) -> np.ndarray:
    """Read one image as grey uint8 48x48 (resized when needed); DataError names the file if unreadable."""
    return fit_face(read_grey(path))


def _find_split_dirs(root: Path, skipped: Counter) -> dict[str, Path]:
    """Split name -> folder; unrecognised folders are warned about by name and counted."""
    found: dict[str, Path] = {}
    unknown = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            continue
        if not entry.is_dir():
            skipped["file outside split folders"] += 1
            continue
        split = split_of(entry.name)
        if split is None:
            unknown.append(entry.name)
        elif split in found:
            raise DataError(f"{root}: both {show_data(found[split].name)} and {show_data(entry.name)} are the "
                            f"{split} split: keep one")
        else:
            found[split] = entry
    if unknown and not found and all(class_of(n) for n in unknown):
        raise DataError(f"{root}: class folders without split folders: move them into {root}/train/ "
                        f"(or {root}/test/ to evaluate a model)")
    for name in unknown:
        log.warning("data: %s: folder %s is not a split name (expected train/, val/ or validation/, test/): "
                    "not loaded", root, show_data(name))
        skipped[f"folder not a split name ({show_data(name)[1:-1]})"] += 1
    return found


def _read_split(folder: Path, skip_bad: bool, skipped: Counter) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for class_dir in sorted(folder.iterdir()):
        if is_hidden(class_dir):
            continue
        if not class_dir.is_dir():
            skipped["file outside class folders"] += 1
            continue
        name = class_of(class_dir.name)
        if name is None and class_dir.name.lower() in NO_FER2013_CLASS:
            raise DataError(f"{folder}: class folder {show_data(class_dir.name)} has no FER2013 class (7 classes: "
                            f"{', '.join(CLASS_NAMES)}): move it out of {folder} to train or evaluate on the rest")
        if name is None:
            raise DataError(f"{folder}: unknown class folder {show_data(class_dir.name)}; expected "
                            f"{', '.join(CLASS_NAMES)} (or a common spelling such as anger, happiness, fearful)")
        for path in sorted(class_dir.iterdir()):
            if is_hidden(path):
                continue
            if path.is_dir():
                nested = [p for p in path.rglob("*") if p.is_file() and not any(map(is_hidden, p.parents))
                          and not is_hidden(p)]
                skipped["file in a sub-folder of a class folder"] += len(nested)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped[f"unsupported file type ({path.suffix.lower() or 'no extension'})"] += 1
                continue
            try:
                images.append(read_face(path))
            except DataError:
                if not skip_bad:
                    raise
                skipped["unreadable image"] += 1
                continue
            labels.append(CLASS_NAMES.index(name))
    if not images:
        raise DataError(f"{folder}: no images found in class folders {CLASS_NAMES}")
    return np.stack(images), np.array(labels, dtype=np.int64)


def load_image_folders(
    root: str | Path, val_fraction: float, split_seed: int, skip_bad: bool = False
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Counter]:
    """Load the splits of an image-folder tree: ``({split: (uint8 [n,48,48], int64 [n])}, skipped)``.

    ``skipped`` counts what was not loaded, by reason. A tree without train/ gives only its evaluation
    splits (the caller decides whether that is enough). Raises DataError for a tree with no split folder,
    an unknown class folder, two folders for one split, or an unreadable image (unless ``skip_bad``).
    """
    root = Path(root)
    skipped: Counter = Counter()
    dirs = _find_split_dirs(root, skipped)
    if not dirs:
        csvs = sorted(p.name for p in root.glob("*.csv*"))
        wrapped = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p)
                         and any(split_of(q.name) for q in p.iterdir() if q.is_dir()))
        hint = (f"; to read the CSV pass {root / csvs[0]}" if len(csvs) == 1 else
                f"; the split folders are in {wrapped[0]}: pass that folder" if len(wrapped) == 1 else "")
        raise DataError(f"{root}: no split folders (expected <root>/train/<class>/*.jpg, optional val/ and "
                        f"test/){hint}")
    splits = {split: _read_split(folder, skip_bad, skipped) for split, folder in dirs.items()}
    if "validation" not in splits and "train" in splits:
        x, y = splits["train"]
        keep, carved = stratified_split(y, val_fraction, split_seed)
        splits["train"], splits["validation"] = (x[keep], y[keep]), (x[carved], y[carved])
    if skipped:
        log.warning("data: %s: not loaded: %s (hidden files ignored)", root,
                    ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    return {s: splits[s] for s in ("train", "validation", "test") if s in splits}, skipped
