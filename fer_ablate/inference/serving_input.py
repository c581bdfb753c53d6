"""Base64 images as clients send them, the size limits of a request to the served photo model, and the
request body built from photo files (``fer-ablate serving-request``).

Accepted: plain base64, base64 wrapped at 76 columns (MIME, ``base64`` on Linux), with a
``data:image/...;base64,`` prefix (browsers' ``FileReader.readAsDataURL``), and the URL-safe alphabet
with or without ``=`` padding (JWT-style encoders, Python's ``urlsafe_b64encode``).

Limits: an image whose base64 holds more than ``FER_ABLATE_MAX_IMAGE_BYTES`` bytes (default 20 MB) is
refused from the text's length, before decoding; the other limits of a request are in ``serving_limits``.
To stop a large body before it is even read, put a proxy in front of the server (nginx
``client_max_body_size``): MLflow's server reads and parses any body it is sent.

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
from fer_ablate.inference.serving_limits import ServingLimits

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = ServingLimits.max_image_bytes  # the defaults (request_body warns against them)
MAX_REQUEST_BYTES = ServingLimits.max_request_bytes
_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def mb(n: int) -> str:
    """``n`` bytes for a message: "1.5 MB", "2.0 kB", "12 bytes"."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


def decode_base64_image(text: str, name: str, limit: int | None = None) -> bytes:
    """The bytes of a base64 image in any of the accepted spellings (module docstring).

    Raises ImageError naming ``name`` for a data URL that is not base64, text that is not base64, or an
    image over ``limit`` bytes (default: ``FER_ABLATE_MAX_IMAGE_BYTES``; checked on the text's length,
    before decoding).
    """
    found = _DATA_URL.match(text[:200])
    if found:
        if ";base64" not in found.group(2).lower():
            raise ImageError(f"{name}: a data URL without ';base64' ({text[:found.end()][:60]}); send base64")
        text = text[found.end():]
    limit = ServingLimits.from_env().max_image_bytes if limit is None else limit
    if len(text) * 3 // 4 > 2 * limit:  # far over even with whitespace: refused before copying the text
        raise ImageError(f"{name}: image of about {mb(len(text) * 3 // 4)} is over the {mb(limit)} limit "
                         "(FER_ABLATE_MAX_IMAGE_BYTES)")
    compact = _SPACE.sub("", text)
    if len(compact) * 3 // 4 > limit:
        raise ImageError(f"{name}: image of about {mb(len(compact) * 3 // 4)} is over the {mb(limit)} limit "
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
                        mb(len(data)), mb(MAX_IMAGE_BYTES))
        rows.append({"image": base64.b64encode(data).decode("ascii")})
    total = sum(len(row["image"]) * 3 // 4 for row in rows)
    if total > MAX_REQUEST_BYTES:
        log.warning("%d photos hold %s, over the server's default %s per request (FER_ABLATE_MAX_REQUEST_BYTES)",
                    len(rows), mb(total), mb(MAX_REQUEST_BYTES))
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
