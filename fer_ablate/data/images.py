"""The one image decoder: training (image folders), evaluation, ``predict`` and serving all use it.

Any encoded image becomes grey ``uint8 [h, w]`` the same way everywhere, so a face scores the same in
``evaluate`` as in ``predict``:
- EXIF orientation is applied (a phone JPEG tagged "rotate 90" is loaded upright, as viewers show it);
- 16-bit samples are scaled to 8 bits (``round(v / 257)``: a 16-bit copy of an 8-bit face decodes to
  the same pixels; a plain conversion clips them to nearly white);
- transparency is composited onto white, the background viewers and browsers show;
- palette, CMYK, YCbCr, 1-bit and 32-bit images are converted; the first frame of an animation is used.
Pillow decodes (JPEG, PNG, BMP, GIF, TIFF, WebP, AVIF, JPEG 2000, PNM...); OpenCV decodes what Pillow does
not identify (OpenEXR, Radiance HDR...). The pixel count is checked from the header, before decoding.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np

from fer_ablate import MAX_IMAGE_PIXELS
from fer_ablate.data.dataset import IMAGE_SIZE, DataError

# Suffixes the loaders and ``predict`` pick up in folders (lower case); one list for both.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".jp2", ".avif", ".exr", ".hdr",
})
# 40 M pixels (fer_ablate/__init__.py, which also hands it to OpenCV before cv2 can be imported).
MAX_PIXELS = MAX_IMAGE_PIXELS
BACKGROUND = 255  # transparent pixels become white


class ImageError(DataError):
    """An image that cannot be used: not an image, corrupt, empty or too large; the message says which."""


def decode_grey(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grey ``uint8 [h, w]`` from encoded image bytes (see the module docstring for the conversions).

    ``name`` (a path or a request row) starts every error message. Raises ImageError when the bytes are
    empty, not an image, corrupt, or declare more than ``max_pixels`` pixels (refused before decoding).
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: over the {max_pixels:,} pixel limit ({exc})") from None
    except UnidentifiedImageError:
        return _decode_with_opencv(data, name, max_pixels)
    except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: Pillow's word for some corrupt headers
        raise ImageError(f"{name}: not a readable image ({_one_line(exc)})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"{name}: {width}x{height} pixels is over the {max_pixels:,} pixel limit")
        if width * height == 0:
            raise ImageError(f"{name}: image has no pixels ({width}x{height})")
        try:
            return _pil_to_grey(img)
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on corrupt data
            raise ImageError(f"{name}: corrupt or truncated image ({_one_line(exc)})") from None


def read_grey(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grey ``uint8 [h, w]`` from an image file; ImageError names the file when missing or unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror or exc}") from None
    return decode_grey(data, str(path), max_pixels)


def fit_face(grey: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """A whole image that already is a face crop, resized to ``uint8 [size, size]``.

    INTER_AREA when shrinking (no aliasing), cubic when a small crop is enlarged; the same resize for
    image folders and ``predict --crops``.
    """
    import cv2

    if grey.shape == (size, size):
        return grey
    method = cv2.INTER_AREA if min(grey.shape) >= size else cv2.INTER_CUBIC
    return cv2.resize(grey, (size, size), interpolation=method)


def _pil_to_grey(img) -> np.ndarray:
    from PIL import ImageOps

    img.seek(0)  # first frame of a GIF, WebP or TIFF stack
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_high_depth(np.asarray(img), mode)
    if mode == "P":  # palette: keep its transparency, if any, for compositing
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("L", "RGB") and "transparency" in img.info):
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.uint16)
        grey, alpha = la[..., 0], la[..., 1]
        # Integer "over" compositing, rounded: opaque pixels keep their exact grey value.
        return ((grey * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
    if mode not in ("L", "RGB", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: through RGB, as viewers show them
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _scale_high_depth(pixels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (and 32-bit integer) samples to 8 bits; floats in [0, 1] are scaled, others clipped."""
    if mode == "F":
        values = np.nan_to_num(pixels.astype(np.float64))
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    values = np.clip(pixels.astype(np.int64), 0, 65535)
    return ((values + 128) // 257).astype(np.uint8)


def _decode_with_opencv(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Formats Pillow does not identify: OpenCV's decoders, then the same depth and colour rules."""
    import cv2

    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # its size limits (checked from the header) raise; corrupt data returns None
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "")
            limit = f"{int(limit):,}" if limit.isdigit() else limit
            raise ImageError(f"{name}: over the {limit} pixel limit (refused from its header, before "
                             "decoding)") from None
        if "CV_IO_MAX_IMAGE" in str(exc):  # OPENCV_IO_MAX_IMAGE_WIDTH or _HEIGHT (2**20 by default)
            raise ImageError(f"{name}: over OpenCV's width or height limit (refused from its header)") from None
        raise ImageError(f"{name}: not a readable image ({_one_line(exc)})") from None
    if decoded is None or decoded.size == 0:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    if decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise ImageError(f"{name}: {decoded.shape[1]}x{decoded.shape[0]} pixels is over the "
                         f"{max_pixels:,} pixel limit")
    if decoded.dtype.kind == "f":
        if decoded.ndim == 3:
            decoded = cv2.cvtColor(decoded[..., :3].astype(np.float32), cv2.COLOR_BGR2GRAY)
        return _scale_high_depth(decoded, "F")
    if decoded.dtype != np.uint8:
        decoded = _scale_high_depth(decoded, "I")
    if decoded.ndim == 2:
        return decoded
    if decoded.shape[2] == 4:
        grey = cv2.cvtColor(decoded, cv2.COLOR_BGRA2GRAY).astype(np.uint16)
        alpha = decoded[..., 3].astype(np.uint16)
        return ((grey * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
    return cv2.cvtColor(decoded[..., :3], cv2.COLOR_BGR2GRAY)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
