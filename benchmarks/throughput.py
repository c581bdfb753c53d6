"""Training throughput of the paper CNN through the framework, as a fraction of this CPU's SGEMM rate.

Measured in one run: numpy float32 matrix-product FLOP/s (the baseline), then images/s of
``fer_ablate.training.loop.train`` for each setting (precision, XLA, batch size, augmentation), expressed as
achieved training FLOP/s = images/s x 3 x 2 x forward MACs per image (forward + two backward products).
Timing skips each run's first epoch (graph tracing, XLA compilation, oneDNN kernel selection).

Usage: python benchmarks/throughput.py [--images 2048] [--epochs 3] [--only default,bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

SETTINGS = {  # name -> config overrides on top of the paper variant
    "default": {},
    "no_xla": {"train.jit_compile": "no_xla"},
    "xla": {"train.jit_compile": "xla"},
    "bf16": {"train.precision": "mixed_bfloat16"},
    "bf16_xla": {"train.precision": "mixed_bfloat16", "train.jit_compile": "xla"},
    "batch128": {"train.batch_size": 128},
    "bf16_batch128": {"train.precision": "mixed_bfloat16", "train.batch_size": 128},
    "auto_batch128": {"train.precision": "auto", "train.batch_size": 128},  # what fast_cpu gets on this machine
    "noaug": {"augment.enabled": False},
    "bf16_noaug": {"train.precision": "mixed_bfloat16", "augment.enabled": False},
    "noaug_no_xla": {"augment.enabled": False, "train.jit_compile": "no_xla"},
    "bf16_noaug_no_xla": {"train.precision": "mixed_bfloat16", "augment.enabled": False, "train.jit_compile": "no_xla"},
}


def sgemm_flops(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matrix product (numpy's BLAS, all cores): the CPU's practical peak."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def forward_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one image's forward pass: convolutions and dense layers (the rest is noise)."""
    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def images_per_second(overrides: dict, images: int, epochs: int) -> float:
    """Images per second of the paper model with ``overrides``, median over epochs after the first."""
    from precision import epoch_times  # benchmarks/ is sys.path[0] when run as a script

    return images / statistics.median(epoch_times("paper", overrides, images, epochs)[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (the first is not timed)")
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("throughput")
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.training.loop import build_models

    peak = sgemm_flops()
    inference, _, params = build_models(resolve_config("paper"))
    macs = forward_macs(inference)
    per_image = 3 * 2 * macs  # FLOPs: forward, backward-data and backward-weights products, 2 FLOPs per MAC
    print(f"SGEMM float32 (numpy, 4096^2): {peak / 1e9:.1f} GFLOP/s; paper CNN {params:,} parameters, "
          f"{macs / 1e9:.3f} GMAC forward, {per_image / 1e9:.2f} GFLOP per training image")
    print(f"{'setting':<16} {'img/s':>8} {'GFLOP/s':>9} {'of SGEMM':>9}")
    base = None
    for name in args.only.split(","):
        ips = images_per_second(SETTINGS[name], args.images, args.epochs)
        base = base or ips
        print(f"{name:<16} {ips:>8.1f} {ips * per_image / 1e9:>9.1f} {100 * ips * per_image / peak:>8.0f}%"
              f"   x{ips / base:.2f} vs {args.only.split(',')[0]}", flush=True)


if __name__ == "__main__":
    main()
