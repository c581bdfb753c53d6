"""The in-memory dataset shared by every loader: uint8 faces and int labels per split."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fer_ablate.errors import EXIT_BAD_INPUT, FerAblateError

# FER2013's label order; every loader maps to it.
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48


class DataError(FerAblateError, ValueError):
    """Input data is malformed; the message names the file, the row or image, and the problem."""

    exit_code = EXIT_BAD_INPUT


def show_data(value: bytes | str, limit: int = 40) -> str:
    """Data quoted in an error message: one readable line, escaped and truncated to ``limit`` characters."""
    text = value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)
    escaped = repr(text[:limit])[1:-1]  # newlines, tabs and binary as \n, \t, \x00: never a second line
    if len(text) <= limit and len(escaped) <= limit:
        return f"'{escaped}'"
    return f"'{escaped[:limit]}...' ({len(text):,} characters)"


@dataclass
class Dataset:
    """Faces as ``uint8 [n, 48, 48]`` and labels as ``int64 [n]`` for each split present.

    ``splits`` maps ``train`` / ``validation`` / ``test`` to ``(x, y)``. ``source`` says where the data
    came from (``fer2013-csv``, ``image-folder``, ``synthetic``), ``digest`` identifies its content.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    source: str
    location: str
    digest: str
    skipped: dict[str, int] = field(default_factory=dict)

    def class_counts(self, split: str) -> dict[str, int]:
        """Number of images per class name in ``split``."""
        counts = Counter(self.splits[split][1].tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {name: len(y) for name, (_, y) in self.splits.items()}


def stratified_subset(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of a stratified random subset of size ``limit`` (all indices when limit is 0 or too big).

    Every class present keeps at least one example, so small quick runs still see disgust.
    """
    if limit <= 0 or limit >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    chosen = []
    classes, counts = np.unique(y, return_counts=True)
    quota = np.maximum(1, np.round(counts * limit / len(y)).astype(int))
    for cls, take in zip(classes, quota, strict=True):
        members = np.flatnonzero(y == cls)
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, carved) with ``fraction`` of each class carved out, seeded."""
    rng = np.random.default_rng(seed)
    carved = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        take = int(round(len(members) * fraction))
        # Every class with 2+ members gives at least one and keeps at least one; a singleton stays in train.
        take = min(max(take, 1), len(members) - 1) if len(members) > 1 else 0
        carved.append(members[:take])
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.array([], dtype=int)
    keep = np.setdiff1d(np.arange(len(y)), carved_idx)
    return keep, carved_idx
