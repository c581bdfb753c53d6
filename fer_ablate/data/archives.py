"""A data file's bytes as downloaded: plain, compressed (gzip, bz2, xz) or an archive (tar, zip).

Kaggle's ``fer2013.tar.gz`` holds ``fer2013/fer2013.csv`` next to a README; desktop extractors may leave
the bare tar (``fer2013``, no extension), and other mirrors ship a ``.zip``. The one CSV in an archive is
read; an archive with no CSV, or several, is refused in one line that says what it holds and what to
pass instead. Other binary files (images, HDF5, Excel...) are named rather than parsed as text.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import mmap
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from fer_ablate.data.dataset import DataError, show_data
from fer_ablate.data.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
_COMPRESSED = {b"\x1f\x8b": ("gzip", gzip.decompress), b"BZh": ("bz2", bz2.decompress),
               b"\xfd7zXZ\x00": ("xz", lzma.decompress)}
# Formats we cannot read, recognised by their first bytes: named in the error instead of shown as text.
_FOREIGN = {b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: extract it (7z x) and pass the CSV inside",
            b"Rar!\x1a\x07": "a RAR archive: extract it and pass the CSV inside",
            b"\x89PNG": "a PNG image, not a CSV", b"\xff\xd8\xff": "a JPEG image, not a CSV",
            b"\x89HDF": "an HDF5 file (a saved model?), not a CSV", b"\x93NUMPY": "a NumPy array file, not a CSV",
            b"PAR1": "a Parquet file, not a CSV", b"\xd0\xcf\x11\xe0": "an old Excel/Office file: save it as CSV"}


def read_data_bytes(path: Path) -> bytes | mmap.mmap:
    """The CSV bytes of ``path``: decompressed, taken from a one-CSV archive, or memory-mapped when plain.

    Raises DataError (one line) when the file is missing, corrupt, an archive without exactly one CSV,
    or a known binary format.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as handle:
        head = handle.read(512)
        if len(head) == 0:
            return b""
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            return _from_zip(path, handle)
        for magic, (kind, decompress) in _COMPRESSED.items():
            if head.startswith(magic):
                try:
                    raw = decompress(path.read_bytes())
                except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                    raise DataError(f"{path}: corrupt {kind} file ({exc})") from None
                if _is_tar(raw[:512]):
                    return _from_tar(path, f"tar.{kind[:2] if kind == 'gzip' else kind}", io.BytesIO(raw))
                if raw.startswith(b"PK\x03\x04"):
                    return _from_zip(path, io.BytesIO(raw))
                return raw
        if _is_tar(head):
            handle.seek(0)
            return _from_tar(path, "tar", handle)
        for magic, what in _FOREIGN.items():
            if head.startswith(magic):
                raise DataError(f"{path}: {what}")
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _visible(name: str) -> bool:
    """False for macOS/Windows litter: dot-names, ``__MACOSX/``, ``Thumbs.db``."""
    parts = PurePosixPath(name).parts
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts) and parts[-1] not in ("Thumbs.db",
                                                                                               "desktop.ini")


def _pick_csv(path: Path, kind: str, names: list[str]) -> str:
    """The one CSV member, or a one-line DataError saying what the archive holds and what to pass."""
    names = [n for n in names if _visible(n)]
    csvs = [n for n in names if n.lower().endswith((".csv", ".csv.gz"))]
    if len(csvs) == 1:
        return csvs[0]
    where = f"{path}: a {kind} archive holding"
    if csvs:
        full = [n for n in csvs if PurePosixPath(n).name in ("fer2013.csv", "icml_face_data.csv")]
        hint = f" ({full[0]} is the whole FER2013)" if len(full) == 1 else ""
        raise DataError(f"{where} {len(csvs)} CSV files ({_listing(csvs)}): extract it and pass the one you "
                        f"mean{hint}")
    images = [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
    if images:
        tops = sorted({PurePosixPath(n).parts[0] for n in images})
        raise DataError(f"{where} {len(images):,} image{'s' * (len(images) > 1)} (in {_listing(tops)}): "
                        f"extract it and pass the folder that holds train/ and test/")
    if not names:
        raise DataError(f"{where} no files: nothing to read")
    raise DataError(f"{where} {len(names)} file{'s' * (len(names) > 1)} ({_listing(names)}), no CSV: "
                    f"pass a FER2013 CSV or an image folder")


def _listing(names: list[str], shown: int = 4) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n)[1:-1][:60] for n in names[:shown]) + more


def _member_bytes(path: Path, name: str, data: bytes) -> bytes:
    log.info("data: reading %s from the archive %s", show_data(name, 200), path)
    if name.lower().endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: {show_data(name)} in the archive is a corrupt gzip file ({exc})") from None
    return data


def _from_tar(path: Path, kind: str, fileobj) -> bytes:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            name = _pick_csv(path, kind, list(members))
            return _member_bytes(path, name, tar.extractfile(members[name]).read())
    except tarfile.TarError as exc:
        raise DataError(f"{path}: corrupt {kind} archive ({exc})") from None


def _from_zip(path: Path, fileobj) -> bytes:
    try:
        with zipfile.ZipFile(fileobj) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            if any(n.startswith("xl/") for n in names) and "[Content_Types].xml" in names:
                raise DataError(f"{path}: an Excel workbook, not a CSV: save it as CSV (UTF-8)")
            name = _pick_csv(path, "zip", names)
            return _member_bytes(path, name, archive.read(name))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: corrupt zip archive ({exc})") from None
