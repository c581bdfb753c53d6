"""FER2013 CSV parser (``emotion,pixels,Usage``; plain, gzip or in a tar/zip; also ``icml_face_data.csv``).

Most FER code parses each row with ``np.fromstring``: about 2.3-4.5 s for the 35,887 rows. Here the file
is split into chunks of whole lines, parsed in one thread per core by the small C extension
``_fastcsv`` (built at install; it releases the GIL) or, where it could not be compiled, by vectorised
numpy. Whatever the fast path does not accept is re-parsed line by line, which names the bad row and
its problem or, with ``skip_bad_rows``, skips and counts it.

Dialects (RFC 4180 plus what spreadsheets write): a byte-order mark (UTF-8, or UTF-16 text), quoted
fields and headers, ``;``, tab or ``|`` delimiters, and CRLF or bare CR line endings. The plain Kaggle
dialect goes straight to the fast path; a file with quotes or another delimiter is first read by Python's
``csv`` module into the plain dialect (error messages keep the original line numbers), so every parser
path sees the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
import mmap
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fer_ablate.data.archives import read_data_bytes
from fer_ablate.data.dataset import IMAGE_SIZE, NUM_CLASSES, DataError
from fer_ablate.data.dataset import show_data as show

try:  # the optional C fast path (see _fastcsv.c)
    from fer_ablate.data import _fastcsv
except ImportError:  # no compiler at install time: the numpy fast path is used
    _fastcsv = None

PIXELS = IMAGE_SIZE * IMAGE_SIZE
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_USAGE_CODE = {name.encode(): SPLIT_CODES[split] for name, split in USAGE_TO_SPLIT.items()}
_LABELS = {str(i).encode(): i for i in range(NUM_CLASSES)} | {f"{i}.0".encode(): i for i in range(NUM_CLASSES)}
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")
DELIMITERS = (",", ";", "\t", "|")
CANONICAL_COLS = {"emotion": 0, "pixels": 1, "Usage": 2, "_count": 3, "_delim": ","}
CHUNK_BYTES = 2 << 20  # ~2 MiB of lines: the temporaries stay in L2/L3 cache
_ZERO, _NINE, _SPACE, _COMMA, _NEWLINE, _CR = 48, 57, 32, 44, 10, 13
_BOMS = {b"\xef\xbb\xbf": "utf-8-sig", b"\xff\xfe\x00\x00": "utf-32", b"\x00\x00\xfe\xff": "utf-32",
         b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}


def read_bytes(path: Path) -> bytes | mmap.mmap:
    """The CSV's bytes (see data/archives.py: gzip, tar, zip...); empty or missing files raise DataError."""
    raw = read_data_bytes(path)
    if len(raw) <= 1 << 16 and not raw[:].strip():
        raise DataError(f"{path}: file is empty")
    return raw


def _column_order(header: bytes, path: Path) -> dict[str, int | str]:
    """Map required column names to positions, and find the delimiter (``,`` else ``;``, tab or ``|``).

    Names are matched without case, quotes, spaces (icml_face_data.csv pads them) or a byte-order mark.
    """
    text = header.decode(errors="replace").lstrip("\ufeff").rstrip("\r")
    for delim in DELIMITERS:
        names = [n.strip().strip('"').strip().lower() for n in next(csv.reader([text], delimiter=delim), [])]
        if all(c.lower() in names for c in REQUIRED_COLUMNS):
            return {c: names.index(c.lower()) for c in REQUIRED_COLUMNS} | {"_count": len(names), "_delim": delim}
    names = text.split(",")
    found = ", ".join(show(n.strip(), 30) for n in names[:6]) + (f", ... {len(names) - 6} more" * (len(names) > 6))
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in [n.strip().strip('"').lower() for n in names]]
    # Kaggle's challenge train.csv (emotion,pixels) and test.csv (pixels) have no Usage column.
    hint = "; Kaggle's train.csv and test.csv have no Usage: use fer2013.csv or icml_face_data.csv" * (
        missing == ["Usage"])
    raise DataError(
        f"{path}: line 1: missing column(s) {', '.join(missing)}; found [{found}], "
        f"expected {', '.join(REQUIRED_COLUMNS)}{hint}"
    )


def label_value(text: bytes) -> int:
    """An emotion label 0-6, also spelled as a whole float (``3.0``, as pandas writes a column that held NaN).

    Raises ValueError naming the value otherwise (``3.5``, ``9``, ``happy``).
    """
    value = _LABELS.get(text)
    if value is not None:
        return value
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and not number.is_integer():
        raise ValueError(f"emotion label {show(text)} is not a whole number (expected 0-6)")
    if not math.isfinite(number) or not 0 <= number < NUM_CLASSES:
        raise ValueError(f"unknown emotion label {show(text)} (expected 0-6)")
    return int(number)


def parse_fields(fields: list[bytes], cols: dict) -> tuple[int, int, np.ndarray]:
    """Parse one row's fields into (label, split code, pixels); raises ValueError naming the problem."""
    label = label_value(fields[cols["emotion"]].strip())
    usage = fields[cols["Usage"]].strip()
    if usage not in _USAGE_CODE:
        raise ValueError(f"unknown Usage value {show(usage)} (expected {', '.join(USAGE_TO_SPLIT)})")
    tokens = fields[cols["pixels"]].split()
    if len(tokens) != PIXELS:
        raise ValueError(f"expected {PIXELS} pixel values, found {len(tokens)}")
    bad = next((t for t in tokens if not t.isdigit() or int(t) > 255), None)
    if bad is not None:
        raise ValueError(f"pixel value {show(bad)} is not an integer in 0-255")
    return label, _USAGE_CODE[usage], np.array(tokens, dtype=np.int64).astype(np.uint8)


def parse_line(line: bytes, cols: dict) -> tuple[int, int, np.ndarray]:
    """Parse one comma-separated data line into (label, split code, pixels); ValueError names the problem."""
    fields = line.rstrip(b"\r").split(b",")
    if len(fields) != cols["_count"]:
        raise ValueError(f"expected {cols['_count']} comma-separated fields, found {len(fields)}")
    return parse_fields(fields, cols)


def _fast_chunk(buf: np.ndarray, cols: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised parse of whole lines in ``buf`` (ending with a newline); None if anything is off."""
    newlines = np.flatnonzero(buf == _NEWLINE)
    n_lines = len(newlines)
    if n_lines == 0 or buf[-1] != _NEWLINE:
        return None
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
    label_runs = np.ones(n_lines, np.int64)  # digit runs in the label field: 1, or 2 for "3.0"
    e_col, u_col = cols["emotion"], cols["Usage"]
    for i, row in enumerate(bounds.tolist()):
        code = _USAGE_CODE.get(raw[row[u_col] + 1:row[u_col + 1]].strip())
        emotion = raw[row[e_col] + 1:row[e_col + 1]].strip()
        label = _LABELS.get(emotion)
        if code is None or label is None:
            return None
        labels[i], usage[i] = label, code
        if len(emotion) > 1:
            label_runs[i] = 2
    # Only the pixel fields may hold bytes other than digits, spaces and the field structure.
    p_col = cols["pixels"]
    px_lo, px_hi = bounds[:, p_col] + 1, bounds[:, p_col + 1]
    px_hi = px_hi - (buf[px_hi - 1] == _CR)  # CRLF, when pixels is the last column
    is_digit = (buf >= _ZERO) & (buf <= _NINE)
    odd = np.flatnonzero(~is_digit & (buf != _SPACE))
    pixel_spans = np.column_stack([px_lo, px_hi]).ravel()
    if np.any(np.searchsorted(pixel_spans, odd, side="right") % 2 == 1):
        return None
    ends = np.flatnonzero(is_digit[:-1] & ~is_digit[1:])
    per_line = np.diff(np.searchsorted(ends, np.concatenate(([0], newlines))))
    if np.any(per_line != PIXELS + label_runs):
        return None
    # Keep the digit runs inside pixel fields: the label's are the only others.
    ends = ends[(ends >= np.repeat(px_lo, per_line)) & (ends < np.repeat(px_hi, per_line))]
    if ends.size != n_lines * PIXELS:
        return None
    # Digits of each token, right to left; a token longer than 3 digits cannot be a pixel.
    one = is_digit[ends - 1]
    two = one & is_digit[ends - 2]
    if np.any(two & is_digit[ends - 3]):
        return None

    def digit(offset: int) -> np.ndarray:
        return buf[ends - offset].astype(np.uint16) - _ZERO

    values = digit(0) + 10 * digit(1) * one + 100 * digit(2) * two
    if values.max(initial=0) > 255:
        return None
    return values.astype(np.uint8).reshape(n_lines, IMAGE_SIZE, IMAGE_SIZE), labels, usage


def _slow_chunk(raw: bytes, first_line: int, cols: dict, path: Path, skip_bad_rows: bool, skipped: Counter,
                line_of: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line parse of a chunk: names the first bad line, or skips and counts bad lines."""
    images, labels, usage = [], [], []
    for offset, line in enumerate(raw.split(b"\n")):
        if not line.strip():  # blank or whitespace-only lines carry no row
            continue
        try:
            label, code, px = parse_line(line, cols)
        except ValueError as exc:
            _bad_row(path, line_of(first_line + offset), str(exc), skip_bad_rows, skipped)
            continue
        images.append(px.reshape(IMAGE_SIZE, IMAGE_SIZE))
        labels.append(label)
        usage.append(code)
    if not images:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(0, np.int64), np.empty(0, np.int8)
    return np.stack(images), np.array(labels, np.int64), np.array(usage, np.int8)


def _bad_row(path: Path, line: int, problem: str, skip_bad_rows: bool, skipped: Counter) -> None:
    """Raise DataError naming the file, line and problem; or, with skip_bad_rows, count it by problem."""
    if not skip_bad_rows:
        raise DataError(f"{path}: line {line}: {problem}")
    skipped[problem.split(" (")[0].split(",")[0]] += 1


def _c_chunk(raw: bytes, lo: int, hi: int, first_line: Callable[[], int], cols: dict, path: Path,
             skip_bad_rows: bool, skipped: Counter, line_of: Callable[[int], int]):
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
        parts.append(_slow_chunk(raw[stop:hi], rest_line, cols, path, skip_bad_rows, skipped, line_of))
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


def _decode_text(raw: bytes | mmap.mmap, path: Path) -> tuple[bytes | mmap.mmap, int]:
    """UTF-16/32 text re-encoded as UTF-8; returns (bytes, offset past a UTF-8 byte-order mark)."""
    for bom, encoding in _BOMS.items():
        if raw[:len(bom)] == bom:
            if encoding == "utf-8-sig":
                return raw, len(bom)
            try:
                return raw[:].decode(encoding).encode(), 0
            except UnicodeDecodeError as exc:
                problem = f"{exc.reason} at byte {exc.start}"
                raise DataError(f"{path}: not valid {encoding.upper()} text ({problem})") from None
    if b"\x00" in raw[:4096]:
        raise DataError(f"{path}: a binary file, not a CSV (starts with {show(raw[:16])}; UTF-16 text "
                        f"needs its byte-order mark)")
    return raw, 0


def _line_endings(raw: bytes | mmap.mmap, start: int) -> bytes | mmap.mmap:
    """Bare CR line endings (old Mac, some Excel exports) become LF; LF and CRLF are read as they are."""
    head = raw[start:start + (1 << 16)]
    cr, lf = head.find(b"\r"), head.find(b"\n")
    if cr >= 0 and (lf < 0 or cr < lf) and head[cr + 1:cr + 2] != b"\n":
        return raw[:].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return raw


def _unquote_simple(raw: bytes | mmap.mmap, data_start: int, delim: str) -> bytes | None:
    """The file in the plain dialect by deleting quote bytes (and turning ``delim`` into commas), when exact.

    Exact when every quoted field is whole (opens after a delimiter or line start, closes before one or a
    line end) and holds no quote, delimiter or line break, and a non-comma delimiter file holds no comma:
    then the csv module would read the same fields, and every line keeps its number. None otherwise
    (the caller uses the csv module). A 265 MB QUOTE_ALL file takes ~1 s here against 6 s through csv.
    """
    if delim != "," and raw.find(b",", data_start) >= 0:
        return None
    quotes = (np.flatnonzero(np.frombuffer(raw, np.uint8)[data_start:] == ord('"')) + data_start).tolist()
    if len(quotes) % 2:
        return None
    bounds, separators, size = {ord(delim), _NEWLINE, _CR}, (delim.encode(), b"\n", b"\r"), len(raw)
    for start, end in zip(quotes[0::2], quotes[1::2], strict=True):  # ~3 fields a row: a 0.4 s loop for 265 MB
        if (start > data_start and raw[start - 1] not in bounds) or (end + 1 < size and raw[end + 1] not in bounds):
            return None
        if any(raw.find(sep, start + 1, end) >= 0 for sep in separators):
            return None
    table = bytes.maketrans(delim.encode(), b",")
    return bytes(raw[:]).translate(table, b'"')


def _to_plain_dialect(raw: bytes | mmap.mmap, data_start: int, cols: dict, path: Path, skip_bad_rows: bool,
                      skipped: Counter) -> tuple[bytes, list[int]]:
    """Rows read by the ``csv`` module (quotes, other delimiters) rewritten as plain ``emotion,pixels,Usage``.

    Returns the plain bytes (header included) and, per plain data row, its first line in the original.
    """
    first = raw[:data_start].count(b"\n") + 1  # line number of the first data line
    reader = csv.reader(io.StringIO(raw[data_start:].decode(errors="replace"), newline=""), delimiter=cols["_delim"])
    out, line_map, done = ["emotion,pixels,Usage"], [], 0
    e_col, p_col, u_col = cols["emotion"], cols["pixels"], cols["Usage"]
    while True:
        line = first + done
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}: line {line}: {exc} (an unclosed quote?)") from None
        done = reader.line_num
        if row is None:
            break
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != cols["_count"]:
            _bad_row(path, line, f"expected {cols['_count']} fields, found {len(row)}", skip_bad_rows, skipped)
            continue
        fields = [row[e_col], row[p_col], row[u_col]]
        if any(c in f for f in fields for c in ",\r\n"):  # cannot go into the plain dialect: name the problem
            try:
                parse_fields([f.encode() for f in fields], CANONICAL_COLS)
            except ValueError as exc:
                _bad_row(path, line, str(exc), skip_bad_rows, skipped)
                continue
            fields = [" ".join(f.split()) for f in fields]
        out.append(",".join(fields))
        line_map.append(line)
    return ("\n".join(out) + "\n").encode(), line_map


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
    raw, start = _decode_text(read_bytes(path), path)
    raw = _line_endings(raw, start)
    header_end = raw.find(b"\n", start)
    if header_end < 0:
        _column_order(raw[start:start + (1 << 16)], path)  # a binary or foreign file fails here, in one line
        raise DataError(f"{path}: no valid data rows (only a header line)")
    cols = _column_order(raw[start:header_end], path)
    skipped: Counter = Counter()
    data_start, line_map = header_end + 1, None
    if cols["_delim"] != "," or raw.find(b'"', data_start) >= 0:
        simple = _unquote_simple(raw, data_start, cols["_delim"])
        if simple is not None:  # same lines, same fields: only the quote bytes (and delimiter) differ
            raw, cols, data_start = simple, {**cols, "_delim": ","}, simple.find(b"\n") + 1
        else:
            raw, line_map = _to_plain_dialect(raw, data_start, cols, path, skip_bad_rows, skipped)
            cols, data_start = CANONICAL_COLS, raw.find(b"\n") + 1

    def line_of(n: int) -> int:  # line n of what is parsed -> line of the file as given
        return n if line_map is None else line_map[n - 2]

    ranges = _chunk_ranges(raw, data_start)
    view = np.frombuffer(raw, np.uint8)

    def work(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = ranges[index]

        def first_line() -> int:  # counted only when a bad line needs naming (0.2 s for the whole file)
            return raw[:lo].count(b"\n") + 1

        if _fastcsv is not None:
            return _c_chunk(raw, lo, hi, first_line, cols, path, skip_bad_rows, skipped, line_of)
        fast = _fast_chunk(view[lo:hi], cols)
        if fast is not None:
            return fast
        return _slow_chunk(raw[lo:hi], first_line(), cols, path, skip_bad_rows, skipped, line_of)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = list(pool.map(work, range(len(ranges))))
    images = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    usage = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int8)
    if len(labels) == 0:
        raise DataError(f"{path}: no valid data rows" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    if progress:
        progress(f"parsed {path.name}: {len(labels):,} rows" + (f", skipped {dict(skipped)}" if skipped else ""))
    return images, labels, usage, skipped
