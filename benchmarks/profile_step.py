"""Where a training step's time goes: oneDNN kernels by kind (convolution, batch norm, pooling, ...) against
the wall time of the same steps, for one variant's model, recipe and precision on this machine.

The script runs itself again with ``ONEDNN_VERBOSE=profile_exec`` (oneDNN prints every kernel it executes,
with its implementation and milliseconds), trains ``--steps`` batches twice on random faces (the first
epoch traces the graph and lets oneDNN choose kernels: not counted), and sums the second epoch's kernel
times by kind and direction. "outside oneDNN" is the rest of the wall time: the augmentation, the
optimizer update, TensorFlow's own element-wise kernels and the Python between steps. TensorFlow backend
only (JAX's XLA:CPU does not go through oneDNN's primitive API).

Usage (nothing else running; ~1-3 min):
    python benchmarks/profile_step.py --variant fast_cpu --steps 30
    python benchmarks/profile_step.py --variant fast_cpu --set train.precision=float32
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/profile_step.py --variant fast_cpu --set train.precision=float32
        # ^ on an AVX-512 or AMX machine: the kernels an AVX2-only CPU gets (close, not the same machine)
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
START, END = "== profiled epoch starts ==", "== profiled epoch ends =="


def child(variant: str, steps: int, overrides: list[str]) -> None:
    """Train ``steps`` batches twice with the variant's model and recipe; mark the second epoch on stdout."""
    import keras
    import numpy as np

    from fer_ablate.config.settings import parse_set_args, resolve_config
    from fer_ablate.training.loop import build_models, compile_for_training

    cfg = resolve_config(variant, parse_set_args(overrides))
    batch = cfg["train"]["batch_size"]
    _, training, params = build_models(cfg)
    compile_for_training(training, cfg["train"], steps * batch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * batch, 48, 48, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 7, steps * batch), 7)

    class Marks(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.start = time.perf_counter()
                print(START, flush=True)

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                print(END, flush=True)
                print(f"wall_ms {1000 * (time.perf_counter() - self.start):.1f} params {params} batch {batch}",
                      flush=True)

    training.fit(x, y, batch_size=batch, epochs=2, verbose=0, callbacks=[Marks()])


def summarise(lines: list[str], steps: int) -> None:
    """Sum the profiled epoch's oneDNN kernel times by (kind, direction) and print them against wall time."""
    inside, wall, meta = False, None, ""
    by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    impls: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    by_shape: dict[tuple[str, str, str], float] = collections.defaultdict(float)  # which layer
    for line in lines:
        if line.startswith(START):
            inside = True
        elif line.startswith(END):
            inside = False
        elif line.startswith("wall_ms"):
            wall, meta = float(line.split()[1]), line
        elif inside and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.strip().split(",")
            at = fields.index("exec")
            kind, impl, prop = fields[at + 2], fields[at + 3], fields[at + 4]
            try:
                ms = float(fields[-1])
            except ValueError:
                continue
            key = (kind, prop.replace("forward_training", "forward").replace("forward_inference", "forward"))
            by_kind[key] += ms
            impls[key][impl] += 1
            shape = next((f for f in reversed(fields[:-1]) if f.startswith(("mb", "m", "g"))), "")
            by_shape[(*key, shape)] += ms
    if wall is None:
        sys.exit("profile_step: the child printed no timing (see its output above)")
    total = sum(by_kind.values())
    print(f"profiled epoch: {steps} steps, {wall / 1000:.2f} s wall, {wall / steps:.1f} ms/step ({meta})")
    print(f"{'oneDNN kernel kind':<34} {'ms/step':>9} {'% wall':>7}  implementations")
    for (kind, prop), ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        names = ", ".join(f"{name} x{n}" for name, n in impls[(kind, prop)].most_common(3))
        print(f"{kind + ' ' + prop:<34} {ms / steps:>9.2f} {100 * ms / wall:>6.1f}%  {names}")
    print("\ntop kernels by problem (mb=batch, ic/oc=channels in/out, ih/oh=height in/out, k=kernel):")
    for (kind, prop, shape), ms in sorted(by_shape.items(), key=lambda item: -item[1])[:10]:
        print(f"  {ms / steps:>8.2f} ms/step {100 * ms / wall:>5.1f}%  {kind} {prop} {shape}")
    print(f"{'all oneDNN kernels':<34} {total / steps:>9.2f} {100 * total / wall:>6.1f}%")
    # TensorFlow runs independent kernels side by side (inter-op threads), so the sum can pass 100%.
    rest = wall - total
    print(f"{'wall minus oneDNN (TF ops, Python)':<34} {rest / steps:>9.2f} {100 * rest / wall:>6.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="fast_cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], help="config overrides, e.g. train.precision=float32")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.variant, args.steps, args.set)
        return
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header(f"profile_step {args.variant} {' '.join(args.set)}".strip())
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        print(f"ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}")
    command = [sys.executable, __file__, "--child", "--variant", args.variant, "--steps", str(args.steps),
               *[a for s in args.set for a in ("--set", s)]]
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_exec", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"profile_step: the child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summarise(done.stdout.splitlines(), args.steps)


if __name__ == "__main__":
    main()
