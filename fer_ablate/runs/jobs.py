"""The one job runner: grid runs, folds and tuning workers, in this process or in N spawned processes.

- Spawned, never forked (TensorFlow does not survive fork); one process per job, so memory does not grow
  across jobs and a process that dies (SIGKILL, the OOM killer) loses only its own job.
- At most ``workers`` processes alive; each job's result comes back through its own pipe.
- A job whose process exits non-zero, or dies before sending its result, is a failed ``JobResult``.
- Ctrl-C or SIGTERM in the launcher (a ``KeyboardInterrupt``; ``cli.main`` turns SIGTERM into one) and any
  other exception cancel the queued jobs and terminate the running workers. A worker turns SIGTERM into
  ``KeyboardInterrupt`` too, so its run context manager ends its MLflow run KILLED before it exits.

``concurrent.futures.ProcessPoolExecutor`` is not used: one dead worker breaks its whole pool
(``BrokenProcessPool`` fails every queued job), and its shutdown keeps starting queued jobs after Ctrl-C.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from fer_ablate import interrupts, tracking

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 60  # a terminated worker ends its run KILLED (a few MLflow calls); then it is killed


@dataclass
class JobResult:
    """How one job ended: its index in the job list, ``fn``'s return value, and an error line when it failed
    (``fn`` raised, or its process exited non-zero or died). ``exitcode`` is None for in-process jobs."""

    index: int
    value: Any = None
    error: str | None = None
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        """The job ran to the end and its process exited 0."""
        return self.error is None


def _entry(fn: Callable[..., Any], args: tuple, ctx: tracking.RunContext, conn: Any) -> None:
    """Entry point of a spawned worker process: one job, its result sent through ``conn``."""
    # Ctrl-C in a terminal reaches the whole process group; the launcher alone decides, and stops workers
    # with SIGTERM, so one interrupt reaches a worker once.
    interrupts.install(ctrl_c=False)  # SIGTERM interrupts the job, never inside a store write
    from fer_ablate.logs import configure_logging

    configure_logging()
    os.environ.pop("MLFLOW_RUN_ID", None)  # the launcher's run is a parent, never this job's run
    tracking.enter_context(ctx)
    try:
        conn.send(("ok", fn(*args)))
    except KeyboardInterrupt:
        conn.send(("error", "interrupted"))
        raise SystemExit(130) from None
    except Exception as exc:
        log.exception("job failed")
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:2000]))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _exit_error(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process killed by {name} (out of memory, or killed by hand)"
    return f"worker process exited with code {code}"


@dataclass
class _Worker:
    index: int
    proc: Any
    conn: Any
    reply: tuple | None = None
    conn_open: bool = True


def run_jobs(fn: Callable[..., Any], jobs: list[tuple], workers: int, ctx: tracking.RunContext,
             on_done: Callable[[JobResult], None] = lambda result: None) -> list[JobResult]:
    """Run ``fn(*args)`` for every ``args`` in ``jobs``; call ``on_done`` as each ends; return all results
    in job order.

    ``fn`` must be a module-level function with picklable arguments and result when ``workers > 1``.
    With ``workers <= 1`` jobs run here, one after the other, and an exception from ``fn`` propagates.
    An exception from ``on_done`` (e.g. a pruned trial) stops the remaining jobs like Ctrl-C does.
    """
    results: list[JobResult] = []

    def finish(result: JobResult) -> None:
        results.append(result)
        on_done(result)

    if workers <= 1:
        for i, args in enumerate(jobs):
            finish(JobResult(i, fn(*args)))
        return sorted(results, key=lambda r: r.index)
    context = multiprocessing.get_context("spawn")
    queued = deque(enumerate(jobs))
    running: dict[int, _Worker] = {}
    try:
        while queued or running:
            while queued and len(running) < workers:
                i, args = queued.popleft()
                reader, writer = context.Pipe(duplex=False)
                proc = context.Process(target=_entry, args=(fn, args, ctx, writer), name=f"fer-ablate-job-{i}")
                proc.start()
                writer.close()  # the child holds the only writer: its exit closes the pipe (EOF)
                running[i] = _Worker(i, proc, reader)
            waitables = [w.proc.sentinel for w in running.values()] + [w.conn for w in running.values()
                                                                        if w.conn_open]
            ready = set(wait(waitables))
            for worker in list(running.values()):
                if worker.conn_open and worker.conn in ready:
                    _read(worker)
                if worker.proc.sentinel in ready:
                    worker.proc.join()
                    if worker.conn_open:
                        _read(worker)  # a reply sent just before exit
                    del running[worker.index]
                    finish(_result(worker))
    finally:
        queued.clear()
        _stop(running.values())
    return sorted(results, key=lambda r: r.index)


def _read(worker: _Worker) -> None:
    """Take the worker's reply (called when its pipe is readable or its process has exited); at end of
    file, stop watching the pipe."""
    try:
        if worker.conn.poll():
            worker.reply = worker.conn.recv()
        return
    except (EOFError, OSError):  # the worker closed its end: nothing more will come
        worker.conn_open = False
        worker.conn.close()


def _result(worker: _Worker) -> JobResult:
    code = worker.proc.exitcode
    kind, payload = worker.reply or ("error", None)
    if kind == "ok" and code == 0:
        return JobResult(worker.index, payload, None, code)
    error = payload if kind == "error" and payload else _exit_error(code)
    if code not in (0, None) and payload:
        error = f"{error} (exit code {code})"
    return JobResult(worker.index, payload if kind == "ok" else None, error, code)


def _stop(workers: Any) -> None:
    """Terminate running workers (SIGTERM: their runs end KILLED), then kill any that do not exit in time."""
    workers = list(workers)
    for worker in workers:
        if worker.proc.is_alive():
            worker.proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        worker.proc.join(max(0.0, deadline - time.monotonic()))
        if worker.proc.is_alive():
            log.warning("worker %s did not stop within %d s: killed", worker.proc.name, STOP_GRACE_SECONDS)
            worker.proc.kill()
            worker.proc.join()
        worker.conn.close()


class Progress:
    """One line per finished job: i of N, elapsed, estimated remaining."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def line(self, name: str, ok: bool, detail: str) -> str:
        """Count one finished job and describe it."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        state = "finished" if ok else "FAILED"
        return (f"[{self.done}/{self.total}] {name} {state} ({detail}); elapsed {elapsed / 60:.1f} min, "
                f"about {remaining / 60:.1f} min to go")
