"""Parsed-array cache keyed by the source file's content hash (git-ignored folder).

Hashing a 265 MB CSV costs about 0.3 s, so a small stat index (path, size, mtime) remembers each file's
hash; the file is hashed again only when its size or mtime changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fer_ablate.paths import cache_dir

CACHE_VERSION = "v2"  # bump when the parser's output changes (v2: labels such as 3.0 are accepted)


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes (first 16 hex digits), via the stat index when unchanged."""
    stat = path.stat()
    index_file = cache_dir() / "hash-index.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index = _read_index(index_file)
    if key in index:
        return index[key]
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    index[key] = digest
    _write_atomic(index_file, json.dumps(index).encode())
    return digest


def load(key: str) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``key``, or None when absent or unreadable (a broken cache is rebuilt)."""
    folder = cache_dir() / f"{key}-{CACHE_VERSION}"
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy") for name in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    arrays["_meta"] = meta
    return arrays


def store(key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays under ``key`` atomically: a crash leaves either the old entry or none."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{key}-{CACHE_VERSION}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps({**meta, "arrays": list(arrays)}))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_index(index_file: Path) -> dict[str, str]:
    try:
        return json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, path)
