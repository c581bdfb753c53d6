"""Ctrl-C and SIGTERM become ``KeyboardInterrupt``, but never in the middle of a library's half-done work.

Python raises a signal's exception at whatever bytecode the main thread is running. Two places where that
breaks things were seen in this project's own tests:
- inside SQLAlchemy / sqlite3 while MLflow writes a metric: the connection kept the SQLite write lock (its
  frames live on in the traceback), so ending the run KILLED failed 20 s later with "database is locked"
  and the run stayed RUNNING or was even marked FINISHED (3 of 15 SIGTERMs to a process logging in a loop);
- a k-fold process that got SIGTERM just as its first fold began training died of SIGSEGV in CI (once; not
  reproduced in 8 local tries, no stack captured). TensorFlow builds a traced step's graph from Python
  through C calls meant to come in sequence (``TF_NewOperation`` ... ``TF_FinishOperation``); an exception
  raised between them leaves that C++ state half-done, the likely cause. Holding the signal there is cheap.

So the handler looks at the interrupted stack. Inside one of ``UNSAFE_MODULES`` the interrupt is held back
and retried every 20 ms (``SIGALRM``) until the stack has left them; anywhere else it is raised at once.
Training is almost always inside Keras, so the training loop calls ``raise_if_held()`` between batches
(``training.loop.InterruptPoint``): a callback that raises is an ordinary Keras error path. A second
Ctrl-C while one is held is raised at once: the way out of a store that hangs (an unreachable server).
"""

from __future__ import annotations

import signal
from types import FrameType

# Module prefixes whose frames mean "an exception here could leave state half-done": the tracking and study
# stores (MLflow's store and client, SQLAlchemy, sqlite3, psycopg 3 and psycopg2 (the PostgreSQL drivers of a
# shared queue), Optuna's storages) and the deep-learning frameworks. Not optuna.study: the objective, i.e. the
# whole training, runs below it.
UNSAFE_MODULES = ("sqlalchemy.", "sqlite3", "psycopg", "mlflow.store.", "mlflow.tracking.",
                  "mlflow.utils.rest_utils", "optuna.storages.", "tensorflow.", "keras.", "jax.", "jaxlib.")
RETRY_SECONDS = 0.02

_held: int | None = None  # a signal received inside unsafe code, not yet raised
_interrupted = False  # the one interrupt has been raised; repeated SIGTERMs are ignored from then on


def in_unsafe_code(frame: FrameType | None) -> bool:
    """Whether any frame of the stack ending at ``frame`` belongs to one of ``UNSAFE_MODULES``."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(UNSAFE_MODULES):
            return True
        frame = frame.f_back
    return False


def raise_if_held() -> None:
    """A safe point: raise ``KeyboardInterrupt`` now if a Ctrl-C or SIGTERM is being held back."""
    if _held is not None:
        _raise(_held)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _held
    if _interrupted and signum == signal.SIGTERM:
        return  # a launcher's repeated SIGTERM must not interrupt the clean-up the first one started
    insisted = signum == signal.SIGINT and _held is not None
    if insisted or not in_unsafe_code(frame):
        _raise(signum)
    _held = signum
    signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _retry_held(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    """The timer: raise the held signal once the stack has left unsafe code, else look again shortly."""
    if _held is None:
        return
    if in_unsafe_code(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    _raise(_held)


def _raise(signum: int) -> None:
    global _held, _interrupted
    _held, _interrupted = None, True
    signal.setitimer(signal.ITIMER_REAL, 0)
    raise KeyboardInterrupt(f"signal {signum}")


def install(ctrl_c: bool = True) -> dict[int, object]:
    """Make SIGTERM (and, with ``ctrl_c``, SIGINT) raise ``KeyboardInterrupt`` outside unsafe code.

    Call from the main thread. Returns the previous handlers, for ``restore``. A job-runner worker passes
    ``ctrl_c=False`` and ignores SIGINT: its launcher alone decides, and stops it with SIGTERM.
    """
    global _held, _interrupted
    _held, _interrupted = None, False
    wanted = {signal.SIGTERM: _on_signal, signal.SIGALRM: _retry_held}
    wanted[signal.SIGINT] = _on_signal if ctrl_c else signal.SIG_IGN
    return {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers ``install`` replaced and cancel a pending retry."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for signum, handler in previous.items():
        signal.signal(signum, handler)
