"""Stratified, seeded k-fold assignments over a training pool, saved so every variant uses the same folds.

The pool is the dataset's ``train`` split (plus ``validation``, FER2013's PublicTest, when asked). Its
``test`` split (FER2013's PrivateTest) never enters a fold; without one, an unpooled validation split is
the held-out set. A fold assignment is one fold id per pool image, tied to the data's digest and the pool's
labels, so a saved assignment that does not match the data is refused instead of silently misused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from fer_ablate.data import CLASS_NAMES, Dataset
from fer_ablate.data.dataset import DataError


class FoldError(DataError):
    """A fold request the data cannot satisfy, or a fold file that does not match the data."""


@dataclass(frozen=True)
class FoldAssignment:
    """Fold id (0..k-1) of every pool image, with what it was made from."""

    k: int
    seed: int
    fold_of: np.ndarray  # int8 [n_pool]
    data_digest: str
    labels_digest: str
    include_validation: bool

    @property
    def digest(self) -> str:
        """12 hex characters identifying the assignment (the same folds give the same digest)."""
        h = hashlib.sha256(self.fold_of.astype(np.int8).tobytes())
        h.update(f"{self.k}|{self.seed}|{self.data_digest}|{self.include_validation}".encode())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        """The artifact form (``folds.json``): readable metadata and the fold id list."""
        return json.dumps({"k": self.k, "seed": self.seed, "data_digest": self.data_digest,
                           "labels_digest": self.labels_digest, "include_validation": self.include_validation,
                           "digest": self.digest, "fold_of": self.fold_of.tolist()})


@dataclass
class Pool:
    """The images folds are made from, and the held-out set every fold model is tested on."""

    x: np.ndarray
    y: np.ndarray
    test: tuple[np.ndarray, np.ndarray] | None
    test_split: str | None  # which dataset split is the held-out set


def training_pool(dataset: Dataset, include_validation: bool) -> Pool:
    """Train (plus validation when ``include_validation``) as the pool; test (else validation) held out."""
    parts = [dataset.splits["train"]]
    if include_validation and "validation" in dataset.splits:
        parts.append(dataset.splits["validation"])
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    for split in ("test",) if include_validation else ("test", "validation"):
        if split in dataset.splits:
            return Pool(x, y, dataset.splits[split], split)
    return Pool(x, y, None, None)


def labels_digest(y: np.ndarray) -> str:
    """Digest of the pool's labels in order: what a fold file must match."""
    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()[:16]


def make_folds(y: np.ndarray, k: int, seed: int, data_digest: str = "", include_validation: bool = False
               ) -> FoldAssignment:
    """Stratified k-fold assignment; every class present lands in every fold.

    Raises FoldError for k < 2 or a k larger than the rarest class allows (a fold without that class
    would have no validation example of it, and per-class recall would be undefined).
    """
    if k < 2:
        raise FoldError(f"k-fold needs at least 2 folds, got {k}")
    classes, counts = np.unique(y, return_counts=True)
    rarest = int(np.argmin(counts))
    if counts[rarest] < k:
        name = CLASS_NAMES[int(classes[rarest])]
        raise FoldError(f"{k} folds need at least {k} images of every class, but '{name}' has only "
                        f"{counts[rarest]} in the training pool of {len(y)} images; use --folds "
                        f"{max(int(counts[rarest]), 2)} or fewer, or more data")
    fold_of = np.empty(len(y), dtype=np.int8)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold_of[held] = fold
    return FoldAssignment(k, seed, fold_of, data_digest, labels_digest(y), include_validation)


def load_folds(path: str | Path) -> FoldAssignment:
    """A fold file written by ``to_json`` (e.g. downloaded from a k-fold parent run's ``folds.json``)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        fold_of = np.asarray(raw["fold_of"], dtype=np.int8)
        assignment = FoldAssignment(int(raw["k"]), int(raw["seed"]), fold_of, str(raw["data_digest"]),
                                    str(raw["labels_digest"]), bool(raw["include_validation"]))
    except OSError as exc:
        raise FoldError(f"{path}: cannot read fold file: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise FoldError(f"{path}: not a fold file ({type(exc).__name__}: {exc})") from exc
    if fold_of.size and (fold_of.min() < 0 or fold_of.max() >= assignment.k):
        raise FoldError(f"{path}: fold ids must lie in 0..{assignment.k - 1}")
    return assignment


def check_matches(assignment: FoldAssignment, pool: Pool, data_digest: str, source: str = "fold file") -> None:
    """Refuse an assignment made for other data: size, labels and data digest must agree."""
    if len(assignment.fold_of) != len(pool.y):
        raise FoldError(f"{source} has {len(assignment.fold_of)} fold ids but the training pool has {len(pool.y)} "
                        "images: it was made for other data, limits or --include-validation setting")
    if assignment.data_digest and data_digest and assignment.data_digest != data_digest:
        raise FoldError(f"{source} was made for data {assignment.data_digest}, but this data is {data_digest}: "
                        "the data changed since the folds were made")
    if assignment.labels_digest != labels_digest(pool.y):
        raise FoldError(f"{source} does not match the data: the pool's labels differ (made for data "
                        f"{assignment.data_digest}, this is {data_digest})")


def fold_dataset(dataset: Dataset, pool: Pool, assignment: FoldAssignment, fold: int) -> Dataset:
    """The dataset one fold trains on: the other folds as train, this fold as validation, the held-out test.

    Its digest names data, k, fold and assignment within MLflow's 36-character dataset digest limit.
    """
    held = assignment.fold_of == fold
    splits: dict[str, Any] = {"train": (pool.x[~held], pool.y[~held]), "validation": (pool.x[held], pool.y[held])}
    if pool.test is not None:
        splits["test"] = pool.test
    if not held.any():
        raise DataError(f"fold {fold} of {assignment.k} is empty")
    return Dataset(splits=splits, source=dataset.source, location=dataset.location,
                   digest=f"{dataset.digest[:8]}k{assignment.k}f{fold}{assignment.digest[:8]}", skipped=dataset.skipped)
