"""Reports read tracked runs only: built here from runs written straight into a real MLflow store.

No training: each test writes the parent and child runs a grid or a k-fold run would leave (tags, metrics,
``run_list.json``, ``fold_runs.json``), then builds the report from them.
"""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from fer_ablate import tracking
from fer_ablate.data import CLASS_NAMES
from fer_ablate.reports.grid_report import collect, effect_table, recall_title, write_report
from fer_ablate.reports.kfold_report import write_kfold_report
from fer_ablate.reports.stats import paired_effect


@pytest.fixture
def mlflow_experiment(monkeypatch, request):
    """A fresh MLflow experiment chosen the way every command chooses it: MLFLOW_EXPERIMENT_NAME."""
    name = f"reports-{request.node.name}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return tracking.configure()


def _run(client, experiment_id, name, tags, metrics=None, parent=None):
    nest = {"mlflow.parentRunId": parent} if parent else {}
    run_id = client.create_run(experiment_id, run_name=name, tags={**tags, **nest}).info.run_id
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _grid(client, experiment_id, name, digests, tags=None, metrics=None):
    """A finished grid: base ``paper`` and ``kernel5``, seeds 1 and 2; ``digests[(label, seed)]`` = data;
    ``tags``/``metrics`` ``[(label, seed)]``: more of them on that child (e.g. what training records)."""
    plan = {"name": name, "description": "", "design": "one_at_a_time", "base": "paper", "seeds": [1, 2],
            "runs": [{"label": label, "seed": seed, "key": f"{label}|{seed}", "levels": {"model": label}}
                     for label in ("paper", "kernel5") for seed in (1, 2)]}
    parent = _run(client, experiment_id, name, {"fer_ablate_kind": "ablation", "fer_ablate_name": name})
    client.log_text(parent, json.dumps(plan), "run_list.json")
    ids = {}
    for item in plan["runs"]:
        label, seed = item["label"], item["seed"]
        ids[label, seed] = _run(client, experiment_id, f"{label} · seed {seed}", {
            "fer_ablate_kind": "ablation-child", "fer_ablate_name": name, "run_label": label, "seed": str(seed),
            "child_key": item["key"], "data_digest": digests[label, seed], **(tags or {}).get((label, seed), {})},
            {"val_accuracy": 0.5 + 0.01 * seed + (0.03 if label == "kernel5" else 0.0), "test_accuracy": 0.5,
             **(metrics or {}).get((label, seed), {})}, parent)
    return parent, ids


def test_grid_report_refuses_to_pair_runs_on_different_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    digests = {("paper", 1): "aaa", ("paper", 2): "aaa", ("kernel5", 1): "aaa", ("kernel5", 2): "bbb"}
    _, ids = _grid(client, mlflow_experiment, "mixed", digests)
    folder = write_report("mixed", out_dir=tmp_path)
    markdown = (folder / "report.md").read_text()
    assert "did not all train on the same data" in markdown
    assert "data digest bbb: kernel5 seed 2" in markdown
    refusal = next(line for line in markdown.splitlines() if "not paired" in line)
    assert ids["kernel5", 2] in refusal and ids["paper", 2] in refusal and "aaa" in refusal and "bbb" in refusal
    effect_row = next(line for line in markdown.splitlines() if line.startswith("| kernel5 | paper |"))
    assert effect_row.split("|")[3].strip() == "1"  # only seed 1 was paired
    page = (folder / "report.html").read_text()
    assert page.count("<table") == 2 and "<pre>" not in page and "<th>val acc %</th>" in page


def test_grid_report_pairs_every_seed_on_one_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    _grid(client, mlflow_experiment, "same", dict.fromkeys([("paper", 1), ("paper", 2), ("kernel5", 1),
                                                            ("kernel5", 2)], "aaa"))
    markdown = (write_report("same", out_dir=tmp_path) / "report.md").read_text()
    assert "not paired" not in markdown and "same data" not in markdown
    assert "Read this first" not in markdown and "degenerate" not in markdown  # older runs: no tags, no warning
    assert next(line for line in markdown.splitlines() if line.startswith("| kernel5 | paper |")).split("|")[3] \
        .strip() == "2"


def test_kfold_report_refuses_to_pair_variants_on_different_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    group = _run(client, mlflow_experiment, "grp", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "grp"})
    for label, digest, shift in (("paper", "aaa", 0.0), ("kernel5", "bbb", 0.02), ("layers10", "aaa", 0.01)):
        _run(client, mlflow_experiment, label, {
            "fer_ablate_kind": "kfold", "fer_ablate_name": label, "kfold_group_run": group, "kfold_k": "2",
            "kfold_folds": "f00", "data_digest": digest},
            {"fold0_val_accuracy": 0.5 + shift, "fold1_val_accuracy": 0.52 + shift}, group)
    folder = write_kfold_report("grp", out_dir=tmp_path)
    markdown = (folder / "report.md").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in markdown.splitlines()
            if line.startswith("| ") and " | " in line}
    assert "not paired: different data" in rows["kernel5", "paper"] and "bbb" in rows["kernel5", "paper"]
    assert "not paired" not in rows["layers10", "paper"]
    assert "<table" in (folder / "report.html").read_text()


def test_report_looks_in_the_rules_mlflow_experiment_and_says_where_else(monkeypatch, tmp_path):
    """A grid recorded in another MLflow experiment (e.g. `mlflow run` without --experiment-name) is not
    read silently; the error names the experiment searched and how to point at the other one."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reports-elsewhere")
    elsewhere = tracking.configure()
    _grid(MlflowClient(), elsewhere, "lost", dict.fromkeys([("paper", 1), ("paper", 2), ("kernel5", 1),
                                                           ("kernel5", 2)], "aaa"))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reports-here")
    tracking.configure()
    with pytest.raises(tracking.TrackingError, match="'reports-here'.*MLFLOW_EXPERIMENT_NAME='reports-elsewhere'"):
        write_report("lost", out_dir=tmp_path)
    with pytest.raises(tracking.TrackingError, match="no ablation run named 'never'.*fer-ablate ablate"):
        write_report("never", out_dir=tmp_path)
    _run(MlflowClient(), elsewhere, "grp", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "lost_grp"})
    with pytest.raises(tracking.TrackingError, match="kfold-group run named 'lost_grp'.*'reports-elsewhere'"):
        write_kfold_report("lost_grp", out_dir=tmp_path)
    with pytest.raises(tracking.TrackingError, match="no kfold run named 'never'.*fer-ablate kfold --variant never"):
        write_kfold_report("never", out_dir=tmp_path)


ONLY_HAPPY = {f"val_recall_{c}": 1.0 if c == "happy" else 0.0 for c in CLASS_NAMES}
LEARNED = {f"val_recall_{c}": r for c, r in zip(CLASS_NAMES, (0.55, 0.2, 0.35, 0.85, 0.6, 0.5, 0.75), strict=True)}


def test_grid_report_says_which_runs_are_degenerate_or_synthetic(mlflow_experiment, tmp_path):
    """Runs tagged by training as degenerate, and runs on synthetic faces, are named above the tables."""
    keys = [("paper", 1), ("paper", 2), ("kernel5", 1), ("kernel5", 2)]
    tags = {key: {"data_source": "synthetic", "degenerate": "false", "degenerate_reason": ""} for key in keys}
    for key in (("kernel5", 1), ("paper", 2)):
        tags[key] = {"data_source": "synthetic", "degenerate": "true",
                     "degenerate_reason": "predicts only 'happy' on validation (30 of 30 images)"}
    metrics = {key: {"epochs_run": 1, **(ONLY_HAPPY if tags[key]["degenerate"] == "true" else LEARNED)}
               for key in keys}
    _grid(MlflowClient(), mlflow_experiment, "toy", dict.fromkeys(keys, "aaa"), tags, metrics)
    markdown = (write_report("toy", out_dir=tmp_path) / "report.md").read_text()
    lines = markdown.splitlines()
    first = lines.index("## Read this first")
    assert first < next(i for i, line in enumerate(lines) if line.startswith("| variant |"))  # above the tables
    assert lines[first + 2].startswith("- Warning: 2 of 4 runs are degenerate")
    assert "- Warning: kernel5 · seed 1: predicts only 'happy' on validation (30 of 30 images)" in lines
    assert "- Warning: paper · seed 2: predicts only 'happy' on validation (30 of 30 images)" in lines
    assert not any("paper · seed 1:" in line or "kernel5 · seed 2:" in line for line in lines)
    assert ("- These 4 runs trained on the built-in synthetic faces for 1 epoch: a check of the machinery, "
            "not a result about FER.") in lines
    # Per-class recall: said from the numbers, per variant.
    assert "- kernel5: lowest recall: disgust 10%, fear 18%; highest: happy 92%" in lines


def test_recall_title_comes_from_the_numbers(mlflow_experiment, tmp_path):
    """A grid whose model predicts only 'happy': the title names that, not "disgust and fear" in advance."""
    keys = [("paper", 1), ("paper", 2), ("kernel5", 1), ("kernel5", 2)]
    _grid(MlflowClient(), mlflow_experiment, "happy", dict.fromkeys(keys, "aaa"),
          metrics=dict.fromkeys(keys, ONLY_HAPPY))
    _, _, variants = collect("happy")
    title = recall_title(variants)
    assert title == ("per-class validation recall (mean over seeds and 2 variants): recall 0% for 6 of 7 classes "
                     "(angry, disgust, fear, neutral, sad, surprise); recalled: happy 100%")
    _grid(MlflowClient(), mlflow_experiment, "learned", dict.fromkeys(keys, "aaa"),
          metrics=dict.fromkeys(keys, LEARNED))
    assert recall_title(collect("learned")[2]).endswith("lowest recall: disgust 20%, fear 35%; highest: happy 85%")
    markdown = (write_report("happy", out_dir=tmp_path) / "report.md").read_text()
    assert "- paper: recall 0% for 6 of 7 classes" in markdown
    assert "where FER models fail" not in markdown


def _kfold_variant(client, experiment_id, label, fold_scores, fold_tags, group=None, test_split="test", fold_of=None):
    """A k-fold parent with one finished child per fold (what ``kfold`` leaves), and its ``fold_runs.json``
    (and ``folds.json`` with ``fold_of``, the fold id of each pool image)."""
    k = len(fold_scores)
    parent = _run(client, experiment_id, label, {
        "fer_ablate_kind": "kfold", "fer_ablate_name": label, "kfold_k": str(k), "kfold_folds": "f00",
        "data_digest": "aaa", "data_source": fold_tags[0].get("data_source", "fer2013"),
        "kfold_test_split": test_split, **({"kfold_group_run": group} if group else {})},
        {f"fold{f}_val_accuracy": v for f, v in enumerate(fold_scores)}, group)
    folds = {str(f): _run(client, experiment_id, f"{label} · fold {f + 1}/{k}",
                          {"fer_ablate_kind": "kfold-child", "fer_ablate_name": label, "fold": str(f), **tags},
                          {"val_accuracy": v, "epochs_run": 1}, parent)
             for f, (v, tags) in enumerate(zip(fold_scores, fold_tags, strict=True))}
    client.log_text(parent, json.dumps(folds), "fold_runs.json")
    if fold_of is not None:
        client.log_text(parent, json.dumps({"k": k, "fold_of": fold_of}), "folds.json")
    return parent


def test_kfold_report_names_degenerate_folds_and_bounds_its_intervals(mlflow_experiment, tmp_path):
    client = MlflowClient()
    group = _run(client, mlflow_experiment, "toy", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "toy"})
    synthetic = {"data_source": "synthetic", "degenerate": "false"}
    stuck = {"data_source": "synthetic", "degenerate": "true",
             "degenerate_reason": "predicts only 'happy' on validation (30 of 30 images)"}
    _kfold_variant(client, mlflow_experiment, "paper", [0.25, 0.8], [synthetic, stuck], group)
    _kfold_variant(client, mlflow_experiment, "kernel5", [0.3, 0.7], [synthetic, synthetic], group)
    folder = write_kfold_report("toy", out_dir=tmp_path)
    lines = (folder / "report.md").read_text().splitlines()
    assert "- Warning: 1 of 4 runs is degenerate" in "\n".join(lines)
    assert "- Warning: paper · fold 2/2: predicts only 'happy' on validation (30 of 30 images)" in lines
    assert ("- These 4 runs trained on the built-in synthetic faces for 1 epoch: a check of the machinery, "
            "not a result about FER.") in lines
    # Two folds: no interval, a reason (the plain t-interval of 25% and 80% was [-33.1, 75.7]).
    row = next(line for line in lines if line.startswith("| paper | 2/2 |"))
    assert "| n = 2: too few for an interval |" in row and "-33" not in row
    assert "- kernel5 vs paper: -2.5 points from 2 pairs (n = 2: too few for an interval or a test)" in lines
    assert "Test = the held-out split (test) that no fold trains on." in "\n".join(lines)


def _row(lines, variant, against):
    return [c.strip() for c in next(line for line in lines if line.startswith(f"| {variant} | {against} |"))
            .split("|")[1:-1]]


def test_kfold_report_uses_the_corrected_resampled_t_test_and_holm(mlflow_experiment, tmp_path):
    """Three variants, three folds of 100, 101 and 99 images: the pairs are tested with Nadeau & Bengio's
    corrected t (n_test / n_train from folds.json: 300 / 600), Holm-adjusted over the 3 pairs."""
    client = MlflowClient()
    group = _run(client, mlflow_experiment, "nb", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "nb"})
    fold_of = [0] * 100 + [1] * 101 + [2] * 99
    scores = {"paper": [0.60, 0.62, 0.61], "kernel5": [0.63, 0.64, 0.66], "layers10": [0.61, 0.60, 0.63]}
    tags = [{"data_source": "fer2013", "degenerate": "false"}] * 3
    for label, values in scores.items():
        _kfold_variant(client, mlflow_experiment, label, values, tags, group, fold_of=fold_of)
    lines = (write_kfold_report("nb", out_dir=tmp_path) / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| variant | against | folds |"))
    assert "corrected t p (Nadeau-Bengio)" in header and "Holm p" in header and "paired t p (uncorrected)" in header

    def corrected_p(x, y):  # by hand: variance (1/3 + 300/600) s^2, 2 degrees of freedom
        d = [u - v for u, v in zip(scores[x], scores[y], strict=True)]
        t = (sum(d) / 3) / math.sqrt((1 / 3 + 0.5) * stats.tvar(d))
        return 2 * stats.t.sf(abs(t), 2)

    pairs = [("kernel5", "paper"), ("layers10", "paper"), ("layers10", "kernel5")]
    raw = {pair: corrected_p(*pair) for pair in pairs}
    ranked = sorted(pairs, key=raw.get)  # Holm by hand: 3x, 2x, 1x the sorted p, made non-decreasing
    holm, running = {}, 0.0
    for i, pair in enumerate(ranked):
        running = max(running, min(1.0, (3 - i) * raw[pair]))
        holm[pair] = running
    for pair in pairs:
        row = _row(lines, *pair)
        assert row[5] == f"{raw[pair]:.3g}" and row[6] == f"{holm[pair]:.3g}"
        assert row[7] == f"{stats.ttest_rel(scores[pair[0]], scores[pair[1]]).pvalue:.3g}"  # secondary column
        assert row[-1] == "0.500 (folds.json)"
    sentence = next(line for line in lines if line.startswith("- kernel5 vs paper: +3.3 points"))
    assert (f"corrected resampled t-test p = {raw[pairs[0]]:.3g}, Holm-adjusted p = {holm[pairs[0]]:.3g} over 3 folds"
            in sentence)
    assert any("Nadeau & Bengio 2003" in line for line in lines)


def test_kfold_report_of_one_pair_has_no_holm_column_and_assumes_equal_folds(mlflow_experiment, tmp_path):
    client = MlflowClient()
    group = _run(client, mlflow_experiment, "one", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "one"})
    tags = [{"data_source": "fer2013"}] * 4
    _kfold_variant(client, mlflow_experiment, "paper", [0.60, 0.62, 0.61, 0.59], tags, group)
    _kfold_variant(client, mlflow_experiment, "kernel5", [0.63, 0.64, 0.62, 0.61], tags, group)
    lines = (write_kfold_report("one", out_dir=tmp_path) / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| variant | against | folds |"))
    assert "Holm" not in header and "Holm" not in "\n".join(lines)
    assert _row(lines, "kernel5", "paper")[-1] == "0.333 (assumed 1/(k-1))"  # no folds.json: 4 equal folds


def test_grid_effect_table_adds_holm_only_for_several_effects():
    two = [("kernel5", "paper", paired_effect([0.62, 0.64, 0.63], [0.60, 0.61, 0.615])),
           ("layers10", "paper", paired_effect([0.61, 0.60, 0.63], [0.60, 0.61, 0.615]))]
    columns, rows, sentences = effect_table(two)
    assert columns[5:7] == ["paired t p", "Holm p"]
    p = [e.t_pvalue for _, _, e in two]
    holm = [min(1.0, 2 * min(p)), min(1.0, max(2 * min(p), max(p)))]  # Holm by hand for two tests
    holm = holm if p[0] <= p[1] else holm[::-1]
    assert [row[6] for row in rows] == [f"{h:.3g}" for h in holm]
    assert f"Holm-adjusted p = {holm[0]:.3g} over 3 seeds" in sentences[0]
    columns, rows, sentences = effect_table(two[:1])
    assert "Holm p" not in columns and len(rows[0]) == len(columns) and "Holm" not in sentences[0]
