"""Run independent jobs (grid runs, folds) in this process or in N spawned worker processes.

Spawned, never forked (TensorFlow does not survive fork), one job per process (memory does not grow
across jobs). Each worker logs like the CLI, writes to the launcher's tracking store, and never mistakes
the launcher's ``mlflow run`` run for its own.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def _entry(fn: Callable[..., Any], tracking_uri: str, args: tuple) -> Any:
    """Entry point of a spawned worker process."""
    from fer_ablate.logs import configure_logging

    configure_logging()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.pop("MLFLOW_RUN_ID", None)  # the launcher's run is a parent, never this job's run
    return fn(*args)


def run_jobs(fn: Callable[..., Any], jobs: list[tuple], workers: int
             ) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Yield ``(job index, result, error)`` as jobs finish; ``fn`` must be a module-level function.

    ``error`` is set when a worker process itself died (killed, out of memory); errors that ``fn``
    returns as results are the caller's business.
    """
    if workers <= 1:
        for i, args in enumerate(jobs):
            yield i, fn(*args), None
        return
    from fer_ablate import tracking

    uri = tracking.mlflow.get_tracking_uri()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_entry, fn, uri, args): i for i, args in enumerate(jobs)}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result(), None
            except Exception as exc:  # the worker process died
                yield futures[future], None, exc


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
