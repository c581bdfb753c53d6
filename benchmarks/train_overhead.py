"""Training throughput of the paper model: through fer-ablate's train() vs a plain Keras script.

Usage: python benchmarks/train_overhead.py [--images 1280] [--epochs 3] [--set key=value ...]
Both sides train the same model (the registry's paper_cnn, 5,905,863 parameters) on the same arrays
(synthetic faces), batch 64, no augmentation, in this process, interleaved --rounds times (plain, ours,
plain, ours, ...) so that machine noise hits both. Images/s per round come from the median epoch time
of epochs 2.. (epoch 1 includes graph tracing); each side reports its best round.
Overhead = 1 - ours/plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fer_ablate.config.settings import parse_set_args, resolve_config  # noqa: E402
from fer_ablate.data import load_dataset  # noqa: E402
from fer_ablate.models import build_from_config  # noqa: E402
from fer_ablate.training.loop import train  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times, self._start = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def plain_keras(cfg, x, y, x_val, y_val) -> list[float]:
    """The way a plain script trains the same model: no callbacks of ours, same optimizer and batch."""
    keras.utils.set_random_seed(cfg["train"]["seed"])
    inputs = keras.Input((48, 48, 1))
    model = keras.Model(inputs, build_from_config(cfg["model"])(keras.layers.Rescaling(1 / 255)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(x, keras.utils.to_categorical(y, 7), validation_data=(x_val, keras.utils.to_categorical(y_val, 7)),
              epochs=cfg["train"]["epochs"], batch_size=cfg["train"]["batch_size"], callbacks=[timer], verbose=2)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("train_overhead")
    n_total = int(args.images / 0.8) + 1
    overrides = {"data.source": "synthetic", "data.synthetic_samples": n_total, "train.epochs": args.epochs,
                 "augment.enabled": False, "train.verbose": 2, **parse_set_args(args.set)}
    cfg = resolve_config("paper", overrides)
    ds = load_dataset(cfg["data"])
    (x, y), (x_val, y_val) = ds.splits["train"], ds.splits["validation"]
    plain_runs, our_runs = [], []
    for _ in range(args.rounds):
        plain_runs.append(plain_keras(cfg, x.astype(np.float32)[..., None], y, x_val.astype(np.float32)[..., None],
                                      y_val))
        keras.utils.clear_session()
        timer = EpochTimer()
        train(cfg, ds, callbacks=[timer])
        our_runs.append(timer.times)
        keras.utils.clear_session()

    def best(runs: list[list[float]]) -> tuple[float, list[float]]:
        rates = [len(y) / statistics.median(t[1:] or t) for t in runs]
        return max(rates), runs[rates.index(max(rates))]

    plain_ips, plain = best(plain_runs)
    ours_ips, ours = best(our_runs)
    print(f"paper model, {len(y)} training images, {args.epochs} epochs x {args.rounds} rounds, "
          f"batch {cfg['train']['batch_size']}, "
          f"{os.cpu_count()} cores, backend {keras.backend.backend()}")
    print(f"plain Keras script : {plain_ips:7.1f} images/s  (best round's epoch times {[round(t, 1) for t in plain]};"
          f" all rounds {[[round(t, 1) for t in r] for r in plain_runs]})")
    print(f"fer-ablate train() : {ours_ips:7.1f} images/s  (best round's epoch times {[round(t, 1) for t in ours]};"
          f" all rounds {[[round(t, 1) for t in r] for r in our_runs]})")
    print(f"overhead: {100 * (1 - ours_ips / plain_ips):+.1f}% (ratio ours/plain {ours_ips / plain_ips:.3f})")


if __name__ == "__main__":
    main()
