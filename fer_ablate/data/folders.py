"""The FER2013 image-folder release: ``<root>/train/<class>/*.jpg|png``, ``<root>/test/<class>/...``.

Folder names (angry, disgust, ...) map to FER2013's label order. Validation comes from a ``val/`` or
``validation/`` folder when present, else is carved from train (stratified, seeded).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_ablate.data.dataset import CLASS_NAMES, IMAGE_SIZE, DataError, stratified_split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm"}
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "validation"), "test": ("test",)}


def read_face(path: Path) -> np.ndarray:
    """Read one image as grey uint8 48x48 (resized when needed); DataError names the file if unreadable."""
    try:
        with Image.open(path) as img:
            grey = img.convert("L")
            if grey.size != (IMAGE_SIZE, IMAGE_SIZE):
                grey = grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def _find_split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _read_split(folder: Path, skip_bad: bool, skipped: Counter) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = class_dir.name.lower()
        if name not in CLASS_NAMES:
            raise DataError(f"{class_dir}: unknown class folder '{class_dir.name}'; expected {CLASS_NAMES}")
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
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
    """Load train / validation / test splits from an image-folder tree."""
    root = Path(root)
    skipped: Counter = Counter()
    train_dir = _find_split_dir(root, "train")
    if train_dir is None:
        raise DataError(f"{root}: no train/ folder (expected <root>/train/<class>/*.jpg)")
    splits = {"train": _read_split(train_dir, skip_bad, skipped)}
    val_dir = _find_split_dir(root, "validation")
    if val_dir is not None:
        splits["validation"] = _read_split(val_dir, skip_bad, skipped)
    else:
        x, y = splits["train"]
        keep, carved = stratified_split(y, val_fraction, split_seed)
        splits["train"], splits["validation"] = (x[keep], y[keep]), (x[carved], y[carved])
    test_dir = _find_split_dir(root, "test")
    if test_dir is not None:
        splits["test"] = _read_split(test_dir, skip_bad, skipped)
    return splits, skipped
