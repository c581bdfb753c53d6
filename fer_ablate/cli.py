"""The ``fer-ablate`` command line: parses arguments and dispatches to plain functions."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from fer_ablate import interrupts
from fer_ablate.errors import FerAblateError
from fer_ablate.logs import configure_logging
from fer_ablate.redact import from_env, has_secret, redact_text, redact_url, url_problem


def _whole_number(text: str) -> int:
    """An integer option that also accepts MLproject's float spelling (``5.0``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _optional_int(minimum: int):
    """An int option where '' or a value below ``minimum`` means unset (MLproject's typed defaults)."""

    def parse(text: str) -> int | None:
        if text.strip() == "":
            return None
        value = _whole_number(text)
        return value if value >= minimum else None

    return parse


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Shortcut flags first, then ``--set`` (later wins); the config module validates every key."""
    from fer_ablate.config.settings import parse_set_args

    shortcuts = {"data.source": args.data, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                 "train.seed": args.seed}
    overrides = {k: v for k, v in shortcuts.items() if v not in (None, "")}
    overrides.update(parse_set_args(args.set))
    return _located_data(overrides)


def _located_data(overrides: dict[str, Any]) -> dict[str, Any]:
    """``data.source`` located (``_located``) when it is a path."""
    if isinstance(overrides.get("data.source"), str):
        overrides["data.source"] = _located(overrides["data.source"], "data file or folder")
    return overrides


_NOT_PATHS = {"auto", "synthetic"}  # data.source keywords
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")  # runs:/ID/model, models:/NAME@ALIAS, s3://..., journal:PATH


def _located(value: str | None, what: str, names: bool = False) -> str | None:
    """A relative path given on the command line, found where the user meant it; URIs, keywords and absolute
    paths unchanged. ``names``: ``value`` may also be a name looked up elsewhere (an experiment file, a search
    space): only a value with a folder or a .yaml suffix is a path then.

    Under ``mlflow run`` the command runs in the project's folder, not the user's: a relative ``-P data=...``
    or ``-P model=...`` is first looked for in the folder ``mlflow run`` was started from (as MLflow's own
    ``path`` parameter type does) and made absolute, then in the project. A path found nowhere raises
    ConfigError naming every absolute path tried.
    """
    if not value or value in _NOT_PATHS or _URI.match(value) or Path(value).expanduser().is_absolute():
        return value
    if names and "/" not in value and not value.endswith((".yaml", ".yml")):
        return value
    from fer_ablate.config.errors import ConfigError

    here = Path.cwd() / value
    caller = None
    if os.environ.get("MLFLOW_RUN_ID"):
        from fer_ablate.tracking.store import launcher_folder

        caller = launcher_folder()
    if caller is not None and caller.resolve() != Path.cwd().resolve():
        if (caller / value).exists():
            return str(caller / value)
        if here.exists():
            return value
        raise ConfigError(f"{what} {value!r} not found: neither {caller / value} (from the folder `mlflow run` was "
                          f"started in) nor {here} (the project's folder) exists; give an absolute path")
    if not here.exists():
        raise ConfigError(f"{what} {value!r} not found: {here} does not exist")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    """Train one variant as a tracked MLflow run."""
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.runs.single import train_and_track

    if args.resume:
        from fer_ablate.config.settings import ConfigError
        from fer_ablate.runs.single import resume_run

        given = [flag for flag, value in (("--variant", args.variant != "paper"), ("--set", args.set),
                                          ("--variant-file", args.variant_file), ("--run-name", args.run_name),
                                          ("--experiment-name", args.experiment_name)) if value]
        given += [flag for flag in ("--data", "--epochs", "--batch-size", "--seed")
                  if getattr(args, flag[2:].replace("-", "_")) not in (None, "")]
        if given:
            raise ConfigError(f"--resume continues run {args.resume} with its own logged config; drop "
                              f"{', '.join(given)}")
        run_id, metrics = resume_run(args.resume, tracking_uri=args.tracking_uri)
    else:
        cfg = resolve_config(args.variant, _overrides(args), variants_file=args.variant_file)
        run_id, metrics = train_and_track(cfg, experiment=args.experiment_name, run_name=args.run_name,
                                          tracking_uri=args.tracking_uri)
    print(json.dumps({"run_id": run_id, **{k: v for k, v in metrics.items() if "recall" not in k}}, indent=2))
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    """List each variant and what it changes from the paper's model."""
    from fer_ablate.config.settings import load_variants

    for name, body in load_variants(args.variant_file).items():
        changes = ", ".join(f"{k}={v}" for k, v in body["overrides"].items()) or "(the defaults)"
        print(f"{name:<14} {changes}\n{'':<14} {body['description']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved model on every split of a data source."""
    from fer_ablate.inference.score_dataset import evaluate_model, format_report

    model, data = _located(args.model, "model file"), _located(args.data, "data file or folder")
    report = evaluate_model(model, data, skip_bad_rows=args.skip_bad_rows)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Run (or resume) every run of an experiment file under one parent run."""
    from fer_ablate.config.experiment_file import expand, load_experiment_file
    from fer_ablate.config.settings import parse_set_args
    from fer_ablate.runs.grid import GridRequest, describe, run_experiment

    extra = parse_set_args(args.set)
    if args.dry_run:
        exp = load_experiment_file(args.experiment)
        print(f"{exp.name}: {exp.design}, base {exp.base}, seeds {exp.seeds}")
        print(describe(expand(exp, extra)))
        return 0
    storage = _storage_option(args.storage)
    request = GridRequest(_located(args.experiment, "experiment file", names=True), _located_data(extra),
                          workers=args.workers or 1, storage=storage)
    outcome = run_experiment(request, tracking_uri=args.tracking_uri)
    print(json.dumps(outcome.__dict__, indent=2))
    if not args.no_report and storage is None:
        from fer_ablate.reports.grid_report import write_report

        folder = write_report(args.experiment, tracking_uri=args.tracking_uri)
        print(f"report: {folder / 'report.html'}")
    return 0 if outcome.failed == 0 else 1


def cmd_kfold(args: argparse.Namespace) -> int:
    """Cross-validate a variant (or every variant of an experiment) on one stratified fold assignment."""
    from fer_ablate.runs.cross_validation import KFoldRequest, run_kfold

    request = KFoldRequest(variant=args.variant, experiment_file=args.experiment or None, folds=args.folds,
                           fold_seed=args.fold_seed, include_validation=args.include_validation,
                           fold_file=args.fold_file, overrides=_overrides(args), workers=args.workers or 1)
    outcomes = run_kfold(request, tracking_uri=args.tracking_uri)
    print(json.dumps([o.__dict__ for o in outcomes], indent=2))
    if not args.no_report:
        from fer_ablate.reports.kfold_report import write_kfold_report

        target = outcomes[0].parent_run_id if len(outcomes) == 1 else args.experiment
        folder = write_kfold_report(target, tracking_uri=args.tracking_uri)
        print(f"report: {folder / 'report.html'}")
    complete = all(o.failed == 0 and o.metrics.get("folds_finished") == o.metrics.get("folds") for o in outcomes)
    return 0 if complete else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Markdown + HTML + PNG report of an experiment's (or a k-fold run's) tracked runs, logged to its parent."""
    from fer_ablate.reports.grid_report import write_report

    if args.kfold:
        from fer_ablate.reports.kfold_report import write_kfold_report

        folder = write_kfold_report(args.kfold, out_dir=args.out, tracking_uri=args.tracking_uri)
    else:
        folder = write_report(args.experiment, out_dir=args.out, tracking_uri=args.tracking_uri)
    print(f"report: {folder / 'report.md'}\n        {folder / 'report.html'}")
    from fer_ablate import tracking

    tracking.log_runs_table()  # the store the report just read, and the MLflow experiment its rule picks
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Create or resume an Optuna study over a search-space file."""
    from fer_ablate.config.settings import parse_set_args
    from fer_ablate.tuning.study import StudyRequest, run_study

    _refuse_recorded_secret("storage")
    request = StudyRequest(_located(args.space, "search-space file", names=True), n_trials=args.n_trials,
                           timeout=args.timeout, storage=args.storage or None, study_name=args.study_name,
                           workers=args.workers or 1, overrides=_located_data(parse_set_args(args.set)))
    summary = run_study(request, tracking_uri=args.tracking_uri)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_tune_report(args: argparse.Namespace) -> int:
    """Log a study's best trial, plots and best variant to its parent run (again)."""
    from fer_ablate import tracking
    from fer_ablate.config.names import safe_name
    from fer_ablate.tuning.study import KIND, default_storage, open_storage
    from fer_ablate.tuning.study_report import report_study

    study_name = safe_name(args.study_name, "study")  # before any run is opened under that name
    storage = open_storage(args.storage or default_storage())
    ctx = tracking.open_context(tracking_uri=args.tracking_uri)
    # The study's workers may still run elsewhere: their trial runs are not ours to end.
    with tracking.parent_run(ctx, KIND, study_name, own_children=False) as parent:
        summary = report_study(study_name, storage, parent.run_id)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Register a run's model (as a photo model) and move the alias to it."""
    from fer_ablate.config.errors import ConfigError
    from fer_ablate.inference.registered import best_grid_run, promote

    if (args.run_id is None) == (args.best_of is None):
        raise ConfigError("promote needs a RUN_ID or --best-of EXPERIMENT (one of them)")
    run_id = args.run_id
    if args.best_of:
        run_id, line = best_grid_run(args.best_of, tracking_uri=args.tracking_uri)
        print(line)
    version = promote(run_id, name=args.name, alias=args.alias, tracking_uri=args.tracking_uri)
    print(f"registered {args.name} version {version.version}; models:/{args.name}@{args.alias} -> version "
          f"{version.version}")
    return 0


def cmd_serving_request(args: argparse.Namespace) -> int:
    """The JSON body of a request to the served photo model, from photo files (post it with curl -d @FILE)."""
    from fer_ablate.inference.serving_input import write_request

    write_request(args.photos, out=args.output, tta=args.tta, crops=args.crops)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Faces and emotions in photos, folders and videos."""
    from fer_ablate.inference.predict import predict_paths
    from fer_ablate.inference.registered import load_classifier

    classifier = load_classifier(args.model, tta=args.tta, equalize=args.equalize, tracking_uri=args.tracking_uri)
    # Without --out each record is printed as it is made, so an interrupted run keeps what it printed.
    records = predict_paths(classifier, args.inputs, out_dir=args.out, every=args.every, crops=args.crops,
                            fmt=args.format, on_record=None if args.out else lambda r: print(json.dumps(r), flush=True))
    if args.out:
        faces = sum(r["face"] is not None for r in records)
        print(f"{faces} face(s) in {len({r['file'] for r in records})} file(s): {args.out}/predictions.{args.format}")
    return 0 if all(not str(r["message"]).startswith("error") for r in records) else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine is and what training will use: backend, devices, precision, tracking store, data."""
    from fer_ablate.data import DataError
    from fer_ablate.data.loading import resolve_source
    from fer_ablate.paths import default_tracking_uri
    from fer_ablate.tracking import TrackingError, check_reachable
    from fer_ablate.training.hardware import current_machine, format_machine

    print(format_machine(current_machine()))
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_reachable(uri)
        print(f"tracking:  {redact_url(uri)} (reachable)")
    except TrackingError as exc:
        print(f"tracking:  {redact_url(uri)} (NOT reachable: {exc})")
    try:
        source = resolve_source("auto")
        print(f"data:      data=auto -> {source}" + (" (no FER2013 found: built-in synthetic faces; put "
                                                         "fer2013.csv[.gz] in data/ or set $FER_DATA)"
                                                         if source == "synthetic" else ""))
    except DataError as exc:
        print(f"data:      data=auto -> error: {exc}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List registered model builders."""
    from fer_ablate.models import list_models

    print("\n".join(list_models(args.pattern)))
    return 0


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """Options several commands share, each declared once (argparse parent parsers, given by ``parents=``)."""
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override any setting (in every run or trial), e.g. --set model.kernel_size=5 "
                                "(repeatable; later wins)")

    # train and kfold: shortcuts for --set data.source, train.epochs, train.batch_size, train.seed (_overrides)
    shortcuts = argparse.ArgumentParser(add_help=False)
    shortcuts.add_argument("--data", default=None, help="auto | synthetic | FER2013 CSV(.gz) | image-folder root")
    shortcuts.add_argument("--epochs", type=_optional_int(minimum=1), default=None,
                           help="default: the variant's own (0 also means that)")
    shortcuts.add_argument("--batch-size", type=_optional_int(minimum=1), default=None)
    shortcuts.add_argument("--seed", type=_optional_int(minimum=0), default=None,
                           help="training seed (kfold: of every fold); default: the variant's own (a negative "
                                "value also means that)")
    return {"tracking": tracking, "overrides": overrides, "shortcuts": shortcuts}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="fer-ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    shared = _shared_options()
    tracking, overrides, shortcuts = shared["tracking"], shared["overrides"], shared["shortcuts"]

    train = sub.add_parser("train", help="train one variant as a tracked MLflow run",
                           parents=[shortcuts, overrides, tracking])
    train.add_argument("--variant", default="paper", help="variant name (see `fer-ablate variants`)")
    train.add_argument("--variant-file", default=None, help="YAML file of variants (default: the built-in)")
    train.add_argument("--experiment-name", default=None,
                       help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else fer-ablate)")
    train.add_argument("--run-name", default=None)
    train.add_argument("--resume", default=None, metavar="RUN_ID",
                       help="continue a KILLED (or FAILED) run in place from its last epoch's checkpoint, with the "
                            "config it logged")
    train.set_defaults(func=cmd_train)

    variants = sub.add_parser("variants", help="list variants and what each changes")
    variants.add_argument("--variant-file", default=None)
    variants.set_defaults(func=cmd_variants)

    evaluate = sub.add_parser("evaluate", help="evaluate a model on every split of a data file")
    evaluate.add_argument("--model", required=True, help="MLflow model URI (runs:/ID/model) or a .keras file")
    evaluate.add_argument("--data", default="auto")
    evaluate.add_argument("--skip-bad-rows", action="store_true")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_evaluate)

    ablate = sub.add_parser("ablate", help="run every run of an experiment (resumable grid)",
                            parents=[overrides, tracking])
    ablate.add_argument("--experiment", required=True, help="name in experiments/ or a YAML path")
    ablate.add_argument("--dry-run", action="store_true", help="print the expanded run list and exit")
    ablate.add_argument("--workers", type=_optional_int(minimum=1), default=1,
                        help="runs in parallel, each in its own process")
    ablate.add_argument("--storage", default=None,
                        help="Optuna RDB URL (postgresql://...) shared by several machines running this grid")
    ablate.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    ablate.set_defaults(func=cmd_ablate)

    kfold = sub.add_parser("kfold", help="k-fold cross-validation of a variant or of an experiment's variants",
                           parents=[shortcuts, overrides, tracking])
    kfold.add_argument("--variant", default="paper")
    kfold.add_argument("--experiment", default=None, help="every variant of this experiment, on the same folds")
    kfold.add_argument("--folds", type=_whole_number, default=5,
                       help="k: at least 2, at most the rarest class's count")
    kfold.add_argument("--fold-seed", type=_whole_number, default=0, help="seed of the stratified fold assignment")
    kfold.add_argument("--fold-file", default=None, help="reuse a saved folds.json (checked against the data)")
    kfold.add_argument("--include-validation", action="store_true",
                       help="pool the validation split (FER2013 PublicTest) with train before folding")
    kfold.add_argument("--workers", type=_optional_int(minimum=1), default=1, help="folds in parallel processes")
    kfold.add_argument("--no-report", action="store_true")
    kfold.set_defaults(func=cmd_kfold)

    report = sub.add_parser("report", help="report an experiment against the 66%% and 71.2%% baselines",
                            parents=[tracking])
    target = report.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment")
    target.add_argument("--kfold", help="k-fold group or variant: a parent run id, or an experiment/variant name")
    report.add_argument("--out", default=None, help="folder (default: reports/<experiment>/)")
    report.set_defaults(func=cmd_report)

    tune = sub.add_parser("tune", help="tune hyperparameters with Optuna (resumable, tracked)",
                          parents=[overrides, tracking])
    tune.add_argument("--space", required=True, help="name in search_spaces/ or a YAML path")
    tune.add_argument("--n-trials", type=_optional_int(minimum=1), default=20,
                      help="finished trials wanted in the study (all workers together)")
    tune.add_argument("--timeout", type=float, default=None, help="seconds per worker")
    tune.add_argument("--storage", default=None,
                      help="sqlite:///FILE (default optuna.db beside the MLflow store), journal:PATH, or postgresql://...")
    tune.add_argument("--study-name", default=None, help="default: the space's name; same name = resume")
    tune.add_argument("--workers", type=_optional_int(minimum=1), default=1, help="worker processes on this host")
    tune.set_defaults(func=cmd_tune)

    tune_report = sub.add_parser("tune-report", help="best trial, Optuna plots and best variant of a study",
                                 parents=[tracking])
    tune_report.add_argument("--study-name", required=True)
    tune_report.add_argument("--storage", default=None)
    tune_report.set_defaults(func=cmd_tune_report)

    promote = sub.add_parser("promote", help="register a run's model and point the 'champion' alias at it",
                             parents=[tracking])
    promote.add_argument("run_id", nargs="?", default=None, help="the run whose model to register")
    promote.add_argument("--best-of", default=None, metavar="EXPERIMENT",
                         help="instead of RUN_ID: the grid run of this experiment file with the best val_accuracy")
    promote.add_argument("--name", default="fer-ablate", help="registered model name")
    promote.add_argument("--alias", default="champion")
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser("predict", help="faces and emotions in photos, folders and videos", parents=[tracking])
    predict.add_argument("inputs", nargs="+", help="images, videos or folders of them")
    predict.add_argument("--model", default="models:/fer-ablate@champion",
                         help="models:/NAME@ALIAS, runs:/ID/model or a .keras file")
    predict.add_argument("--out", default=None, help="folder for predictions, annotated images and timelines")
    predict.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    predict.add_argument("--every", type=int, default=5, help="videos: one frame in N")
    predict.add_argument("--crops", action="store_true", help="the images already are face crops")
    predict.add_argument("--tta", action="store_true", help="average with the mirrored face")
    predict.add_argument("--equalize", action="store_true", help="histogram-equalise each face crop")
    predict.set_defaults(func=cmd_predict)

    request = sub.add_parser("serving-request", help="write the JSON body of a request to the served photo model")
    request.add_argument("photos", nargs="+", metavar="PHOTO", help="image files, one request row each")
    request.add_argument("--tta", action="store_true", help="ask the server to average with the mirrored face")
    request.add_argument("--crops", action="store_true", help="the images already are face crops")
    request.add_argument("-o", "--output", default=None, help="write the body to this file (default: stdout)")
    request.set_defaults(func=cmd_serving_request)

    doctor = sub.add_parser("doctor", help="this machine: backend, devices, precision auto picks, tracking, data",
                            parents=[tracking])
    doctor.set_defaults(func=cmd_doctor)

    models = sub.add_parser("models", help="list registered model builders")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)
    return parser


def _storage_option(value: str | None) -> str | None:
    """``--storage`` of ``ablate``: ``env:NAME`` read from the environment; a password with an unencoded '@'
    refused (StorageError) before SQLAlchemy blames DNS and prints part of it."""
    from fer_ablate.runs.shared_queue import StorageError

    try:
        value = from_env(value) or None
    except LookupError as exc:
        raise StorageError(f"storage {exc}") from None
    problem = url_problem(value or "")
    if problem:
        raise StorageError(f"storage: {problem}")
    return value


def _refuse_recorded_secret(param: str) -> None:
    """Under ``mlflow run``: refuse an MLproject parameter that holds a password, which MLflow has recorded
    in the run's params before this process started (params cannot be changed afterwards), with the way
    out: the URL in an environment variable (``-P storage=env:FER_ABLATE_STORAGE``). Raises ConfigError."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    from fer_ablate.tracking.store import launcher_run_params

    value = launcher_run_params().get(param, "")
    if not has_secret(value):
        return
    from fer_ablate.config.errors import ConfigError

    run_id = os.environ["MLFLOW_RUN_ID"]
    raise ConfigError(
        f"the MLproject parameter {param}={redact_url(value)} holds a password, and `mlflow run` has recorded it "
        f"in run {run_id}'s params: delete that run for good (mlflow runs delete --run-id {run_id}; mlflow gc "
        f"--run-ids {run_id}) and pass the URL through the environment instead: export "
        f"FER_ABLATE_STORAGE='<the URL>'; mlflow run . -e tune -P {param}=env:FER_ABLATE_STORAGE")


def _absolute_store_env() -> None:
    """``MLFLOW_TRACKING_URI=sqlite:///mlflow.db`` (relative) made absolute for this process and its workers:
    relative to the folder ``mlflow run`` was started from, whose launcher already wrote its run there, else
    to the working directory (``tracking.store.absolute_store_uri``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and not uri.startswith(("sqlite:////", "sqlite:///:memory:")):
        from fer_ablate.tracking.store import absolute_store_uri

        os.environ["MLFLOW_TRACKING_URI"] = absolute_store_uri(uri)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fer-ablate`` console script: parse, dispatch, and turn a user-fixable error
    (any FerAblateError) into one line on stderr and its kind's exit code (see fer_ablate.errors)."""
    configure_logging()
    # Ctrl-C and SIGTERM end runs KILLED, and never land inside a store write (see fer_ablate.interrupts).
    previous_handlers = interrupts.install()
    args = build_parser().parse_args(argv)
    try:
        _absolute_store_env()
        return args.func(args)
    except FerAblateError as exc:  # secrets hidden here too: the last line of defence (fer_ablate.redact)
        print(f"fer-ablate: error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception:  # a bug: its traceback, with every password hidden (drivers quote URLs in messages)
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        return 1
    except KeyboardInterrupt:
        print("fer-ablate: interrupted", file=sys.stderr)
        return 130
    finally:
        interrupts.restore(previous_handlers)

if __name__ == "__main__":
    sys.exit(main())
