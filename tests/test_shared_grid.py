"""Several machines share one grid through PostgreSQL: 2 worker processes, each run taken exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from conftest import PROJECT
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fer_ablate.runs.shared_queue import StorageError, open_rdb_storage


def test_two_workers_split_the_grid_exactly_once(postgres, tmp_path):
    optuna_url, mlflow_url = postgres("optuna_grid"), postgres("mlflow_grid")
    text = (PROJECT / "experiments" / "smoke.yaml").read_text().replace("name: smoke", "name: smoke_shared")
    path = tmp_path / "smoke_shared.yaml"
    path.write_text(text.replace("seeds: [1, 2]", "seeds: [1, 2, 3]"))
    # Create both schemas once, as the first machine of a new deployment does.
    open_rdb_storage(optuna_url)
    MlflowClient(mlflow_url).search_experiments()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    cmd = [sys.executable, "-m", "fer_ablate.cli", "ablate", "--experiment", str(path), "--storage", optuna_url]
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    done = [json.loads(out[out.index("{"):])["finished"] for out, _ in outputs]
    assert sum(done) == 6 and all(n >= 1 for n in done), done

    client = MlflowClient(mlflow_url)
    ids = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(ids, "tags.fer_ablate_kind = 'ablation-child' and "
                                       "tags.fer_ablate_name = 'smoke_shared'")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["child_key"] for c in children}) == 6
    studies = [s.study_name for s in optuna.get_all_study_summaries(optuna_url)]
    assert studies == ["ablation:smoke_shared:r0"]
    trials = optuna.load_study(study_name=studies[0], storage=optuna_url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len({t.user_attrs["run_key"] for t in complete}) == 6


@pytest.mark.parametrize("url,message", [("not-a-url", "not a database URL"),
                                         ("postgresql://nobody@127.0.0.1:9/x", "cannot be used")])
def test_bad_storage_fails_before_any_run(url, message):
    with pytest.raises(StorageError, match=message):
        open_rdb_storage(url)
