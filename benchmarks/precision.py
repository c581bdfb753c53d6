"""float32 against bf16 (and whatever ``train.precision: auto`` picks) on this machine, in one run.

Trains the same variant (default ``fast_cpu``) on the same synthetic images once per precision and prints
the time of each epoch: epoch 1 includes tracing and oneDNN kernel selection, later epochs are steady
state. The ratio against float32 is what ``fer_ablate.training.hardware.choose_precision`` encodes.

Usage: python benchmarks/precision.py [--images 512] [--epochs 2] [--variant fast_cpu]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402


class EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch, in seconds."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def epoch_times(variant: str, overrides: dict, images: int, epochs: int) -> list[float]:
    """Seconds per epoch of ``variant`` (with ``overrides``) trained on ``images`` synthetic faces.

    Shared with throughput.py, so both benchmarks time training the same way."""
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.data import Dataset
    from fer_ablate.data.synthetic import make_synthetic_faces
    from fer_ablate.training.loop import train

    cfg = resolve_config(variant, {"train.epochs": epochs, "train.verbose": 0, "train.time_budget_minutes": 600.0,
                                   **overrides})
    x, y = make_synthetic_faces(images + 64, seed=0)
    dataset = Dataset({"train": (x[:images], y[:images]), "validation": (x[images:], y[images:])}, "synthetic",
                      "benchmark", "bench")
    clock = EpochTimes()
    keras.utils.clear_session()
    train(cfg, dataset, callbacks=[clock])
    return clock.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--variant", default="fast_cpu")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header(f"precision: {args.variant}, {args.images} images, {args.epochs} epochs")
    base = None
    for precision in args.precisions.split(","):
        times = epoch_times(args.variant, {"train.precision": precision}, args.images, args.epochs)
        steady = min(times[1:] or times)
        base = base or steady
        print(f"{precision:<16} epochs {', '.join(f'{t:.1f}' for t in times)} s; steady {args.images / steady:.1f} "
              f"img/s, x{base / steady:.2f} vs {args.precisions.split(',')[0]}", flush=True)


if __name__ == "__main__":
    main()
