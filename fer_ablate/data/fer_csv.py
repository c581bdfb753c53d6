"""FER2013 CSV parser (``emotion,pixels,Usage``; ``.csv`` or ``.csv.gz``; also ``icml_face_data.csv``).

Most FER code parses each row with ``np.fromstring``: about 2.3-4.5 s for the 35,887 rows. Here the file
is split into chunks of whole lines, parsed in one thread per core by the small C extension
``_fastcsv`` (built at install; it releases the GIL) or, where it could not be compiled, by vectorised
numpy. Whatever the fast path does not accept is re-parsed line by line, which names the bad row and
its problem or, with ``skip_bad_rows``, skips and counts it.
"""

from __future__ import annotations

import gzip
import mmap
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fer_ablate.data.dataset import IMAGE_SIZE, NUM_CLASSES, DataError

try:  # the optional C fast path (see _fastcsv.c)
    from fer_ablate.data import _fastcsv
except ImportError:  # no compiler at install time: the numpy fast path is used
    _fastcsv = None

PIXELS = IMAGE_SIZE * IMAGE_SIZE
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_USAGE_CODE = {name.encode(): SPLIT_CODES[split] for name, split in USAGE_TO_SPLIT.items()}
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")
CHUNK_BYTES = 2 << 20  # ~2 MiB of lines: the temporaries stay in L2/L3 cache
_ZERO, _NINE, _SPACE, _COMMA, _NEWLINE = 48, 57, 32, 44, 10


def read_bytes(path: Path) -> bytes | mmap.mmap:
    """The file's bytes: gunzipped when gzip, else memory-mapped (reading 265 MB into a copy costs 0.2 s).

    Empty or missing files raise DataError.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            try:
                raw = gzip.decompress(path.read_bytes())
            except (OSError, EOFError) as exc:
                raise DataError(f"{path}: corrupt gzip file ({exc})") from exc
        elif path.stat().st_size == 0:
            raw = b""
        else:
            raw = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if len(raw) <= 1 << 16 and not raw[:].strip():
        raise DataError(f"{path}: file is empty")
    return raw


def _column_order(header: bytes, path: Path) -> dict[str, int]:
    """Map required column names to their positions; icml_face_data.csv pads names with spaces."""
    names = [c.strip().decode(errors="replace") for c in header.rstrip(b"\r").split(b",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: line 1: missing column(s) {', '.join(missing)}; found {names}, "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    return {c: names.index(c) for c in REQUIRED_COLUMNS} | {"_count": len(names)}


def parse_line(line: bytes, cols: dict[str, int]) -> tuple[int, int, np.ndarray]:
    """Parse one data line into (label, split code, pixels); raises ValueError naming the problem."""
    fields = line.rstrip(b"\r").split(b",")
    if len(fields) != cols["_count"]:
        raise ValueError(f"expected {cols['_count']} comma-separated fields, found {len(fields)}")
    emotion = fields[cols["emotion"]].strip()
    if not emotion.isdigit() or int(emotion) >= NUM_CLASSES:
        raise ValueError(f"unknown emotion label {emotion.decode(errors='replace')!r} (expected 0-6)")
    usage = fields[cols["Usage"]].strip()
    if usage not in _USAGE_CODE:
        raise ValueError(
            f"unknown Usage value {usage.decode(errors='replace')!r} (expected {', '.join(USAGE_TO_SPLIT)})"
        )
    tokens = fields[cols["pixels"]].split()
    if len(tokens) != PIXELS:
        raise ValueError(f"expected {PIXELS} pixel values, found {len(tokens)}")
    bad = next((t for t in tokens if not t.isdigit() or int(t) > 255), None)
    if bad is not None:
        raise ValueError(f"pixel value {bad.decode(errors='replace')!r} is not an integer in 0-255")
    return int(emotion), _USAGE_CODE[usage], np.array(tokens, dtype=np.int64).astype(np.uint8)


def _fast_chunk(buf: np.ndarray, cols: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised parse of whole lines in ``buf`` (ending with a newline); None if anything is off."""
    newlines = np.flatnonzero(buf == _NEWLINE)
    n_lines = len(newlines)
    starts = np.concatenate(([0], newlines[:-1] + 1))
    commas = np.flatnonzero(buf == _COMMA)
    n_commas = cols["_count"] - 1
    if len(commas) != n_lines * n_commas:
        return None
    commas = commas.reshape(n_lines, n_commas)
    if np.any(commas[:, 0] < starts) or np.any(commas[:, -1] > newlines):
        return None
    bounds = np.column_stack([starts - 1, commas, newlines])  # field k spans (bounds[k], bounds[k+1])
    raw = buf.tobytes()
    labels = np.empty(n_lines, np.int64)
    usage = np.empty(n_lines, np.int8)
    e_col, u_col = cols["emotion"], cols["Usage"]
    for i, row in enumerate(bounds.tolist()):
        emotion = raw[row[e_col] + 1:row[e_col + 1]].strip()
        code = _USAGE_CODE.get(raw[row[u_col] + 1:row[u_col + 1]].strip())
        if code is None or not emotion.isdigit() or int(emotion) >= NUM_CLASSES:
            return None
        labels[i], usage[i] = int(emotion), code
    # Only the pixel fields may hold bytes other than digits, spaces and the field structure.
    p_col = cols["pixels"]
    px_lo, px_hi = bounds[:, p_col] + 1, bounds[:, p_col + 1]
    is_digit = (buf >= _ZERO) & (buf <= _NINE)
    odd = np.flatnonzero(~is_digit & (buf != _SPACE))
    inside = np.searchsorted(np.column_stack([px_lo, px_hi]).ravel(), odd, side="right") % 2 == 1
    if inside.any():
        return None
    ends = np.flatnonzero(is_digit[:-1] & ~is_digit[1:])
    # Digits of each token, right to left; a token longer than 3 digits cannot be a pixel.
    one = is_digit[ends - 1]
    two = one & is_digit[ends - 2]
    if np.any(two & is_digit[ends - 3]):
        return None

    def digit(offset: int) -> np.ndarray:
        return buf[ends - offset].astype(np.uint16) - _ZERO

    values = digit(0) + 10 * digit(1) * one + 100 * digit(2) * two
    per_line = np.diff(np.searchsorted(ends, np.concatenate(([0], newlines))))
    if np.any(per_line != PIXELS + 1) or values.max(initial=0) > 255:
        return None
    # Drop each line's emotion token: the only digits outside the pixel field.
    in_pixels = (ends >= np.repeat(px_lo, PIXELS + 1)) & (ends < np.repeat(px_hi, PIXELS + 1))
    pixels = values[in_pixels].astype(np.uint8)
    if pixels.size != n_lines * PIXELS:
        return None
    return pixels.reshape(n_lines, IMAGE_SIZE, IMAGE_SIZE), labels, usage


def _slow_chunk(
    raw: bytes, first_line: int, cols: dict[str, int], path: Path, skip_bad_rows: bool, skipped: Counter
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line parse of a chunk: names the first bad line, or skips and counts bad lines."""
    images, labels, usage = [], [], []
    for offset, line in enumerate(raw.split(b"\n")):
        if not line.strip(b"\r"):
            continue
        try:
            label, code, px = parse_line(line, cols)
        except ValueError as exc:
            if not skip_bad_rows:
                raise DataError(f"{path}: line {first_line + offset}: {exc}") from None
            skipped[str(exc).split(" (")[0].split(",")[0]] += 1
            continue
        images.append(px.reshape(IMAGE_SIZE, IMAGE_SIZE))
        labels.append(label)
        usage.append(code)
    if not images:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(0, np.int64), np.empty(0, np.int8)
    return np.stack(images), np.array(labels, np.int64), np.array(usage, np.int8)


def _c_chunk(raw: bytes, lo: int, hi: int, first_line: Callable[[], int], cols: dict[str, int], path: Path,
             skip_bad_rows: bool, skipped: Counter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C fast path for one chunk; from the first line it rejects, the line-by-line parser takes over."""
    # A valid line holds at least 2304 digits and 2303 spaces; shorter (bad) lines stop the C loop early.
    capacity = (hi - lo) // (2 * PIXELS - 1) + 2
    images = np.empty((capacity, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels, usage = np.empty(capacity, np.uint8), np.empty(capacity, np.int8)
    order = (cols["emotion"], cols["Usage"], cols["pixels"])
    rows, stop = _fastcsv.parse_rows(raw, lo, hi, order, cols["_count"], images, labels, usage, 0)
    parts = [(images[:rows], labels[:rows].astype(np.int64), usage[:rows])]
    if stop < hi:
        rest_line = first_line() + raw[lo:stop].count(b"\n")
        parts.append(_slow_chunk(raw[stop:hi], rest_line, cols, path, skip_bad_rows, skipped))
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


def _chunk_ranges(raw: bytes, start: int) -> list[tuple[int, int]]:
    """Byte ranges of about CHUNK_BYTES that start and end on line boundaries."""
    ranges, pos = [], start
    while pos < len(raw):
        cut = raw.find(b"\n", min(pos + CHUNK_BYTES, len(raw) - 1))
        end = len(raw) if cut < 0 else cut + 1
        ranges.append((pos, end))
        pos = end
    return ranges


def parse_fer_csv(
    path: str | Path,
    skip_bad_rows: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Counter]:
    """Parse a FER2013 CSV into ``(images uint8 [n,48,48], labels, split codes, skipped reasons)``.

    Split codes follow SPLIT_CODES (Training 0, PublicTest 1, PrivateTest 2). A malformed row raises
    DataError naming the file, the line and the problem, unless ``skip_bad_rows`` is set.
    """
    path = Path(path)
    raw = read_bytes(path)
    header_end = raw.find(b"\n")
    if header_end < 0:
        raise DataError(f"{path}: no valid data rows (only a header line)")
    cols = _column_order(raw[:header_end], path)
    ranges = _chunk_ranges(raw, header_end + 1)
    skipped: Counter = Counter()
    view = np.frombuffer(raw, np.uint8)

    def work(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = ranges[index]

        def first_line() -> int:  # counted only when a bad line needs naming (0.2 s for the whole file)
            return raw[:lo].count(b"\n") + 1

        if _fastcsv is not None:
            return _c_chunk(raw, lo, hi, first_line, cols, path, skip_bad_rows, skipped)
        fast = _fast_chunk(view[lo:hi], cols)
        if fast is not None:
            return fast
        return _slow_chunk(raw[lo:hi], first_line(), cols, path, skip_bad_rows, skipped)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = list(pool.map(work, range(len(ranges))))
    images = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, IMAGE_SIZE, IMAGE_SIZE))
    labels = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    usage = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int8)
    if len(labels) == 0:
        raise DataError(f"{path}: no valid data rows" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    if progress:
        progress(f"parsed {path.name}: {len(labels):,} rows" + (f", skipped {dict(skipped)}" if skipped else ""))
    return images, labels, usage, skipped
