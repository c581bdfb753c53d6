"""The one job runner: grid runs, folds and tuning workers, in this process or in N spawned processes.

- Spawned, never forked (TensorFlow does not survive fork); one process per job, so memory does not grow
  across jobs and a process that dies (SIGKILL, the OOM killer) loses only its own job.
- At most ``workers`` processes alive; each job's result comes back through its own pipe.
- A job whose process exits non-zero, or dies before sending its result, is a failed ``JobResult``.
- Ctrl-C or SIGTERM in the launcher (a ``KeyboardInterrupt``; ``cli.main`` turns SIGTERM into one) and any
  other exception cancel the queued jobs and terminate the running workers. A worker turns SIGTERM into
  ``KeyboardInterrupt`` too, so its run context manager ends its MLflow run KILLED before it exits.

- Workers die with their launcher: each asks Linux for SIGTERM when its launcher dies (``PR_SET_PDEATHSIG``;
  elsewhere a watchdog thread on the launcher's pid), so a launcher killed by SIGKILL or the OOM killer
  leaves no worker training: each ends its run KILLED (a shared-queue run goes back in the queue).
- ``launcher_lock``: one launcher per grid per store on a host (``fcntl.flock``, released by the kernel
  however the launcher ends); ``process_identity`` / ``process_alive`` tell a later launcher whether the
  worker named on a RUNNING run is still alive, so it never ends a live run KILLED.

``concurrent.futures.ProcessPoolExecutor`` is not used: one dead worker breaks its whole pool
(``BrokenProcessPool`` fails every queued job), and its shutdown keeps starting queued jobs after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from fer_ablate import interrupts, tracking
from fer_ablate.errors import EXIT_UNAVAILABLE, FerAblateError

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 60  # a terminated worker ends its run KILLED (a few MLflow calls); then it is killed
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when the thread that started it exits
WATCHDOG_SECONDS = 1.0  # where prctl is missing, how often a worker looks whether its launcher still lives


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


def die_with_launcher(launcher_pid: int) -> None:
    """Make this process receive SIGTERM when ``launcher_pid``, its parent, dies (even by SIGKILL).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``; the signal comes when the *thread* that started this process
    exits, so ``run_jobs`` must be called from a thread that outlives its jobs (the main thread does).
    Elsewhere, or if prctl fails: a daemon thread that looks every ``WATCHDOG_SECONDS`` whether the parent
    changed. A launcher that died before this call (the worker was still importing) is noticed here: the
    process exits at once with status 130, before any run starts. Call after ``interrupts.install``.
    """
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    if os.getppid() != launcher_pid:  # orphaned already: the death signal will never come
        os._exit(130)
    if not armed:
        def watch() -> None:
            while os.getppid() == launcher_pid:
                time.sleep(WATCHDOG_SECONDS)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def _entry(fn: Callable[..., Any], args: tuple, ctx: tracking.RunContext, conn: Any, launcher_pid: int) -> None:
    """Entry point of a spawned worker process: one job, its result sent through ``conn``."""
    # Ctrl-C in a terminal reaches the whole process group; the launcher alone decides, and stops workers
    # with SIGTERM, so one interrupt reaches a worker once.
    interrupts.install(ctrl_c=False)  # SIGTERM interrupts the job, never inside a store write
    die_with_launcher(launcher_pid)
    from fer_ablate.logs import configure_logging

    configure_logging()
    os.environ.pop("MLFLOW_RUN_ID", None)  # the launcher's run is a parent, never this job's run
    tracking.enter_context(ctx)
    try:
        _send(conn, ("ok", fn(*args)))
    except KeyboardInterrupt:
        _send(conn, ("error", "interrupted"))
        raise SystemExit(130) from None
    except Exception as exc:
        log.exception("job failed")
        _send(conn, ("error", f"{type(exc).__name__}: {exc}"[:2000]))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _send(conn: Any, reply: tuple) -> None:
    """Send a reply to the launcher; a launcher that died (the reason this worker was stopped) reads none."""
    with contextlib.suppress(OSError):  # BrokenPipeError: nobody holds the other end any more
        conn.send(reply)


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
                proc = context.Process(target=_entry, args=(fn, args, ctx, writer, os.getpid()),
                                       name=f"fer-ablate-job-{i}")
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


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None when it is gone,
    is a zombie, or there is no /proc (then only the pid identifies it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one): tells it apart from a later process that
    reuses its pid. Recorded on runs (tag ``worker``) so a later launcher knows whether their worker lives."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def process_alive(identity: str) -> bool | None:
    """Whether the process ``identity`` (``process_identity``) still runs; None when it ran on another host
    (or the identity is empty or malformed): this host cannot tell."""
    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return None
    pid, start = int(parts[1]), parts[2]
    if Path("/proc/self/stat").exists():
        return start != "" and _start_ticks(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid
        return True
    return True


class LauncherBusy(FerAblateError, RuntimeError):
    """Another live launcher on this host runs the same grid on the same store."""

    exit_code = EXIT_UNAVAILABLE


def lock_folder() -> Path:
    """Where launcher locks live: one folder per host and user (``$TMPDIR/fer-ablate-locks-<uid>``)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"fer-ablate-locks-{uid}"


@contextlib.contextmanager
def launcher_lock(scope: str, what: str, shared: bool = False) -> Iterator[None]:
    """Hold the launcher lock of ``scope`` (e.g. store, experiment and grid) on this host while the block
    runs; raise LauncherBusy, naming the holder, when a live launcher holds it in a conflicting way.

    Exclusive by default (one launcher); ``shared=True`` for launchers that coordinate among themselves (a
    grid shared through a database queue): any number of those, but none beside an exclusive one.
    ``fcntl.flock`` on a file named by a hash of ``scope`` (so a password in a store URL never reaches a
    file name): the kernel releases it however the holder ends (SIGKILL, OOM), so a dead launcher never
    blocks the next one; spawned workers do not inherit it. ``what`` names the work in the message.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one launcher per grid is then the user's care
        yield
        return
    folder = lock_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(scope.encode()).hexdigest()[:20]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            how = "shares it through --storage: join with the same --storage" if "--storage" in holder else \
                "runs it alone: wait for it to end or stop it (or share the grid with --storage from the start)"
            raise LauncherBusy(f"{what} is already being run on this store by {holder}, which {how}") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        note = f"fer-ablate pid {os.getpid()} on {socket.gethostname()} (since {started}{', with --storage' * shared})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new holder)


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
