"""Parsing a FER2013-format CSV: fer-ablate (cold and from its cache) vs pandas + per-row np.fromstring.

Usage: python benchmarks/parse_csv.py [--csv PATH] [--repeat 3]
Without --csv it uses $FER_DATA or ../shared/data/fer2013/fer2013.csv.gz (decompressed to a temporary
uncompressed CSV, the format the target is stated for), else generates a 35,887-row CSV of random pixels.
Prints the best of --repeat runs for each method and the ratios against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fer_ablate.data import fer_csv
from fer_ablate.data.loading import _load_csv

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def baseline(path: Path) -> np.ndarray:
    """What most FER code does: pandas, then np.fromstring per row."""
    df = pd.read_csv(path)
    return np.stack([np.fromstring(p, dtype=np.uint8, sep=" ") for p in df["pixels"]])


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_csv(folder: Path, source: Path | None) -> Path:
    target = folder / "fer2013.csv"
    if source is not None and source.suffix == ".gz":
        with gzip.open(source, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    elif source is not None:
        shutil.copy(source, target)
    else:
        rng = np.random.default_rng(0)
        usage = ["Training"] * 28709 + ["PublicTest"] * 3589 + ["PrivateTest"] * 3589
        with target.open("w") as out:
            out.write("emotion,pixels,Usage\n")
            for u in usage:
                out.write(f"{rng.integers(7)},{' '.join(map(str, rng.integers(0, 256, 2304)))},{u}\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("parse_csv")
    source = args.csv or (Path(os.environ["FER_DATA"]) if os.environ.get("FER_DATA") else None)
    source = source or (SHARED if SHARED.is_file() else None)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FER_ABLATE_CACHE"] = str(Path(tmp) / "cache")
        path = make_csv(Path(tmp), source)
        size_mb = path.stat().st_size / 1e6
        base = best_of(lambda: baseline(path), args.repeat)
        cold = best_of(lambda: fer_csv.parse_fer_csv(path), args.repeat)
        saved, fer_csv._fastcsv = fer_csv._fastcsv, None
        numpy_path = best_of(lambda: fer_csv.parse_fer_csv(path), args.repeat)
        fer_csv._fastcsv = saved
        _load_csv(path, False)  # fills the cache
        cached = best_of(lambda: _load_csv(path, False), args.repeat)
        rows = len(fer_csv.parse_fer_csv(path)[1])
    print(f"file: {source or 'generated random pixels'} -> {size_mb:.0f} MB uncompressed CSV, {rows:,} rows; "
          f"best of {args.repeat}; {os.cpu_count()} cores")
    print(f"baseline pandas.read_csv + per-row np.fromstring : {base:6.2f} s   1.0x")
    print(f"fer-ablate cold, C fast path ({'built' if saved else 'NOT built':>9})  : {cold:6.2f} s "
          f"{base / cold:5.1f}x")
    print(f"fer-ablate cold, numpy fallback                  : {numpy_path:6.2f} s {base / numpy_path:5.1f}x")
    print(f"fer-ablate from cache (content-hash key)         : {cached:6.2f} s {base / cached:5.1f}x")


if __name__ == "__main__":
    main()
