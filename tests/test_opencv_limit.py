"""OpenCV refuses a header-declared bomb before decoding: its pixel limit is set before cv2 is imported."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import PROJECT


def hdr_bomb(width: int = 8000, height: int = 6000) -> bytes:
    """A valid Radiance HDR (a format Pillow does not identify) of ``width x height`` flat grey pixels in
    ~3 MB: each scanline's 4 RGBE components are run-length encoded in runs of 127."""
    runs = b"".join(bytes([128 + n, value]) for value in (100, 100, 100, 128)
                    for n in [127] * (width // 127) + ([width % 127] if width % 127 else []))
    line = b"\x02\x02" + width.to_bytes(2, "big") + runs
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode() + line * height


def test_opencv_refuses_a_bomb_from_its_header_even_after_keras(tmp_path):
    # 48 M pixels, over the 40 M limit: decoded, OpenCV would take 1.2 GB before our own check refused it.
    bomb = tmp_path / "bomb.hdr"
    bomb.write_bytes(hdr_bomb())
    # cv2 reads $OPENCV_IO_MAX_IMAGE_PIXELS once, at import, and Keras imports cv2: the package sets it first.
    code = f"""
import os, sys
import fer_ablate
assert "cv2" not in sys.modules and "keras" not in sys.modules
assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == "40000000"
import fer_ablate.inference.faces, keras
assert "cv2" in sys.modules  # what makes an early limit necessary
from fer_ablate.data.images import ImageError, read_grey
try:
    read_grey({str(bomb)!r})
except ImageError as exc:
    print("refused:", exc)
"""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"refused: {bomb}: over the 40,000,000 pixel limit (refused from its header, before decoding)")
