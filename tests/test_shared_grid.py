"""Several machines share one grid through PostgreSQL: 2 worker processes, each run taken exactly once, and
a run whose worker was SIGKILLed is taken by the live worker in the same round."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from types import SimpleNamespace

import optuna
import pytest
from conftest import PROJECT, shrink
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fer_ablate.runs.shared_queue import GRACE_ENV, HEARTBEAT_ENV, StorageError, open_rdb_storage, run_shared_grid


@pytest.mark.slow  # ~40 s; the default run keeps a real-PostgreSQL round below
def test_two_workers_split_the_grid_exactly_once(postgres, tmp_path):
    optuna_url, mlflow_url = postgres("optuna_grid"), postgres("mlflow_grid")
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", "name: smoke_shared")
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


def _children(client: MlflowClient, name: str) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.fer_ablate_kind = 'ablation-child' and tags.fer_ablate_name = '{name}'")


@pytest.mark.slow  # about 2 minutes (30-epoch runs, heartbeat grace); .ci/run runs the slow tests too
def test_a_killed_workers_run_is_taken_by_the_live_worker_in_the_same_round(postgres, tmp_path):
    optuna_url, mlflow_url = postgres("optuna_kill"), postgres("mlflow_kill")
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", "name: smoke_killed")
    path = tmp_path / "smoke_killed.yaml"
    # 2 runs (kernel3, kernel5; seed 1), enough epochs that the victim is surely still training when killed.
    path.write_text(text.replace("train.epochs: 1", "train.epochs: 30").replace("seeds: [1, 2]", "seeds: [1]"))
    open_rdb_storage(optuna_url)
    client = MlflowClient(mlflow_url)
    client.search_experiments()
    # A 2 s beat and a 6 s grace, so the dead worker's trial goes stale while the live worker still waits.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, HEARTBEAT_ENV: "2", GRACE_ENV: "6",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    cmd = [sys.executable, "-m", "fer_ablate.cli", "ablate", "--experiment", str(path), "--storage", optuna_url]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    # The second machine joins once the first has opened the grid's parent run. Two machines starting in the
    # same instant can each create a parent (a known race, in the session note); this test is about the queue.
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=outs[0].open("w"), stderr=logs[0].open("w"))]
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while not client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 "tags.fer_ablate_kind = 'ablation' and tags.fer_ablate_name = 'smoke_killed'"):
        assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.2)
    procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=outs[1].open("w"), stderr=logs[1].open("w")))

    def runner(run_id: str) -> int | None:
        """Which worker started this MLflow run (both share one parent run: its log names the run)."""
        found = [i for i, log in enumerate(logs) if re.search(rf"\brun {run_id}:", log.read_text())]
        return found[0] if found else None

    try:
        victim, killed = None, None
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while victim is None:
            assert time.monotonic() < deadline, "no run started"
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, f"a worker ended before the kill: {log.read_text()[-3000:]}"
            for child in _children(client, "smoke_killed"):
                if child.info.status == "RUNNING" and runner(child.info.run_id) is not None:
                    killed, victim = child, runner(child.info.run_id)
                    os.kill(procs[victim].pid, signal.SIGKILL)
                    break
            time.sleep(0.2)
        procs[victim].wait(timeout=60)
        # The kill hit a run in training: nothing can end it now but the live worker.
        assert client.get_run(killed.info.run_id).info.status == "RUNNING"
        live = 1 - victim
        assert procs[live].wait(timeout=900) == 0, logs[live].read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert procs[victim].returncode == -signal.SIGKILL
    summary = outs[live].read_text()
    assert json.loads(summary[summary.index("{"):])["finished"] == 2, summary

    # The dead worker's run ended KILLED; the live worker ran it again: one FINISHED child per run, none RUNNING.
    key = killed.data.tags["child_key"]
    ended = client.get_run(killed.info.run_id)
    assert ended.info.status == "KILLED" and "worker died" in ended.data.tags["error"]
    children = _children(client, "smoke_killed")
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["child_key"] for c in finished) == sorted({c.data.tags["child_key"] for c in children})
    assert len(finished) == 2
    redone = next(c for c in finished if c.data.tags["child_key"] == key)
    assert runner(redone.info.run_id) == live
    parent = client.get_run(killed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"  # the parent both workers share, ended by the live one

    # One round only (no rerun): the stale trial FAILed and its retry in the same study COMPLETE.
    studies = [s.study_name for s in optuna.get_all_study_summaries(optuna_url)]
    assert studies == ["ablation:smoke_killed:r0"]
    trials = optuna.load_study(study_name=studies[0], storage=optuna_url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and len({t.user_attrs["run_key"] for t in complete}) == 2
    stale = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["run_key"] for t in stale] == [key]
    retry = next(t for t in complete if t.user_attrs["run_key"] == key)
    with warnings.catch_warnings():  # retried_trial_number is 'experimental' in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == stale[0].number


def test_a_worker_killed_before_its_first_heartbeat_does_not_stall_the_round(postgres, monkeypatch):
    """Optuna's stale check ignores a trial that never beat: the live worker must still fail and redo it."""
    from fer_ablate.runs.single import ChildOutcome

    url = postgres("optuna_unbeaten")
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "3")
    # The dying worker opens the round and pops a run with Optuna's ask() (no heartbeat yet), then is SIGKILLed.
    script = ("import os, signal, sys\n"
              "from fer_ablate.runs.shared_queue import _open_round, open_rdb_storage\n"
              "study = _open_round(open_rdb_storage(sys.argv[1]), 'ablation:unbeaten', {'a': None, 'b': None})\n"
              "print(study.ask().number, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    dead = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=300)
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    popped = int(dead.stdout)

    ran: list[str] = []

    def run_one(key, spec) -> ChildOutcome:
        ran.append(key)
        return ChildOutcome(f"run-{key}", True, "ok", 0.5)

    result = {}
    todo = {key: SimpleNamespace(run_name=key) for key in ("a", "b")}
    live = threading.Thread(target=lambda: result.update(counts=run_shared_grid(url, "unbeaten", todo, run_one)),
                            daemon=True)
    live.start()
    live.join(timeout=300)  # a guard against the hang this test is about, not a timing assertion
    assert not live.is_alive(), "the live worker waits for ever on the dead worker's run"
    assert result["counts"] == (2, 0) and sorted(ran) == ["a", "b"]
    trials = optuna.load_study(study_name="ablation:unbeaten:r0", storage=url).get_trials()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [popped]
    assert sorted(t.user_attrs["run_key"] for t in trials if t.state == TrialState.COMPLETE) == ["a", "b"]


@pytest.mark.parametrize("url,message", [("not-a-url", "not a database URL"),
                                         ("postgresql://nobody@127.0.0.1:9/x", "cannot be used")])
def test_bad_storage_fails_before_any_run(url, message):
    with pytest.raises(StorageError, match=message):
        open_rdb_storage(url)


@pytest.mark.parametrize("beat,grace,message", [("x", "6", "FER_ABLATE_HEARTBEAT_SECONDS='x'"),
                                                ("2", "0", "FER_ABLATE_HEARTBEAT_GRACE_SECONDS='0'"),
                                                ("6", "6", "must exceed the heartbeat interval")])
def test_bad_heartbeat_settings_are_refused(monkeypatch, beat, grace, message):
    monkeypatch.setenv(HEARTBEAT_ENV, beat)
    monkeypatch.setenv(GRACE_ENV, grace)
    with pytest.raises(StorageError, match=re.escape(message)):
        open_rdb_storage("postgresql://nobody@127.0.0.1:9/x")
