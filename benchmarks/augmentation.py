"""What augmentation costs: the framework's in-graph pipeline against no augmentation and against the paper's
``ImageDataGenerator``, on the same data and model, measured in one run.

Two measurements:
1. Pipeline only: augmented images/s of ``single_warp`` (one ``RandomAffine`` warp, the default), ``keras_layers``
   (Keras' flip + rotation + zoom + translation layers) and ``tf_keras``' legacy ``ImageDataGenerator`` (what
   the paper used; Keras 3 no longer has it), all with the config's augmentation ranges.
2. Training: seconds per training step of the variant's model with augmentation off, ``single_warp``,
   ``keras_layers`` and ``ImageDataGenerator`` (a batch made on the CPU, then a step on it: the paper's
   loop). The settings take turns step by step, so machine noise hits them alike: on this shared VM whole
   epochs of one setting differ by 20% between rounds, which drowned the differences sought.

The legacy generator is a benchmark-only dependency, installed apart from the project (it needs no new packages):
    pip install --no-deps --target .cache/bench-tfkeras tf-keras==2.21.0
Usage: python benchmarks/augmentation.py [--variant fast_cpu] [--images 3072] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TF_KERAS = ROOT / ".cache" / "bench-tfkeras"


def legacy_generator(aug: dict):
    """The paper's ``ImageDataGenerator`` with the same ranges as the config's augmentation."""
    if str(TF_KERAS) not in sys.path:
        sys.path.insert(0, str(TF_KERAS))
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        sys.exit(f"tf_keras not found in {TF_KERAS}: pip install --no-deps --target {TF_KERAS} tf-keras==2.21.0")
    return ImageDataGenerator(rotation_range=360 * aug["rotation"], zoom_range=aug["zoom"],
                              width_shift_range=aug["shift"], height_shift_range=aug["shift"],
                              horizontal_flip=aug["horizontal_flip"], fill_mode="nearest")


def pipeline_rates(cfg: dict, x: np.ndarray, batch: int, rounds: int = 3) -> dict[str, float]:
    """Augmented images/s of each pipeline alone (no model), median of ``rounds`` passes over ``x``."""
    from fer_ablate.training.loop import build_augmenter

    images = x.astype(np.float32)[..., None]
    rates: dict[str, list[float]] = {"single_warp": [], "keras_layers": [], "ImageDataGenerator": []}
    graphs = {}
    for method in ("single_warp", "keras_layers"):
        stack = keras.Sequential(build_augmenter({**cfg["augment"], "method": method}, seed=0))

        def augment(batch, stack=stack):
            return stack(batch, training=True)

        graphs[method] = tf.function(augment)
        graphs[method](tf.constant(images[:batch]))  # trace once
    legacy = legacy_generator(cfg["augment"])
    for _ in range(rounds):
        for method, graph in graphs.items():
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                graph(tf.constant(images[i:i + batch])).numpy()
            rates[method].append(len(images) / (time.perf_counter() - start))
        iterator = legacy.flow(images, batch_size=batch, shuffle=True, seed=0)
        start = time.perf_counter()
        for i in range(len(iterator)):
            iterator[i]
        rates["ImageDataGenerator"].append(len(images) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def step_times(cfg: dict, settings: list[str], x: np.ndarray, y: np.ndarray, steps: int) -> dict[str, list[float]]:
    """Seconds per training step (one batch, producing it included) of each setting, the settings taking turns
    step by step so that the shared machine's slow spells hit them alike."""
    from fer_ablate.data import NUM_CLASSES
    from fer_ablate.training.loop import build_models, compile_for_training

    batch = cfg["train"]["batch_size"]
    images, targets = x.astype(np.float32)[..., None], keras.utils.to_categorical(y, NUM_CLASSES)
    runners = {}
    for setting in settings:
        aug = {**cfg["augment"], "enabled": setting in ("single_warp", "keras_layers")}
        if aug["enabled"]:
            aug["method"] = setting
        _, model, _ = build_models({**cfg, "augment": aug})
        compile_for_training(model, cfg["train"], len(y))
        if setting == "ImageDataGenerator":  # the paper's loop: a CPU-made batch, then a step on it
            flow = legacy_generator(cfg["augment"]).flow(images, targets, batch_size=batch, shuffle=True, seed=0)
            runners[setting] = lambda model=model, flow=flow: model.train_on_batch(*next(flow))
        else:
            batches = iter(range(10**9))
            runners[setting] = lambda model=model, batches=batches: model.train_on_batch(
                *_batch(images, targets, next(batches), batch))
        for _ in range(3):  # tracing and oneDNN kernel choice, not timed
            runners[setting]()
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    for _ in range(steps):
        for setting, run in runners.items():
            start = time.perf_counter()
            run()
            times[setting].append(time.perf_counter() - start)
    return times


def _batch(images: np.ndarray, targets: np.ndarray, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    start = (index * size) % (len(images) - size)
    return images[start:start + size], targets[start:start + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="fast_cpu")
    parser.add_argument("--images", type=int, default=3072, help="synthetic training images per epoch")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per setting, interleaved")
    parser.add_argument("--settings", default="none,single_warp,keras_layers,ImageDataGenerator")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("augmentation")
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.data.synthetic import make_synthetic_faces

    cfg = resolve_config(args.variant)
    x, y = make_synthetic_faces(args.images, seed=0)
    aug = cfg["augment"]
    print(f"variant {args.variant}: batch {cfg['train']['batch_size']}, {cfg['train']['precision']}; augmentation "
          f"flip={aug['horizontal_flip']} rotation={aug['rotation']} zoom={aug['zoom']} shift={aug['shift']}; "
          f"{args.images} synthetic 48x48 faces")
    rates = pipeline_rates(cfg, x, cfg["train"]["batch_size"])
    print("pipeline only (augmented images/s):")
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>9.0f}   x{rate / rates['ImageDataGenerator']:.1f} vs ImageDataGenerator",
              flush=True)
    settings = args.settings.split(",")
    times = step_times(cfg, settings, x, y, args.steps)
    medians = {setting: statistics.median(values) for setting, values in times.items()}
    base, legacy = medians[settings[0]], medians.get("ImageDataGenerator")
    print(f"training, seconds per step of {cfg['train']['batch_size']} images (median of {args.steps}, interleaved):")
    for setting, median in medians.items():
        vs_legacy = f"   x{legacy / median:.2f} vs ImageDataGenerator" if legacy else ""
        print(f"  {setting:<20} {1000 * median:>7.1f} ms  {100 * (median / base - 1):+6.1f}% vs {settings[0]}"
              f"{vs_legacy}")
    train_rate = cfg["train"]["batch_size"] / base
    for name, rate in rates.items():  # the pipeline's share of a step if it ran in series with the model
        print(f"  {name}: augmentation alone is {100 * train_rate / rate:.1f}% of an unaugmented step's time")

if __name__ == "__main__":
    main()
