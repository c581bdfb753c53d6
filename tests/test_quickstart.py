"""The README's quickstart, run line by line as written, from a scratch copy of the project (slow: ~8 min).

It is the newcomer's first hour: every command must work in order, the runs must learn (above the majority
class, and differing from each other), the served model must answer a photo posted from a file, and the runs
table URL the commands print must answer. Each line's time is printed (``pytest -s``) for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT, RUN_EAGERLY_ENV, free_port
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.graph]


def quickstart_lines(readme: str) -> list[str]:
    """The shell lines of the README's quickstart block (between its markers), comments kept."""
    block = readme.split("<!-- quickstart")[1].split("<!-- /quickstart -->")[0]
    body = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def _script(lines: list[str], port: int, ui_port: int) -> str:
    """The quickstart as one bash script: each line timed, the install skipped (this venv is the install),
    the serving port made free, and the blocking ``mlflow ui`` started in the background and probed."""
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2> /dev/null || true' EXIT"]
    for line in lines:
        if "pip install" in line:
            continue
        command = line.replace("5001", str(port))
        label = command.split("#")[0].strip().replace("'", "")
        if command.startswith("mlflow ui"):
            command = (f"{label} --port {ui_port} > ui.log 2>&1 &\n"
                       f"until curl -s localhost:{ui_port}/health > /dev/null; do sleep 1; done\n"
                       "kill $!")
        out += ["_t=$EPOCHREALTIME", command, f"echo QUICKSTART $_t $EPOCHREALTIME '{label}' >&2"]
    return "\n".join(out) + "\n"


def _scratch_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and not ignored), without stores or caches."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        source = PROJECT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_the_quickstart_runs_in_order_and_learns(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the quickstart uses curl")
    scratch = _scratch_copy(tmp_path / "fer-ablate")
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "FER_ABLATE_REPORTS": str(scratch / "reports"),
           "FER_ABLATE_CACHE": str(scratch / ".cache"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop(RUN_EAGERLY_ENV, None)  # as a user runs it: traced graphs
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    lines = quickstart_lines((PROJECT / "README.md").read_text())
    script = scratch / "quickstart.sh"
    script.write_text(_script(lines, free_port(), free_port()))
    started = time.time()
    proc = subprocess.run(["bash", str(script)], cwd=scratch, env=env, capture_output=True, text=True, timeout=1800)
    timings = [line.split(" ", 3) for line in proc.stderr.splitlines() if line.startswith("QUICKSTART ")]
    for _, start, end, label in timings:
        print(f"{float(end) - float(start):7.1f} s  {label}")
    print(f"total {time.time() - started:.0f} s")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    assert len(timings) == len(lines) - 1  # every line but the install ran

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "fer-ablate"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("fer_ablate_kind", "single"), []).append(run)
    # The first tracked run (`mlflow run`) learned, and says it is a toy on synthetic faces, not degenerate.
    [first] = [r for r in by_kind["single"] if r.data.tags.get("mlflow.source.type") == "PROJECT"]
    assert first.info.status == "FINISHED" and first.data.tags["degenerate"] == "false"
    # The smoke grid: every run above the majority class of its validation split, and runs differ.
    grid = by_kind["ablation-child"]
    assert len(grid) == 4 and all(r.data.tags["degenerate"] == "false" for r in grid)
    accuracies = [r.data.metrics["val_accuracy"] for r in grid]
    assert all(a > 0.30 for a in accuracies), accuracies  # the majority class is 26% of the synthetic faces
    assert len(set(np.round(accuracies, 6))) > 1, accuracies
    # Each parent is named by its kind, so the grid and the study named `smoke` are told apart.
    names = {r.info.run_name for r in runs}
    assert {"grid: smoke", "study: smoke", "kfold: smoke"} <= names, names
    # The served model answered the photo posted from a file; the runs table URL was printed.
    assert '"predictions"' in proc.stdout and '"label"' in proc.stdout
    assert (scratch / "results" / "annotated").is_dir()
    urls = set(re.findall(r"http://\S+/#/experiments/\d+\S*", proc.stdout + proc.stderr))
    assert urls, "no runs-table URL printed"
    assert any(f"/#/experiments/{experiment.experiment_id}" in url for url in urls), urls
