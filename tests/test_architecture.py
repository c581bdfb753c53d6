"""The architecture holds: import-linter's contracts (pyproject.toml) and no TensorFlow behind reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT

LINT_IMPORTS = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter not installed (pip install -e '.[dev]')")
def test_import_contracts_are_kept():
    """Layers, MLflow and Optuna boundaries, no Keras in tracking or reports, no cycles (see pyproject.toml)."""
    proc = subprocess.run([LINT_IMPORTS, "--no-cache"], capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


@pytest.mark.parametrize("module", ["fer_ablate.reports.grid_report", "fer_ablate.reports.kfold_report",
                                    "fer_ablate.reports.stats", "fer_ablate.reports.plots", "fer_ablate.tracking"])
def test_reading_runs_does_not_load_tensorflow(module):
    """`fer-ablate report` reads runs: importing its modules (in a fresh process) loads neither TF nor Keras."""
    code = (f"import sys, {module}; loaded = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') "
            "if m in sys.modules); print(','.join(loaded) or 'none')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "none", f"{module} loaded {proc.stdout.strip()}"
