"""What augmentation costs: the framework's in-graph pipeline against no augmentation and against the paper's
``ImageDataGenerator``, on the same data and model, measured in one run.

Two measurements:
1. Pipeline only: augmented images/s of ``single_warp`` (one ``RandomAffine`` warp, the default), ``keras_layers``
   (Keras' flip + rotation + zoom + translation layers) and ``tf_keras``' legacy ``ImageDataGenerator`` (what
   the paper used; Keras 3 no longer has it), all with the config's augmentation ranges.
2. Training: seconds per epoch of the variant's model with augmentation off, ``single_warp``, ``keras_layers``
   and ``ImageDataGenerator`` feeding ``fit`` (one worker, as the paper's ``fit_generator``). The settings
   take turns for ``--repeats`` rounds so machine noise hits them alike; each fit's first epoch is not timed.

The legacy generator is a benchmark-only dependency, installed apart from the project (it needs no new packages):
    pip install --no-deps --target .cache/bench-tfkeras tf-keras==2.21.0
Usage: python benchmarks/augmentation.py [--variant fast_cpu] [--images 3072] [--epochs 3] [--repeats 2]
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
from throughput import EpochTimes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TF_KERAS = ROOT / ".cache" / "bench-tfkeras"


def legacy_generator(aug: dict):
    """The paper's ``ImageDataGenerator`` with the same ranges as the config's augmentation."""
    sys.path.insert(0, str(TF_KERAS))
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        sys.exit(f"tf_keras not found in {TF_KERAS}: pip install --no-deps --target {TF_KERAS} tf-keras==2.21.0")
    return ImageDataGenerator(rotation_range=360 * aug["rotation"], zoom_range=aug["zoom"],
                              width_shift_range=aug["shift"], height_shift_range=aug["shift"],
                              horizontal_flip=aug["horizontal_flip"], fill_mode="nearest")


class LegacyBatches(keras.utils.PyDataset):
    """A ``tf_keras`` ``NumpyArrayIterator`` as a Keras 3 dataset; one worker, like ``fit_generator``'s default."""

    def __init__(self, iterator):
        super().__init__()
        self.iterator = iterator

    def __len__(self):
        return len(self.iterator)

    def __getitem__(self, index):
        return self.iterator[index]


def pipeline_rates(cfg: dict, x: np.ndarray, batch: int, rounds: int = 3) -> dict[str, float]:
    """Augmented images/s of each pipeline alone (no model), median of ``rounds`` passes over ``x``."""
    from fer_ablate.training import build_augmenter

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


def epoch_seconds(cfg: dict, setting: str, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Median seconds per epoch (first epoch excluded) of the variant's model under one augmentation setting."""
    from fer_ablate.data import NUM_CLASSES
    from fer_ablate.training import build_models, compile_for_training

    aug = dict(cfg["augment"])
    aug["enabled"] = setting in ("single_warp", "keras_layers")
    if aug["enabled"]:
        aug["method"] = setting
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    _, model, _ = build_models({**cfg, "augment": aug})
    compile_for_training(model, cfg["train"], len(y))
    images, targets = x.astype(np.float32)[..., None], keras.utils.to_categorical(y, NUM_CLASSES)
    clock = EpochTimes()
    batch = cfg["train"]["batch_size"]
    if setting == "ImageDataGenerator":
        flow = legacy_generator(cfg["augment"]).flow(images, targets, batch_size=batch, shuffle=True, seed=0)
        model.fit(LegacyBatches(flow), epochs=epochs, callbacks=[clock], verbose=0)
    else:
        model.fit(images, targets, batch_size=batch, epochs=epochs, callbacks=[clock], verbose=0)
    return statistics.median(clock.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="fast_cpu")
    parser.add_argument("--images", type=int, default=3072, help="synthetic training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all settings, interleaved")
    parser.add_argument("--settings", default="none,single_warp,keras_layers,ImageDataGenerator")
    args = parser.parse_args()
    from fer_ablate.config import resolve_config
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
    times: dict[str, list[float]] = {s: [] for s in settings}
    for round_ in range(args.repeats):
        for setting in settings:
            times[setting].append(epoch_seconds(cfg, setting, x, y, args.epochs))
            print(f"round {round_ + 1}/{args.repeats} {setting}: {times[setting][-1]:.2f} s/epoch", flush=True)
    base = statistics.median(times[settings[0]])
    legacy = statistics.median(times["ImageDataGenerator"]) if "ImageDataGenerator" in times else None
    print(f"training, seconds per epoch of {args.images} images (median of {args.repeats} rounds):")
    for setting, values in times.items():
        median = statistics.median(values)
        vs_legacy = f"   x{legacy / median:.2f} faster than ImageDataGenerator" if legacy else ""
        print(f"  {setting:<20} {median:>7.2f} s   {100 * (median / base - 1):+6.1f}% vs {settings[0]}{vs_legacy}")


if __name__ == "__main__":
    main()
