"""Pruned TPE vs unpruned random search, same number of trials, same synthetic data, in one run.

Usage: python benchmarks/pruning.py [--trials 12] [--epochs 6] [--samples 2000] [--pruner successive_halving]
Target (tuning issue): the pruned study gets within 1 point of random search's best validation accuracy
with at most 40% of its epochs. Both studies use the framework's objective (tracked to a temporary MLflow
store) on a reduced-width paper CNN (base_filters 8) so that the comparison fits in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optuna  # noqa: E402
import yaml  # noqa: E402

SPACE = {
    "base": "paper", "metric": "val_accuracy", "direction": "maximize",
    # A small model that learns from its first epoch: with the paper's dense stack (64/32/16 units behind
    # dropout 0.4/0.4/0.5 at this width) every trial sat at the majority class after one epoch, and a
    # pruner cannot rank ties (benchmarks/README.md, the 2026-11-28 runs).
    "fixed": {"data.source": "synthetic", "model.base_filters": 8, "model.dense_units": [64],
              "model.dense_dropout": [0.2], "model.bn_first_conv": True, "model.l2_first_conv": 0.0,
              "model.bn_momentum": 0.9, "train.verbose": 0, "augment.enabled": False},
    "params": {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "model.conv_dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "model.kernel_size": {"type": "categorical", "choices": [3, 5]},
        "train.batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    },
}


def study(folder: Path, name: str, sampler: dict, pruner: dict, trials: int, epochs: int, samples: int,
          prune_on: str = "val_accuracy") -> dict:
    """Run one study of ``trials`` through the framework; its best value, epochs consumed and trial states."""
    from fer_ablate.tuning.study import StudyRequest, run_study

    space = {**SPACE, "name": name, "sampler": sampler, "pruner": pruner, "epochs": epochs, "prune_on": prune_on,
             "fixed": {**SPACE["fixed"], "data.synthetic_samples": samples}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{folder / 'optuna.db'}"
    start = time.perf_counter()
    summary = run_study(StudyRequest(str(path), n_trials=trials, storage=storage))
    minutes = (time.perf_counter() - start) / 60
    done = optuna.load_study(study_name=name, storage=storage).get_trials()
    epochs_used = sum(len(t.intermediate_values) for t in done)
    return {"best": summary.get("best_value", float("nan")), "epochs": epochs_used, "states": summary["states"],
            "minutes": minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--pruner", choices=["median", "successive_halving", "hyperband"], default="median")
    parser.add_argument("--warmup", type=int, default=1, help="median pruner: epochs before pruning starts")
    parser.add_argument("--startup", type=int, default=3, help="median pruner: trials before pruning starts")
    parser.add_argument("--reduction", type=int, default=3, help="successive halving / Hyperband reduction factor")
    parser.add_argument("--seed", type=int, default=0, help="both samplers' seed")
    parser.add_argument("--min-resource", type=int, default=1, help="successive halving / Hyperband first rung")
    parser.add_argument("--tpe-startup", type=int, default=4, help="TPE: random trials before modelling")
    parser.add_argument("--prune-on", default="val_accuracy", choices=["val_accuracy", "val_loss"],
                        help="the per-epoch signal the pruner sees (the objective stays val_accuracy)")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("pruning")
    pruner = {"type": args.pruner}
    if args.pruner == "median":
        pruner |= {"n_startup_trials": args.startup, "n_warmup_steps": args.warmup}
    else:
        pruner |= {"min_resource": args.min_resource, "reduction_factor": args.reduction}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        random = study(Path(tmp), "random_unpruned", {"type": "random", "seed": args.seed}, {"type": "none"},
                       args.trials, args.epochs, args.samples)
        tpe = study(Path(tmp), "tpe_pruned", {"type": "tpe", "seed": args.seed, "n_startup_trials": args.tpe_startup},
                    pruner, args.trials, args.epochs, args.samples, args.prune_on)
    print(f"{args.trials} trials x up to {args.epochs} epochs, synthetic n={args.samples}, pruner {pruner}, "
          f"TPE n_startup_trials={args.tpe_startup}, pruning on {args.prune_on}, sampler seed {args.seed}")
    for label, result in (("random, no pruning", random), (f"TPE + {args.pruner}", tpe)):
        print(f"{label}: best val_accuracy {result['best']:.4f}, epochs {result['epochs']}, {result['states']}, "
              f"{result['minutes']:.1f} min")
    print(f"difference {100 * (tpe['best'] - random['best']):+.1f} points with "
          f"{100 * tpe['epochs'] / max(random['epochs'], 1):.0f}% of the epochs")


if __name__ == "__main__":
    main()
