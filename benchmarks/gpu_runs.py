"""Issue 14, part 6: train on a lent GPU machine (JAX backend) and bring the runs back as MLflow runs.

The GPU machine (`device` tool) has JAX with CUDA, pandas, scikit-learn, OpenCV and Pillow, but no Keras,
TensorFlow or MLflow, reaches no network and takes at most 64 MiB of carried files per call. FER2013's gzip
(87 MB) does not fit, and neither do the uint8 faces with any lossless coder tried (xz with a row-delta
filter 0.75, lossless WebP 0.77, PNG 0.79-0.84 of the 71 MiB), next to MLflow's wheels. So the work is split:

    python benchmarks/gpu_runs.py pack        # here: .device/fer2013.xz (Training + PublicTest faces, xz)
                                              #       and .device/whl (Keras + pydantic wheels for Python 3.12)
    # there, one `device` run with carry [".device"] (the command is printed by `pack`):
    python benchmarks/gpu_runs.py train --out $OUT      # paper and fast_cpu under JAX; $OUT/gpu_runs.json
    python benchmarks/gpu_runs.py log /work/.device/.../gpu_runs.json   # here: one MLflow run per job

`train` uses the package's own training (`training.loop.train`, the same code as `fer-ablate train`) but not
its tracking, so it needs no MLflow there; it writes every epoch's metrics, the machine tags, the resolved
config and the final metrics and confusion matrices to `gpu_runs.json` after each job (a job cut off by the
time limit loses only itself). `log` records each job as a finished MLflow run in experiment
`gpu-time-to-accuracy`, tagged `benchmark=gpu_runs` and with the GPU machine's own `machine.*` tags. The
models stay there (the paper's is 24 MB, over the 16 MB a returned file may have).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".device"  # git-ignored: never commit FER2013 or anything built from it
REAL_FER2013 = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
CARRY_LIMIT = 64 * 2**20
# What the GPU machine lacks (its package list: /work/.library/device/KINDS.md), pinned to this venv's versions.
# typing-extensions too: pydantic 2.14 needs >= 4.16, and the machine's version is not on record.
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
          "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing-extensions==4.16.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The first job is the short one, so a call cut short still brings one run back. time_budget_minutes is the
# safety stop; fast_cpu's cosine_time schedule anneals over it, so it is also that recipe's length here. The
# held-out split is the CPU runs' (benchmarks/README.md), so the figures compare.
JOBS = (
    ("fast_cpu", {"train.time_budget_minutes": 1.5, "data.test_fraction": 0.1}),
    ("paper", {"train.time_budget_minutes": 5.5, "data.test_fraction": 0.1}),  # the paper's 100 epochs, if they fit
)
USAGE = {0: "Training", 1: "PublicTest"}
XZ_FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 48}, {"id": lzma.FILTER_LZMA2, "preset": 9}]


def pack() -> None:
    """Write ``.device/fer2013.xz`` (an .npz of ``x`` uint8 [n,48,48], ``y`` and ``usage`` uint8 [n], and the
    source file's name and ``data_digest``) and the wheels, and print the ``device`` command; refuses when the
    carry would exceed 64 MiB."""
    import numpy as np

    from fer_ablate.data.cache import content_hash
    from fer_ablate.data.fer_csv import parse_fer_csv

    CARRY.mkdir(exist_ok=True)
    x, y, usage, _ = parse_fer_csv(REAL_FER2013)
    keep = np.isin(usage, list(USAGE))
    buf = io.BytesIO()
    np.savez(buf, x=x[keep], y=y[keep].astype(np.uint8), usage=usage[keep].astype(np.uint8),
             source=REAL_FER2013.name, digest=content_hash(REAL_FER2013))
    started = time.perf_counter()
    (CARRY / "fer2013.xz").write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=XZ_FILTERS))
    print(f"faces: {keep.sum()} in {time.perf_counter() - started:.0f} s", flush=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(CARRY / "whl"),
                    *WHEELS], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = sum((ROOT / name).stat().st_size for name in tracked.decode().split("\0") if (ROOT / name).is_file())
    carried = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"carry {carried / 2**20:.1f} MiB + tracked tree {tree / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    if carried + tree > CARRY_LIMIT:
        raise SystemExit("too large for one device call: carry fewer wheels")
    print("device command (carry [\".device\"], timeout_s 560):\n"
          "set -eo pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
          "--target /tmp/site .device/whl/*.whl && "
          "export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 && nvidia-smi -L && "
          "python3 benchmarks/gpu_runs.py train --out $OUT 2>&1 | tee $OUT/log")


def write_csv(path: Path) -> dict[str, str]:
    """FER2013's CSV (``emotion,pixels,Usage``) from the carried arrays, for the normal data loader; returns
    the original file's ``location`` and ``digest`` (the faces are array-for-array the same, the file is not)."""
    import numpy as np

    arrays = np.load(io.BytesIO(lzma.decompress((CARRY / "fer2013.xz").read_bytes())))
    with path.open("w") as out:
        out.write("emotion,pixels,Usage\n")
        for face, label, usage in zip(arrays["x"], arrays["y"], arrays["usage"], strict=True):
            out.write(f"{label},{' '.join(map(str, face.ravel().tolist()))},{USAGE[int(usage)]}\n")
    return {"location": str(arrays["source"]), "digest": str(arrays["digest"])}


def train_jobs(out: Path, jobs: list[tuple[str, dict]], data: str | None) -> None:
    """Train each ``(variant, overrides)`` job with ``training.loop.train``; rewrite ``out/gpu_runs.json``
    after each one (a list of records: variant, config, machine tags, per-epoch metrics, final metrics,
    cost, confusion matrices)."""
    import keras
    import numpy as np

    from fer_ablate.config.settings import config_hash, resolve_config
    from fer_ablate.data import load_dataset
    from fer_ablate.training.callbacks import EpochLogger
    from fer_ablate.training.hardware import run_machine_tags
    from fer_ablate.training.loop import train
    from fer_ablate.training.metrics import confusion

    out.mkdir(parents=True, exist_ok=True)
    original = {}
    if data is None:
        data = "/tmp/fer2013.csv"
        original = write_csv(Path(data))
    records = []
    for variant, overrides in jobs:
        cfg = resolve_config(variant, {"data.source": data, "train.verbose": 2, **overrides})
        dataset = load_dataset(cfg["data"])
        epochs: list[tuple[int, dict[str, float]]] = []
        logger = EpochLogger(lambda metrics, step, into=epochs: into.append((step, metrics)))
        result = train(cfg, dataset, callbacks=[logger])
        records.append({
            "variant": variant, "config": cfg, "config_hash": config_hash(cfg),
            "machine_tags": run_machine_tags(cfg["train"]),
            "data": {"source": dataset.source, "location": dataset.location, "digest": dataset.digest,
                     "sizes": dataset.sizes(), **original},
            "epochs": epochs, "history": result.history,
            "metrics": {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
            "cost": {"param_count": result.param_count, "best_epoch": result.best_epoch,
                     "epochs_run": result.epochs_run, "train_seconds": result.train_seconds,
                     "images_per_second": result.images_per_second},
            "confusions": {split: confusion(y, probs).tolist() for split, (y, probs) in result.predictions.items()},
        })
        (out / "gpu_runs.json").write_text(json.dumps(records, indent=1))
        epoch_seconds = np.diff(result.history["wall_seconds"], prepend=0.0)
        print(f"{variant}: {result.epochs_run} epochs, median epoch {np.median(epoch_seconds):.1f} s, "
              f"{result.images_per_second:.0f} images/s, val_accuracy {result.metrics['val_accuracy']:.4f}",
              flush=True)
        keras.utils.clear_session()


def log_runs(path: Path, experiment: str) -> list[str]:
    """One finished MLflow run per record of ``gpu_runs.json``, in ``experiment``; returns their ids."""
    import mlflow

    from fer_ablate import tracking
    from fer_ablate.data import CLASS_NAMES
    from fer_ablate.tracking.machine_tags import log_machine_tags

    ctx = tracking.open_context(experiment)
    run_ids = []
    for record in json.loads(path.read_text()):
        device = record["machine_tags"].get("machine.device_kind", "?").upper()
        name = f"{record['variant']} · {device} · {record['config']['train']['time_budget_minutes']:g} min"
        with tracking.tracked_run(ctx.experiment_id, name, {"benchmark": "gpu_runs"}) as run:
            tracking.log_config(record["config"], record["config_hash"])
            log_machine_tags(record["machine_tags"])
            data = record["data"]
            # As log_dataset would (no dataset inputs: the faces are not here); the digest is the original
            # file's, so grid and k-fold reports pair these runs with CPU runs on the same faces.
            synthetic = str(data["source"] == "synthetic").lower()
            mlflow.set_tags({"data_source": data["source"], "data_location": data["location"],
                             "data_digest": data["digest"], "data_synthetic": synthetic})
            mlflow.log_params({f"data_n_{split}": n for split, n in data["sizes"].items()})
            for step, metrics in record["epochs"]:
                tracking.log_metrics(metrics, step)
            step = max(record["cost"]["epochs_run"], 1)
            mlflow.log_metrics(record["metrics"], step=step)
            mlflow.log_metrics(record["cost"])
            mlflow.log_dict(record["history"], "metrics/history.json")
            for split, matrix in record["confusions"].items():
                mlflow.log_dict({"classes": list(CLASS_NAMES), "matrix": matrix}, f"metrics/confusion_{split}.json")
        run_ids.append(run.info.run_id)
        print(f"{name}: run {run.info.run_id}, val_accuracy {record['metrics'].get('val_accuracy', float('nan')):.4f}")
    return run_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pack", help="here: the carried faces and wheels")
    train = sub.add_parser("train", help="there: train the jobs, write OUT/gpu_runs.json")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--data", default=None, help="a FER2013 CSV instead of the carried faces (a CPU trial)")
    train.add_argument("--set", action="append", default=[], help="extra overrides for every job")
    log = sub.add_parser("log", help="here: the returned gpu_runs.json as MLflow runs")
    log.add_argument("path", type=Path)
    log.add_argument("--experiment", default="gpu-time-to-accuracy")
    args = parser.parse_args()
    if args.command == "pack":
        pack()
    elif args.command == "train":
        from fer_ablate.config.settings import parse_set_args

        extra = parse_set_args(args.set)
        train_jobs(args.out, [(variant, {**overrides, **extra}) for variant, overrides in JOBS], args.data)
    else:
        log_runs(args.path, args.experiment)


if __name__ == "__main__":
    main()
