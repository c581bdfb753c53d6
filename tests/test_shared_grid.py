"""Several machines share one grid through PostgreSQL: 2 worker processes, each run taken exactly once; a run
whose worker was SIGKILLed or SIGTERMed is taken by a live worker in the same round; a machine with other runs
is refused and prunes nothing; a machine in another time zone never fails a live run; the shared parent's
status comes from every run (a FAILED child keeps it from FINISHED); ``--workers N`` runs N queue workers.

Real PostgreSQL (Debian's server, started by the ``postgres`` fixture), real processes and signals. The "machines"
of the cheap tests run a stand-in ``run_one`` (a sleep): the queue, not the training, is under test there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
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

from fer_ablate.runs.shared_queue import (
    GRACE_ENV,
    HEARTBEAT_ENV,
    RoundMismatch,
    StorageError,
    open_rdb_storage,
    open_round,
    run_shared_grid,
)
from fer_ablate.runs.single import ChildOutcome


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
    if "resumes" in ended.data.tags:  # killed after an epoch's checkpoint: continued in place (issue 21, part 1)
        assert ended.info.status == "FINISHED" and "worker died" in ended.data.tags["resume.1.previous_error"]
    else:
        assert ended.info.status == "KILLED" and "worker died" in ended.data.tags["error"]
    children = _children(client, "smoke_killed")
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["child_key"] for c in finished) == sorted({c.data.tags["child_key"] for c in children})
    assert len(finished) == 2
    redone = next(c for c in finished if c.data.tags["child_key"] == key)
    assert re.search(rf"\brun {redone.info.run_id}:", logs[live].read_text())  # the live worker trained it
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
    url = postgres("optuna_unbeaten")
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "3")
    # The dying worker opens the round and pops a run with Optuna's ask() (no heartbeat yet), then is SIGKILLed.
    script = ("import os, signal, sys\n"
              "from fer_ablate.runs.shared_queue import _open_round, open_rdb_storage\n"
              "runs = {'a': {'run': 'a'}, 'b': {'run': 'b'}}\n"
              "study = _open_round(open_rdb_storage(sys.argv[1]), 'ablation:unbeaten', runs, runs)\n"
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
    identity = {key: {"run": key} for key in todo}
    live = threading.Thread(target=lambda: result.update(
        counts=run_shared_grid(url, "unbeaten", identity, todo, run_one)), daemon=True)
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


# A machine of a shared grid whose runs are stand-ins (no Keras import: ~3 s to start): argv is the storage URL,
# the grid name, the seconds each run takes and the run keys. Prints "training KEY" and "trained KEY" around
# each run, then "ran KEY..." and exits 0, or exits 130 on SIGTERM / Ctrl-C.
MACHINE = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from fer_ablate import interrupts
    from fer_ablate.runs.shared_queue import run_shared_grid

    interrupts.install()
    url, name, seconds, keys = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split(",")
    ran = []

    def run_one(key, spec):
        print("training", key, flush=True)
        time.sleep(seconds)
        print("trained", key, flush=True)
        ran.append(key)
        return SimpleNamespace(run_id="run-" + key, ok=True, detail="ok", value=0.5)

    try:
        run_shared_grid(url, name, {k: {"run": k} for k in keys}, {k: SimpleNamespace(run_name=k) for k in keys},
                        run_one)
    except KeyboardInterrupt:
        sys.exit(130)
    print("ran", *ran, flush=True)
""")


def _machine(url: str, name: str, seconds: float, keys: list[str], log, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MACHINE, url, name, str(seconds), ",".join(keys)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})})


def _stand_in(keys, ran: list[str], seconds: float = 0.0):
    """A run_one that records the keys it ran (each run finishes with val_accuracy 0.5)."""
    def run_one(key, spec) -> ChildOutcome:
        time.sleep(seconds)
        ran.append(key)
        return ChildOutcome(f"run-{key}", True, "ok", 0.5)

    return {k: {"run": k} for k in keys}, {k: SimpleNamespace(run_name=k) for k in keys}, run_one


def _identity(epochs: int, runs=("kernel3 · seed 1", "kernel5 · seed 1")) -> dict:
    """A grid as a machine with ``--set train.epochs=<epochs>`` sees it (the run key carries the config hash)."""
    return {f"{run}|cfg{epochs}|data0": {"run": run, "train.epochs": str(epochs), "data digest": "data0"}
            for run in runs}


def _take_one(url: str, round_name: str) -> None:
    """Pop one queued run of the round and beat for it, as a live worker does."""
    storage = open_rdb_storage(url)
    with warnings.catch_warnings():  # Optuna: heartbeats are "supposed to be used with Study.optimize"
        warnings.simplefilter("ignore", UserWarning)
        trial = optuna.load_study(study_name=round_name, storage=storage).ask()
    storage.record_heartbeat(trial._trial_id)


def test_a_machine_with_other_runs_is_refused_in_one_line_and_prunes_nothing(postgres):
    url = postgres("optuna_keys")
    first = _identity(2)
    round_name = open_round(url, "keys", first, first)  # machine 1's round: 2 runs queued ...
    _take_one(url, round_name)  # ... and one of them in training

    second = _identity(3, ("kernel3 · seed 1", "kernel5 · seed 1", "kernel7 · seed 1"))
    ran: list[str] = []
    with pytest.raises(RoundMismatch) as refused:
        run_shared_grid(url, "keys", second, {k: SimpleNamespace(run_name=d["run"]) for k, d in second.items()},
                        lambda key, spec: ran.append(key))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(round_name), message
    assert "train.epochs=3 here, 2 there (2 runs)" in message and "1 run(s) only here (kernel7 · seed 1)" in message
    assert ran == []
    trials = optuna.load_study(study_name=round_name, storage=url).get_trials()
    assert sorted(t.state.name for t in trials) == ["RUNNING", "WAITING"], "a run was pruned or failed"
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [round_name]


def test_ablate_with_another_set_than_the_round_in_progress_stops_in_one_line(postgres, tmp_path, capsys):
    from fer_ablate.cli import main
    from fer_ablate.config.experiment_file import expand, load_experiment_file
    from fer_ablate.runs import grid

    url = postgres("optuna_keys_cli")
    path = tmp_path / "keys_cli.yaml"
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text())
    path.write_text(text.replace("name: smoke", "name: keys_cli"))
    keyed = grid.keyed_runs(expand(load_experiment_file(str(path)), {}))
    identity = {key: grid._identity(spec, key) for key, spec in keyed}
    _take_one(url, open_round(url, "keys_cli", identity, identity))  # another machine's round, in progress

    assert main(["ablate", "--experiment", str(path), "--storage", url, "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fer-ablate: error: ablation:keys_cli:r0"), err
    assert "train.epochs=2 here, 1 there (4 runs)" in err, err
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(ids, "tags.fer_ablate_name = 'keys_cli'"), "something was recorded"


def test_a_round_nobody_works_on_gives_way_to_other_runs_and_keeps_its_own(postgres, monkeypatch):
    """All machines of round r0 were stopped with runs still queued: a grid with new settings starts r1."""
    url = postgres("optuna_abandoned")
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "3")
    old = _identity(2)
    open_round(url, "abandoned", old, old)
    ran: list[str] = []
    new = _identity(3)
    assert run_shared_grid(url, "abandoned", new, {k: SimpleNamespace(run_name=k) for k in new},
                           lambda key, spec: ran.append(key) or ChildOutcome(key, True, "ok", 0.5)) == (2, 0)
    assert sorted(ran) == sorted(new)
    kept = optuna.load_study(study_name="ablation:abandoned:r0", storage=url).get_trials()
    assert [t.state.name for t in kept] == ["WAITING", "WAITING"], "the old round's runs were pruned"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(url)) == ["ablation:abandoned:r0",
                                                                                  "ablation:abandoned:r1"]


def test_a_sigtermed_run_goes_back_to_the_queue_and_is_trained_in_the_same_round(postgres, tmp_path):
    url = postgres("optuna_sigterm")
    log = (tmp_path / "machine.log").open("w")
    proc = _machine(url, "sigterm", 600, ["a", "b"], log)
    try:
        assert proc.stdout.readline().split() == ["training", "a"], (tmp_path / "machine.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130, (tmp_path / "machine.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    study = optuna.load_study(study_name="ablation:sigterm:r0", storage=url)
    [interrupted] = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert interrupted.user_attrs["run_key"] == "a" and "re-queued" in interrupted.user_attrs["interrupted"]
    assert sorted(t.user_attrs["run_key"] for t in study.get_trials(states=(TrialState.WAITING,))) == ["a", "b"]

    ran: list[str] = []
    identity, todo, run_one = _stand_in(["a", "b"], ran)
    assert run_shared_grid(url, "sigterm", identity, todo, run_one) == (2, 0)  # the next machine joins the round
    assert sorted(ran) == ["a", "b"]
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["ablation:sigterm:r0"]
    done = [t.user_attrs["run_key"] for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(done) == ["a", "b"]


def test_a_machine_in_another_time_zone_never_fails_a_live_run(postgres, tmp_path, monkeypatch):
    """The observer's sessions would read the live run's heartbeat as 5.5 hours old if time zones leaked in."""
    url = postgres("optuna_tz")
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "3")
    monkeypatch.setenv("PGTZ", "UTC")  # this machine's database sessions, unless the package sets them
    quick_done, slow_taken = threading.Event(), threading.Event()
    ran: list[str] = []

    def run_one(key, spec) -> ChildOutcome:
        if key == "slow":  # still training while the other machine, done with "quick", waits 4 s > grace
            slow_taken.set()
            quick_done.wait(timeout=300)
            time.sleep(4)
        ran.append(key)
        return ChildOutcome(f"run-{key}", True, "ok", 0.5)

    keys = ["slow", "quick"]  # queued in this order: this machine creates the round and takes "slow"
    todo = {k: SimpleNamespace(run_name=k) for k in keys}
    result = {}
    here = threading.Thread(target=lambda: result.update(
        counts=run_shared_grid(url, "tz", {k: {"run": k} for k in keys}, todo, run_one)), daemon=True)
    here.start()
    assert slow_taken.wait(timeout=300)
    log = (tmp_path / "kolkata.log").open("w")
    there = _machine(url, "tz", 0, keys, log, env={"TZ": "Asia/Kolkata", "PGTZ": "Asia/Kolkata"})
    try:
        assert there.stdout.readline().split() == ["training", "quick"], (tmp_path / "kolkata.log").read_text()[-3000:]
        assert there.stdout.readline().split() == ["trained", "quick"]
        quick_done.set()
        out, _ = there.communicate(timeout=300)
    finally:
        quick_done.set()
        if there.poll() is None:
            there.kill()
    assert there.returncode == 0, (tmp_path / "kolkata.log").read_text()[-3000:]
    assert out.split() == ["ran", "quick"], out  # it never took "slow" over
    here.join(timeout=300)
    assert result["counts"] == (1, 0) and ran == ["slow"]
    trials = optuna.load_study(study_name="ablation:tz:r0", storage=url).get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"], [t.state.name for t in trials]


def _spawned(launcher: int) -> set[int]:
    """The job runner's worker processes of ``launcher`` right now."""
    pids = set()
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/stat") as stat, open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == launcher and b"spawn_main" in cmdline.read():
                    pids.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


@pytest.mark.slow  # about a minute: two machines (one with --workers 2) and real trainings, 2 of 4 failing
def test_a_failed_run_keeps_the_shared_parent_from_finished_and_workers_share_the_queue(postgres, tmp_path):
    optuna_url, mlflow_url = postgres("optuna_failed"), postgres("mlflow_failed")
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", "name: smoke_failed")
    path = tmp_path / "smoke_failed.yaml"
    # kernel 60 cannot fit a 46x46 map after the first conv: both its runs fail, the kernel-3 runs finish.
    path.write_text(text.replace("  kernel: [kernel3, kernel5]",
                                 "  kernel: {k3: {model.kernel_size: 3}, k60: {model.kernel_size: 60}}"))
    open_rdb_storage(optuna_url)
    client = MlflowClient(mlflow_url)
    client.search_experiments()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    cmd = [sys.executable, "-m", "fer_ablate.cli", "ablate", "--experiment", str(path), "--storage", optuna_url]
    logs = [tmp_path / f"machine{i}.log" for i in range(2)]
    machines = [subprocess.Popen([*cmd, "--workers", "2"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=logs[0].open("w"))]
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while not client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     "tags.fer_ablate_kind = 'ablation' and tags.fer_ablate_name = 'smoke_failed'"):
            assert time.monotonic() < deadline and machines[0].poll() is None, logs[0].read_text()[-3000:]
            workers |= _spawned(machines[0].pid)
            time.sleep(0.2)
        machines.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                         stderr=logs[1].open("w")))
        while machines[0].poll() is None:
            workers |= _spawned(machines[0].pid)
            assert time.monotonic() < deadline, "the first machine did not end"
            time.sleep(0.2)
        for machine, log in zip(machines, logs, strict=True):
            assert machine.wait(timeout=600) in (0, 1), log.read_text()[-3000:]  # 1: a run of its own failed
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    assert len(workers) == 2, workers  # --workers 2 with --storage: two processes on the queue

    children = _children(client, "smoke_failed")
    assert len(children) == 4 and len({c.data.tags["child_key"] for c in children}) == 4  # each run once
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    ran_in = {int(c.data.tags["worker"].split(":")[1]) for c in children}
    assert ran_in <= workers | {machines[1].pid} and ran_in & workers, (ran_in, workers, machines[1].pid)
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED", parent.info.status  # whichever machine ended last
    assert "2 of 4 run(s) of the shared grid did not finish" in parent.data.tags["error"]
    assert [s.study_name for s in optuna.get_all_study_summaries(optuna_url)] == ["ablation:smoke_failed:r0"]


def test_the_shared_parent_is_left_to_the_last_machine_and_fails_on_a_failed_child(postgres):
    """The rule every machine applies when its workers are done (the real two-machine run: the slow test above)."""
    from fer_ablate import tracking
    from fer_ablate.runs import grid

    url, name = postgres("optuna_settle"), "settle"
    keyed = [(f"{run}|cfg|data0", SimpleNamespace(run_name=run)) for run in ("k3 · seed 1", "k60 · seed 1")]
    round_name = open_round(url, name, {key: {"run": spec.run_name} for key, spec in keyed}, dict(keyed))
    ctx = tracking.open_context()
    client = MlflowClient()

    def machine_ends() -> object:
        """One machine leaving the grid: its parent block ends after the shared status is decided."""
        with tracking.parent_run(ctx, grid.KIND, name, own_children=False) as parent:
            grid._settle_shared(url, name, keyed, ctx.under(parent.run_id), parent)
        return client.get_run(parent.run_id)

    for (key, spec), status in zip(keyed, ("FINISHED", "FAILED"), strict=True):
        child = client.create_run(ctx.experiment_id, run_name=spec.run_name,
                                  tags=tracking.child_tags(grid.KIND, name, {"child_key": key}))
        client.set_terminated(child.info.run_id, status)
    _take_one(url, round_name)  # another machine still trains a run (a live heartbeat)
    assert machine_ends().info.status == "RUNNING"  # not ours to end: the last machine will
    for trial in optuna.load_study(study_name=round_name, storage=url).get_trials(states=(TrialState.RUNNING,)):
        optuna.load_study(study_name=round_name, storage=url).tell(trial.number, 0.5)  # that machine is done
    parent = machine_ends()
    assert parent.info.status == "FAILED", parent.info.status  # one child FAILED: never FINISHED
    assert "1 of 2 run(s) of the shared grid did not finish (k60 · seed 1)" in parent.data.tags["error"]
