"""Base64 images as clients send them, the size limits of a request to the served photo model, and the
request body built from photo files (``fer-ablate serving-request``).

Accepted: plain base64, base64 wrapped at 76 columns (MIME, ``base64`` on Linux), with a
``data:image/...;base64,`` prefix (browsers' ``FileReader.readAsDataURL``), and the URL-safe alphabet
with or without ``=`` padding (JWT-style encoders, Python's ``urlsafe_b64encode``).

Limits: MLflow's scoring server (uvicorn, MLflow 3.x) has no request-body limit of its own, so the model
refuses, before decoding anything, an image whose base64 holds more than ``FER_ABLATE_MAX_IMAGE_BYTES``
bytes (default 20 MB: a 40 M pixel JPEG from a phone is 10-15 MB) and a request whose images hold more
than ``FER_ABLATE_MAX_REQUEST_BYTES`` in all (default 100 MB). To stop a large body before it is even
read, put a proxy in front of the server (nginx ``client_max_body_size``).

Request files: a photo's base64 does not fit on a command line (``curl -d "...$(base64 photo.jpg)..."``
fails with "Argument list too long" past ~96 kB of photo: Linux caps one argument at 128 kB), so
``write_request`` writes the JSON body to a file that ``curl -d @request.json`` sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fer_ablate.inference.faces import ImageError

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20_000_000  # default per image (decoded bytes); env FER_ABLATE_MAX_IMAGE_BYTES
MAX_REQUEST_BYTES = 100_000_000  # default per request, all images together; env FER_ABLATE_MAX_REQUEST_BYTES
_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ImageError(f"{name}={raw!r} is not a whole number of bytes") from None


def max_image_bytes() -> int:
    """The per-image limit in bytes: ``$FER_ABLATE_MAX_IMAGE_BYTES`` or ``MAX_IMAGE_BYTES``."""
    return _limit("FER_ABLATE_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES)


def max_request_bytes() -> int:
    """The per-request limit in bytes: ``$FER_ABLATE_MAX_REQUEST_BYTES`` or ``MAX_REQUEST_BYTES``."""
    return _limit("FER_ABLATE_MAX_REQUEST_BYTES", MAX_REQUEST_BYTES)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


def decode_base64_image(text: str, name: str) -> bytes:
    """The bytes of a base64 image in any of the accepted spellings (module docstring).

    Raises ImageError naming ``name`` for a data URL that is not base64, text that is not base64, or an
    image over the size limit (checked on the text's length, before decoding).
    """
    found = _DATA_URL.match(text[:200])
    if found:
        if ";base64" not in found.group(2).lower():
            raise ImageError(f"{name}: a data URL without ';base64' ({text[:found.end()][:60]}); send base64")
        text = text[found.end():]
    compact = _SPACE.sub("", text)
    limit = max_image_bytes()
    if len(compact) * 3 // 4 > limit:
        raise ImageError(f"{name}: image of about {_mb(len(compact) * 3 // 4)} is over the {_mb(limit)} limit "
                         "(FER_ABLATE_MAX_IMAGE_BYTES)")
    if "-" in compact or "_" in compact:
        compact = compact.translate(str.maketrans("-_", "+/"))
    if len(compact) % 4 == 1:
        raise ImageError(f"{name}: 'image' is not base64 (its length {len(compact)} cannot be)")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: 'image' is not base64") from None


def check_request_size(images: list[object]) -> None:
    """Refuse a request whose base64 images hold more than the request limit in all (ImageError)."""
    total = sum(len(x) * 3 // 4 for x in images if isinstance(x, str))
    limit = max_request_bytes()
    if total > limit:
        raise ImageError(f"request: {len(images)} rows with about {_mb(total)} of images is over the {_mb(limit)} "
                         "limit (FER_ABLATE_MAX_REQUEST_BYTES): send fewer or smaller images per request")


def request_body(paths: Sequence[str | os.PathLike], tta: bool = False, crops: bool = False) -> dict[str, Any]:
    """The JSON body of a request to the served photo model: one ``image`` row (plain base64) per file, in
    order, and the params ``tta`` and ``crops``.

    Raises ImageError for no paths, or a path that is missing, not a regular file or empty. A photo over
    the server's default limits is only warned about: the server's environment may set others.
    """
    if not paths:
        raise ImageError("no photos given: name one or more image files")
    rows = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ImageError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
        data = path.read_bytes()
        if not data:
            raise ImageError(f"{path}: empty file")
        if len(data) > MAX_IMAGE_BYTES:
            log.warning("%s: %s is over the server's default %s per image (FER_ABLATE_MAX_IMAGE_BYTES)", path,
                        _mb(len(data)), _mb(MAX_IMAGE_BYTES))
        rows.append({"image": base64.b64encode(data).decode("ascii")})
    total = sum(len(row["image"]) * 3 // 4 for row in rows)
    if total > MAX_REQUEST_BYTES:
        log.warning("%d photos hold %s, over the server's default %s per request (FER_ABLATE_MAX_REQUEST_BYTES)",
                    len(rows), _mb(total), _mb(MAX_REQUEST_BYTES))
    return {"dataframe_records": rows, "params": {"tta": tta, "crops": crops}}


def write_request(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, tta: bool = False,
                  crops: bool = False) -> Path | None:
    """Write ``request_body(paths, tta, crops)`` as JSON to the file ``out`` (its folder made), or to stdout
    when ``out`` is None; return the file written (None for stdout). Raises ImageError as request_body."""
    body = request_body(paths, tta=tta, crops=crops)
    if out is None:
        json.dump(body, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return None
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    log.info("request for %d photo(s) written to %s: curl -X POST localhost:5001/invocations "
             "-H 'Content-Type: application/json' -d @%s", len(body["dataframe_records"]), path, path)
    return path
