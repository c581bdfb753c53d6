"""Names users choose, end to end (issue 15 item 12): a name with ' or non-ASCII letters runs, resumes and
reports; a name that would climb out of reports/ or split into folders is refused in one line before any
MLflow run is recorded.

The resume checks prove the MLflow filter strings work: with the name pasted between single quotes (as
before ``tracking.tag_filter``) the search for ``exp'é`` is a syntax error, and a resumed grid or study would
not find its finished runs.
"""

from __future__ import annotations

import json
import shlex
import unicodedata
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT, TINY, shrink
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.cli import main
from fer_ablate.config.settings import ConfigError
from fer_ablate.paths import reports_dir
from fer_ablate.tuning.study import StudyRequest, run_study

GRID_NAME = "exp'é"  # the NFC form: the file below is named in NFD, as macOS stores it
STEP = "base'é"


def _experiment_file(folder: Path, file_stem: str, name: str | None = None, step: str = STEP,
                     factors: dict | None = None) -> Path:
    """A 1-run sequence grid (one step, one seed) on the TINY config; ``factors`` makes it one_at_a_time."""
    body: dict = {"description": "names wiring", "base": "paper", "seeds": [1], "fixed": dict(TINY)}
    if name is not None:
        body["name"] = name
    if factors:
        body.update(design="one_at_a_time", factors=factors)
    else:
        body.update(design="sequence", steps=[{"name": step, "variant": "paper"}])
    path = folder / f"{file_stem}.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _all_runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=50000)


def _outcome(stdout: str) -> dict:
    """The grid outcome JSON that ``fer-ablate ablate`` prints before its ``report:`` line."""
    return json.loads(stdout.split("\nreport:")[0])


def test_grid_named_with_quote_and_accent_runs_resumes_and_reports(tmp_path, capsys):
    path = _experiment_file(tmp_path, unicodedata.normalize("NFD", GRID_NAME))
    assert main(["ablate", "--experiment", str(path)]) == 0
    first = _outcome(capsys.readouterr().out)
    assert (first["total"], first["finished"], first["failed"], first["skipped"]) == (1, 1, 0, 0)
    ids = [e.experiment_id for e in MlflowClient().search_experiments()]
    query = tracking.tag_filter({"fer_ablate_kind": "ablation-child", "fer_ablate_name": GRID_NAME})
    children = MlflowClient().search_runs(ids, query)
    assert [(c.data.tags["run_label"], c.info.status) for c in children] == [(STEP, "FINISHED")]

    # Same command again: the parent and its finished child are found by name, so nothing runs.
    assert main(["ablate", "--experiment", str(path)]) == 0
    out = capsys.readouterr().out
    again = _outcome(out)
    assert again["parent_run_id"] == first["parent_run_id"] and (again["skipped"], again["finished"]) == (1, 0)
    assert len(MlflowClient().search_runs(ids, query)) == 1

    # The report lands in reports/<NFC name>/, inside the reports folder, with the step's confusion matrix.
    folder = Path(out.split("report: ")[1].strip()).parent
    root = reports_dir().resolve()
    assert folder == root / GRID_NAME and folder.parent == root
    assert (folder / "report.md").read_text().count(STEP) >= 1
    assert (folder / f"confusion_{STEP}.png").is_file()


@pytest.mark.parametrize(("stem", "name", "extra", "shown", "problem"), [
    ("escape", "../escape", {}, "experiment file name '../escape'", "holds /"),
    ("split", "a/b", {}, "experiment file name 'a/b'", "holds /"),
    ("hidden", "..", {}, "experiment file name '..'", r"starts with '\.'"),
    ("step", None, {"step": "../s"}, "step name '../s'", "holds /"),
    ("level", None, {"factors": {"k": {"k3": {"model.kernel_size": 3}, "a/b": {"model.kernel_size": 5}}}},
     "level name 'a/b'", "holds /"),
])
def test_bad_names_in_an_experiment_file_are_refused_before_any_run(tmp_path, capsys, stem, name, extra,
                                                                     shown, problem):
    path = _experiment_file(tmp_path, stem, name, **extra)
    before = len(_all_runs())
    assert main(["ablate", "--experiment", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own first-use lines
    assert "\n" not in err and err.startswith(f"fer-ablate: error: {path}") and shown in err
    assert problem.replace("\\", "") in err
    assert len(_all_runs()) == before


def test_bad_variant_experiment_and_study_names_are_refused(tmp_path, capsys, monkeypatch):
    before = len(_all_runs())
    variants = tmp_path / "variants.yaml"
    variants.write_text("../up: {description: x, overrides: {train.epochs: 1}}\n")
    assert main(["train", "--variant-file", str(variants), "--variant", "../up"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own first-use lines
    assert err == (f"fer-ablate: error: {variants}: variant name '../up' holds / (names become file names and "
                   "MLflow search values): use letters, digits, spaces, - _ . ' # and the like")

    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    assert main(["train", "--experiment-name", "../x", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own first-use lines
    assert "\n" not in err and "MLflow experiment (--experiment-name) name '../x' holds /" in err

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team/x")
    assert main(["train", *sets]) == 2
    assert "MLflow experiment ($MLFLOW_EXPERIMENT_NAME) name 'team/x' holds /" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")

    storage = tmp_path / "optuna.db"
    with pytest.raises(ConfigError, match=r"^study name '\.\./s' holds /"):
        run_study(StudyRequest(_space(tmp_path, "fine"), n_trials=1, storage=f"sqlite:///{storage}",
                               study_name="../s"))
    assert not storage.exists()  # refused before the storage was opened
    assert len(_all_runs()) == before


def _space(tmp_path: Path, name: str) -> str:
    """The smoke search space renamed, 1 epoch, no pruner (as tests/test_tuning.py builds it)."""
    text = shrink((PROJECT / "search_spaces" / "smoke.yaml").read_text()).replace("name: smoke", f'name: "{name}"')
    text = text.replace("pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: {type: none}")
    path = tmp_path / "space.yaml"
    path.write_text(text.replace("epochs: 2", "epochs: 1"), encoding="utf-8")
    return str(path)


def test_study_named_with_quote_creates_resumes_and_reports(tmp_path):
    name = "it's-é"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = run_study(StudyRequest(_space(tmp_path, name), n_trials=1, storage=storage))
    assert first["study"] == name and first["states"]["COMPLETE"] == 1

    # Same name again: the study and its MLflow parent are found (a quoted filter), one more trial runs.
    second = run_study(StudyRequest(_space(tmp_path, name), n_trials=2, storage=storage))
    assert second["trials"] == 2
    ids = [e.experiment_id for e in MlflowClient().search_experiments()]
    parents = MlflowClient().search_runs(ids, tracking.tag_filter({"fer_ablate_kind": "study",
                                                                   "fer_ablate_name": name}))
    trials = MlflowClient().search_runs(ids, tracking.tag_filter({"fer_ablate_kind": "study-child",
                                                                  "fer_ablate_name": name}))
    assert len(parents) == 1 and len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}

    # The best variant is written under reports/tuning/<name>/ and its header is a command a shell can run.
    best = Path(second["best_variant_file"])
    assert best.parent == reports_dir().resolve() / "tuning" / name
    header = best.read_text(encoding="utf-8").splitlines()[0]
    assert shlex.split(header.removeprefix("# ")) == ["fer-ablate", "train", "--variant-file", str(best),
                                                        "--variant", f"{name}_best"]

    # tune-report finds the same study and parent again, and ends that parent FINISHED (not a new run).
    assert main(["tune-report", "--study-name", name, "--storage", storage]) == 0
    again = MlflowClient().search_runs(ids, tracking.tag_filter({"fer_ablate_kind": "study", "fer_ablate_name": name}))
    assert [r.info.run_id for r in again] == [parents[0].info.run_id] and again[0].info.status == "FINISHED"


def test_tune_report_refuses_a_bad_study_name_before_any_run(tmp_path, capsys):
    before = len(_all_runs())
    assert main(["tune-report", "--study-name", "../s", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]) == 2
    assert "study name '../s'" in capsys.readouterr().err
    assert len(_all_runs()) == before
