"""One launcher per grid per store, and no orphans: real processes, real signals, a real MLflow SQLite store.

- A launcher killed by SIGKILL leaves no worker: each worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG).
- A second launcher of the same grid on the same store is refused in one line (grids without ``--storage``;
  with ``--storage`` launchers join the shared queue as more workers: tests/test_shared_grid.py).
- A resume never ends a RUNNING child whose worker is still alive: it waits for it, or refuses naming it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PROJECT, shrink, worker_pids
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.cli import main
from fer_ablate.runs import grid
from fer_ablate.runs.grid import GridRequest, run_experiment
from fer_ablate.runs.jobs import LauncherBusy, launcher_lock

# A module the spawned workers import (PYTHONPATH): the job says it started, then sleeps.
NAPPER = textwrap.dedent("""
    import time
    from pathlib import Path

    def nap(flag, seconds):
        Path(flag).write_text("in the job")
        time.sleep(seconds)
""")

# A launcher of two 10-minute jobs on the job runner (no Keras import: a few seconds to start).
LAUNCHER = textwrap.dedent("""
    import sys
    from napper import nap
    from fer_ablate import tracking
    from fer_ablate.runs.jobs import run_jobs

    if __name__ == "__main__":
        run_jobs(nap, [(f"{sys.argv[2]}/job{i}", 600) for i in range(2)], 2, tracking.RunContext(sys.argv[1], "0"))
""")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that does not reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(condition, what: str, timeout: float = 300) -> None:
    """Poll ``condition`` (a guard against a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_workers_die_with_a_sigkilled_launcher(tmp_path):
    (tmp_path / "napper.py").write_text(NAPPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "launcher.log"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path)],
                                env=env, cwd=tmp_path, stderr=log.open("w"))
    try:
        # Both workers inside their job: past die_with_launcher, so only the kernel's signal can stop them.
        _wait(lambda: all((tmp_path / f"job{i}").exists() for i in range(2)) or launcher.poll() is not None,
              "the jobs did not start")
        assert launcher.poll() is None, log.read_text()[-3000:]
        workers = worker_pids(launcher.pid)
        assert len(workers) == 2, workers
        launcher.send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=60) == -signal.SIGKILL
        _wait(lambda: not any(_alive(pid) for pid in workers), "a worker outlived its launcher", timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in worker_pids(launcher.pid):
            os.kill(pid, signal.SIGKILL)


def _experiment(tmp_path: Path, name: str, epochs: int = 1) -> str:
    """The shrunk smoke grid under another name: 2 runs (kernel3, kernel5; seed 1) of ``epochs`` epochs."""
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", f"name: {name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("seeds: [1, 2]", "seeds: [1]").replace("train.epochs: 1", f"train.epochs: {epochs}"))
    return str(path)


def _children(name: str) -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.fer_ablate_kind = 'ablation-child' and tags.fer_ablate_name = '{name}'")


@pytest.mark.parametrize("shared,hint", [(False, "wait for it to end or stop it"),
                                         (True, "join with the same --storage")])
def test_a_second_launcher_of_the_same_grid_is_refused_in_one_line(tmp_path, capsys, shared, hint):
    name = f"second_launcher_{int(shared)}"
    path = _experiment(tmp_path, name)
    ctx = tracking.open_context()
    capsys.readouterr()  # MLflow's own lines when the session's store is created
    # The first launcher (alone, or one of the machines sharing the grid through --storage) holds the grid.
    with launcher_lock(grid._lock_scope(ctx, name), f"grid {name}", shared=shared):
        assert main(["ablate", "--experiment", path, "--no-report"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"fer-ablate: error: grid {name} is already being run on this store by fer-ablate pid "
                          f"{os.getpid()} on ") and hint in err, err
    client = MlflowClient()
    assert not client.search_runs([ctx.experiment_id], f"tags.fer_ablate_name = '{name}'"), "something was recorded"


# A worker of a launcher that died: it holds a RUNNING child (tagged with its identity, as grid._run_child
# does), is still ending it for 3 s (what a worker does after SIGTERM), then ends it KILLED itself and exits.
DYING_WORKER = textwrap.dedent("""
    import sys, time
    from mlflow.tracking import MlflowClient
    from fer_ablate.runs.jobs import process_identity

    client = MlflowClient(sys.argv[1])
    tags = {"fer_ablate_kind": "ablation-child", "fer_ablate_name": sys.argv[3], "child_key": "k",
            "worker": process_identity()}
    run = client.create_run(sys.argv[2], tags=tags)
    print(run.info.run_id, flush=True)
    time.sleep(3)
    client.set_tag(run.info.run_id, "error", "interrupted (ended by its own worker)")
    client.set_terminated(run.info.run_id, "KILLED")
""")


def test_a_resume_never_ends_the_run_of_a_live_worker(tmp_path):
    name = "live_worker"
    ctx = tracking.open_context()
    worker = subprocess.Popen([sys.executable, "-c", DYING_WORKER, ctx.tracking_uri, ctx.experiment_id, name],
                              stdout=subprocess.PIPE, stderr=(tmp_path / "worker.log").open("w"), text=True)
    try:
        run_id = worker.stdout.readline().strip()
        assert run_id, (tmp_path / "worker.log").read_text()[-3000:]
        with pytest.raises(LauncherBusy, match=rf"by process\(es\) {worker.pid}, not started by a live launcher"):
            grid.wait_for_live_workers(ctx, name, timeout=0.5)
        assert MlflowClient().get_run(run_id).info.status == "RUNNING"
        # A resume (it holds the launcher lock) waits for the worker to end its own run, then goes on.
        assert grid.pending_runs([], ctx, name, own_stale=True) == ([], 0)
        assert worker.poll() is not None
    finally:
        if worker.poll() is None:
            worker.kill()
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.data.tags["error"]) == ("KILLED", "interrupted (ended by its own worker)")


def _launch(argv: list[str], tmp_path: Path, log: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, "-m", "fer_ablate.cli", *argv], env=env, cwd=tmp_path,
                            stdout=(tmp_path / f"{log}.out").open("w"), stderr=(tmp_path / f"{log}.log").open("w"))


@pytest.mark.slow  # about a minute: a real grid with 2 workers, killed mid-training, then resumed
def test_a_sigkilled_launcher_leaves_no_worker_and_a_resume_ends_every_run(tmp_path):
    name = "launcher_sigkill"
    path = _experiment(tmp_path, name, epochs=30)  # both runs surely still training at the kill
    launcher = _launch(["ablate", "--experiment", path, "--no-report", "--workers", "2"], tmp_path, "launcher")
    log = tmp_path / "launcher.log"
    try:
        _wait(lambda: sum(c.info.status == "RUNNING" for c in _children(name)) == 2 or launcher.poll() is not None,
              "the runs did not start", timeout=600)
        assert launcher.poll() is None, log.read_text()[-3000:]
        workers = worker_pids(launcher.pid)
        assert len(workers) == 2, workers
        launcher.send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=60) == -signal.SIGKILL
        # At once, as a user would: the resume must wait for the dying workers, never end their runs itself.
        outcome = run_experiment(GridRequest(path))
        assert not any(_alive(pid) for pid in workers), "a worker outlived its launcher and the resume"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in worker_pids(launcher.pid):
            os.kill(pid, signal.SIGKILL)
    assert (outcome.failed, outcome.skipped + outcome.finished) == (0, 2)
    children = _children(name)
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert sorted({c.data.tags["child_key"] for c in children if c.info.status == "FINISHED"}) == \
        sorted({c.data.tags["child_key"] for c in children})
    # Every attempt the kill interrupted was ended by its own worker (SIGTERM: "interrupted"), not by the resume.
    ended_by_resume = [c for c in children if "killed grid" in c.data.tags.get("error", "")
                       or any("killed grid" in v for k, v in c.data.tags.items() if k.endswith("previous_error"))]
    assert not ended_by_resume, [c.data.tags for c in ended_by_resume]
    assert MlflowClient().get_run(outcome.parent_run_id).info.status == "FINISHED"


@pytest.mark.slow  # about a minute: two real launchers of one grid, the first training
def test_a_second_real_launcher_leaves_the_first_ones_runs_alone(tmp_path):
    name = "two_launchers"
    path = _experiment(tmp_path, name, epochs=30)
    first = _launch(["ablate", "--experiment", path, "--no-report"], tmp_path, "first")
    try:
        _wait(lambda: any(c.info.status == "RUNNING" for c in _children(name)) or first.poll() is not None,
              "the first launcher did not start a run", timeout=600)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        second = _launch(["ablate", "--experiment", path, "--no-report"], tmp_path, "second")
        assert second.wait(timeout=300) == 3
        err = (tmp_path / "second.log").read_text()
        assert f"fer-ablate: error: grid {name} is already being run on this store by fer-ablate pid {first.pid}" in err
        assert [c.info.status for c in _children(name)] == ["RUNNING"], "the second launcher touched a run"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=180) == 130
    finally:
        if first.poll() is None:
            first.kill()
    assert [c.info.status for c in _children(name)] == ["KILLED"]  # ended by its own launcher, on SIGTERM
