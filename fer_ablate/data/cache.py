"""Parsed-array cache and content digests of data files and folders (git-ignored folder).

Hashing a 265 MB CSV costs about 0.3 s, so a small stat index (path, size, mtime) remembers each file's
hash; the file is hashed again only when its size or mtime changes. A folder's digest is remembered the
same way, keyed by its listing (names, sizes, mtimes): reading the 35,887 images of FER2013's image-folder
release again costs about 0.4 s, listing them 0.15 s.

Every entry is one file written to a temporary name and renamed over the final one (``os.replace``, atomic
on POSIX): two processes parsing one new CSV at once both succeed and leave one valid entry (the last
rename wins; both wrote the same arrays), and a reader never sees half an entry. A failed write removes
its temporary file; one left by a killed writer (its pid dead, or older than ``STALE_AFTER_S``) is removed
by the next write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from fer_ablate.paths import cache_dir

# Bump when the parser's output or the entry format changes (v2: labels such as 3.0 are accepted; v3: one
# .npz file per entry instead of a folder of .npy files, which two writers could not both rename into place).
CACHE_VERSION = "v3"
TMP_PREFIX = ".tmp-"
# A temporary entry is written in under 1 s (82 MB of FER2013 arrays: 0.25 s); one an hour old belongs to a
# dead writer even when its pid cannot be checked (another host sharing the cache folder, or a reused pid).
STALE_AFTER_S = 3600
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32] or "host"
_MEMO: dict[tuple | str, str] = {}  # in-process digests by stat key: no index read for the 2nd..Nth config hash


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes (first 16 hex digits), via the stat index when unchanged.

    A symlink and its target share one entry (the key is the resolved path); a copy is hashed once, then
    remembered under its own path. Raises OSError when the file cannot be read.
    """
    resolved = path.resolve()
    stat = resolved.stat()
    return _remembered(f"{resolved}|", f"{stat.st_size}|{stat.st_mtime_ns}", lambda: _file_digest(resolved))


def folder_hash(root: Path, counts: Callable[[str], bool] = lambda name: True) -> str:
    """Content digest of the files under ``root`` (16 hex digits): each file's relative path and bytes.

    ``counts(name)`` says whether a file or folder name takes part (the loader leaves hidden files out).
    A copy of the folder elsewhere (``cp -r``: new mtimes) has the same digest. The files are read again
    only when their listing (relative paths, sizes, mtimes) changes; within one process, only when a
    folder's mtime changes (a file added, removed or renamed: an in-place rewrite is seen by the next
    process). Raises OSError when a file cannot be read.
    """
    root = root.resolve()
    folders, files = [], []
    for here, subdirs, names in os.walk(root, followlinks=True):  # as the loader
        subdirs[:] = sorted(d for d in subdirs if counts(d))
        folders.append((here, os.stat(here).st_mtime_ns))
        files += [Path(here, n) for n in names if counts(n)]
    memo_key = (str(root), tuple(folders))
    if memo_key not in _MEMO:
        rel = sorted((f.relative_to(root).as_posix(), f) for f in files)
        listing = hashlib.sha256()
        for name, item in rel:
            stat = item.stat()
            listing.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())

        def digest() -> str:
            h = hashlib.sha256()
            for name, item in rel:
                h.update(f"{name}\n".encode())
                h.update(bytes.fromhex(_file_digest(item, length=64)))
            return h.hexdigest()[:16]

        _MEMO[memo_key] = _remembered(f"{root}/|", listing.hexdigest(), digest)
    return _MEMO[memo_key]


def load(key: str) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``key`` (plus ``_meta``, the dict given to ``store``), or None when absent or
    unreadable (a broken entry is parsed again and replaced)."""
    entry = cache_dir() / f"{key}-{CACHE_VERSION}.npz"
    try:
        with np.load(entry, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(arrays.pop("_meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, truncated, not an .npz: a miss
        return None
    arrays["_meta"] = meta
    return arrays


def store(key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays under ``key`` atomically: readers see the old entry, the new one or none, never a part.

    Concurrent writers of one key both succeed (the last rename wins). Temporary files of dead writers are
    removed first. Raises OSError when the cache folder cannot be written (the temporary file is removed).
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    with _atomic_file(root / f"{key}-{CACHE_VERSION}.npz") as handle:
        np.savez(handle, _meta=np.array(json.dumps(meta)), **arrays)  # stored, not compressed: 80 ms to load


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove temporary entries under ``root`` left by dead writers; returns what was removed.

    A temporary name carries its writer's host and pid (``.tmp-HOST-PID-xxxx``): on this host a dead pid
    marks it stale at once; any temporary entry (also one of an older version, without a pid) older than
    ``STALE_AFTER_S`` is stale too. A live writer's entry is never touched.
    """
    removed = []
    for item in root.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone already (another process cleaned up), or not ours to remove
            if _is_stale(item):
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
                removed.append(item)
    return removed


def _is_stale(item: Path) -> bool:
    if time.time() - item.lstat().st_mtime > STALE_AFTER_S:
        return True
    parts = item.name[len(TMP_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False  # another host's (or an unknown) writer: only its age tells
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, run by another user
        return False
    return False


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator:
    """A binary handle on a temporary file next to ``path``, renamed to ``path`` when the block succeeds
    and removed when it raises (KeyboardInterrupt included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{_HOST}-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _remembered(where: str, state: str, compute: Callable[[], str]) -> str:
    """The digest of ``where`` (a file or folder) in ``state`` (its sizes and mtimes): from the in-process memo,
    else the on-disk index, else ``compute()``, then remembered in place of the entries of its older states."""
    key = where + state
    if key in _MEMO:
        return _MEMO[key]
    index_file = cache_dir() / "hash-index.json"
    index = _read_index(index_file)
    if key not in index:
        index = {k: v for k, v in index.items() if not k.startswith(where)}  # that file changed: stale
        index[key] = compute()
        # Two processes adding entries at once may lose one of them (read-modify-write): it is hashed again.
        with contextlib.suppress(OSError), _atomic_file(index_file) as handle:  # a read-only cache still works
            handle.write(json.dumps(index).encode())
    _MEMO[key] = index[key]
    return index[key]


def _file_digest(path: Path, length: int = 16) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:length]


def _read_index(index_file: Path) -> dict[str, str]:
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
