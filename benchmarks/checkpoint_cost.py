"""What a run's per-epoch checkpoint costs: the time to write (and read back) the paper model's whole training
state, against the time of one training epoch measured in the same process.

Usage: python benchmarks/checkpoint_cost.py [--variant paper] [--images 2048] [--repeats 5] [--set key=value ...]
The state is what ``training.checkpoints`` writes at every epoch's end: the training model's variables, the
optimizer's (Adam: two moments per weight), the best epoch's weights and the JSON record. The baseline is the
median epoch (epochs 2..) of ``train()`` with checkpoints on the same synthetic faces; a FER2013 epoch holds
28,709 images, so its ratio is about images/28,709 of the one printed here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine_header import print_header  # noqa: E402

from fer_ablate.config.settings import parse_set_args, resolve_config  # noqa: E402
from fer_ablate.data import load_dataset  # noqa: E402
from fer_ablate.training import checkpoints  # noqa: E402
from fer_ablate.training.loop import build_models, compile_for_training, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="paper")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    print_header("checkpoint cost per epoch")
    overrides = {"data.source": "synthetic", "data.synthetic_samples": args.images, "train.epochs": 3,
                 "train.verbose": 0, **parse_set_args(args.set)}
    cfg = resolve_config(args.variant, overrides)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.npz"
        _, training, params = build_models(cfg)
        compile_for_training(training, cfg["train"], args.images)
        training.optimizer.build(training.trainable_variables)
        best = training.get_weights()
        state = checkpoints.TrainingState(checkpoints.fingerprint(cfg, "bench"), 1, {"loss": [1.0]})
        writes, reads = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            checkpoints.save(path, state, training, best)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoints.restore(path, training)
            reads.append(time.perf_counter() - start)
        size = path.stat().st_size
        keras.utils.clear_session()

        data = load_dataset(cfg["data"])
        result = train(cfg, data, checkpoint=Path(tmp) / "timed.npz")
        walls = np.diff([0.0, *result.history["wall_seconds"]])
        epoch = statistics.median(walls[1:]) if len(walls) > 1 else walls[0]

    write, read = statistics.median(writes), statistics.median(reads)
    print(f"variant {args.variant}: {params:,} parameters; checkpoint {size / 2**20:.1f} MiB "
          f"(model + optimizer + best weights)")
    print(f"write {write * 1000:.0f} ms (median of {args.repeats}), read back {read * 1000:.0f} ms")
    print(f"baseline: one epoch of {len(data.splits['train'][1]):,} training images {epoch:.2f} s "
          f"(median of epochs 2..{len(walls)}); checkpoints written during that run: "
          f"{result.checkpoint_seconds:.2f} s for {len(walls)} epochs")
    print(f"checkpoint / epoch = {write / epoch:.3%} here; a 28,709-image FER2013 epoch: about "
          f"{write / (epoch * 28709 / max(len(data.splits['train'][1]), 1)):.3%}")


if __name__ == "__main__":
    main()
