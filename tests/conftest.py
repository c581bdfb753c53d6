"""Shared fixtures: an isolated MLflow store and cache per test session, small generated data files."""

from __future__ import annotations

import contextlib
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

RUN_EAGERLY_ENV = "FER_ABLATE_RUN_EAGERLY"  # fer_ablate.training.loop.RUN_EAGERLY_ENV (no Keras import here)

PROJECT = Path(__file__).resolve().parent.parent
REAL_FER2013 = PROJECT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
# Shrinks the real config (lightning-hydra style): tiny widths, a sliver of synthetic data, 1 epoch. The source
# is pinned: with `auto`, a developer who adds data/fer2013.csv (as the README suggests) would train on it.
TINY = {"model.base_filters": 4, "model.dense_units": [16, 8, 8], "data.source": "synthetic",
        "data.synthetic_samples": 300, "train.epochs": 1, "train.verbose": 0}


@pytest.fixture(scope="session", autouse=True)
def isolated_stores(tmp_path_factory):
    """Every test writes MLflow runs and caches under a temporary folder, never into the project."""
    root = tmp_path_factory.mktemp("stores")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["FER_ABLATE_CACHE"] = str(root / "cache")
    os.environ["FER_ABLATE_REPORTS"] = str(root / "reports")  # reports written without --out
    os.environ.pop("FER_DATA", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Tiny models train eagerly: tracing their graphs was ~70% of the suite's CPU time. Tests about graph
    # mode, XLA or bf16 are marked `graph` and run without it (the fixture below); subprocesses inherit it.
    os.environ[RUN_EAGERLY_ENV] = "1"
    before = _project_outputs()
    yield root
    leaked = sorted(_project_outputs() - before)
    assert not leaked, f"tests wrote into the project tree: {leaked[:10]}"


@pytest.fixture(autouse=True)
def graph_mode(request, monkeypatch):
    """Tests marked ``graph`` train as real runs do (traced graphs, XLA where asked), not eagerly."""
    if request.node.get_closest_marker("graph"):
        monkeypatch.delenv(RUN_EAGERLY_ENV, raising=False)


def _project_outputs() -> set[str]:
    """What sits in the project's own output folders (tests must leave them as they found them)."""
    found = {str(p.relative_to(PROJECT)) for folder in ("mlruns", "reports") for p in (PROJECT / folder).glob("*")}
    return found | {name for name in ("mlflow.db", "optuna.db", "optuna-journal.log") if (PROJECT / name).exists()}


def fer_row(label: int, usage: str, rng: np.random.Generator) -> str:
    """One FER2013 CSV row with random pixels."""
    pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
    return f"{label},{pixels},{usage}"


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    """A small FER2013 CSV with all three Usage values and every class in each."""
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for usage, per_class in (("Training", 6), ("PublicTest", 2), ("PrivateTest", 2)):
        rows += [fer_row(label, usage, rng) for label in range(7) for _ in range(per_class)]
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def fer_csv_gz(fer_csv) -> Path:
    path = fer_csv.with_suffix(".csv.gz")
    path.write_bytes(gzip.compress(fer_csv.read_bytes()))
    return path


# The shipped smoke files learn (2,000 faces, 3 epochs); tests that only exercise the machinery shrink them.
SHRUNK_FIXED = {"model.base_filters": 4, "data.synthetic_samples": 300, "train.epochs": 1}


def shrink(text: str) -> str:
    """A smoke experiment or search-space file's text with ``SHRUNK_FIXED`` added to its ``fixed:`` block (and a
    search space's 4 epochs per trial cut to 2, which the tests' text edits expect)."""
    assert "\nfixed:\n" in text, "a smoke file without a fixed: block"
    lines = "".join(f"  {key}: {value}\n" for key, value in SHRUNK_FIXED.items())
    return text.replace("\nfixed:\n", "\nfixed:\n" + lines, 1).replace("\nepochs: 4\n", "\nepochs: 2\n", 1)


def tiny_overrides(**extra) -> dict:
    """The TINY overrides plus any extra dotted keys."""
    return {**TINY, **extra}


def _postgres_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's package) on a free loopback port, for the session.

    Yields a function ``url(database)`` that creates the database and returns its URL.
    """
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql; .ci/run does this)")
    root = Path(tempfile.mkdtemp(prefix="fer-ablate-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    "start"], check=True, capture_output=True)

    def url(database: str) -> str:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
                       check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    yield url
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_model(model_uri: str, env: dict[str, str] | None = None, timeout: float = 240):
    """A real ``mlflow models serve`` of ``model_uri`` on a free loopback port, ready (``/ping`` answers);
    yields the port and stops the server afterwards."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "-p", str(port), "-h", "127.0.0.1"], env=env or dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"server did not start: {server.stderr.read().decode()[-3000:]}") from None
                time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def worker_pids(launcher: int) -> list[int]:
    """The job runner's worker processes of ``launcher`` (spawned: ``spawn_main``, not the resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids
