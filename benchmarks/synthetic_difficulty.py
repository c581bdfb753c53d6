"""Is the built-in synthetic set learnable but not trivial? Logistic regression vs the paper CNN.

Usage: python benchmarks/synthetic_difficulty.py [--samples 12000] [--epochs 3] [--set key=value ...]
Prints both accuracies on the same synthetic validation split (and the CNN's per-epoch curve).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sklearn.linear_model import LogisticRegression  # noqa: E402

from fer_ablate.config.settings import parse_set_args, resolve_config  # noqa: E402
from fer_ablate.data import load_dataset  # noqa: E402
from fer_ablate.training.loop import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("synthetic_difficulty")
    overrides = {"data.source": "synthetic", "data.synthetic_samples": args.samples,
                 "train.epochs": args.epochs, "train.verbose": 2, **parse_set_args(args.set)}
    cfg = resolve_config("paper", overrides)
    ds = load_dataset(cfg["data"])
    (x_tr, y_tr), (x_val, y_val) = ds.splits["train"], ds.splits["validation"]
    start = time.perf_counter()
    logreg = LogisticRegression(max_iter=300, C=0.1).fit(x_tr.reshape(len(x_tr), -1) / 255.0, y_tr)
    logreg_acc = logreg.score(x_val.reshape(len(x_val), -1) / 255.0, y_val)
    logreg_s = time.perf_counter() - start
    majority = (y_val == 3).mean()
    result = train(cfg, ds)
    print(f"synthetic n={args.samples} (train {len(y_tr)}, val {len(y_val)}); overrides {parse_set_args(args.set)}")
    print(f"majority class (happy)        val accuracy {majority:.3f}")
    print(f"logistic regression (pixels)  val accuracy {logreg_acc:.3f}  ({logreg_s:.0f} s)")
    print(f"paper CNN, {result.epochs_run} epochs            val accuracy {result.metrics['val_accuracy']:.3f}  "
          f"({result.train_seconds:.0f} s, {result.images_per_second:.1f} images/s)")
    print("paper CNN val accuracy per epoch:", [round(v, 3) for v in result.history["val_accuracy"]])
    print(f"ratio CNN / logistic regression: {result.metrics['val_accuracy'] / logreg_acc:.2f}")


if __name__ == "__main__":
    main()
