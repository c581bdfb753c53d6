"""Data identity by content (issue 21, part 6): one config hash for the same data at any path, grids and k-fold
runs that resume from another path, and a parse cache that survives concurrent and killed writers.

Every CSV here is generated (FER2013 format, random pixels); the real FER2013 copy is never read.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, fer_row
from mlflow.tracking import MlflowClient
from PIL import Image

from fer_ablate.config.settings import config_hash, load_defaults, resolve_config
from fer_ablate.data import CLASS_NAMES, cache, load_dataset
from fer_ablate.data.loading import data_identity
from fer_ablate.runs.cross_validation import KFoldRequest, run_kfold
from fer_ablate.runs.grid import GridRequest, run_experiment

TINY_FILE = {k: v for k, v in TINY.items() if k != "data.source"}  # the data comes from each test's own file


def _write_csv(path: Path, seed: int, per_class: int = 6) -> Path:
    """A FER2013-format CSV whose pixels depend on ``seed`` (so no other test's runs share its digest)."""
    rng = np.random.default_rng(seed)
    rows = ["emotion,pixels,Usage"]
    for usage, n in (("Training", per_class), ("PublicTest", 2), ("PrivateTest", 2)):
        rows += [fer_row(label, usage, rng) for label in range(7) for _ in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _spellings(tmp_path: Path, original: Path) -> dict[str, Path | str]:
    """The same bytes reached five ways: as written, a copy elsewhere, a symlink, relative, and ``..``."""
    elsewhere = tmp_path / "mount" / "other name.csv"
    elsewhere.parent.mkdir()
    shutil.copyfile(original, elsewhere)  # new inode, new mtime: only the bytes are the same
    link = tmp_path / "link.csv"
    link.symlink_to(original)
    return {"original": original, "copy": elsewhere, "symlink": link,
            "relative": f"./{original.relative_to(tmp_path)}", "dotdot": str(elsewhere.parent / ".." / original.name)}


def test_the_same_data_at_any_path_has_one_config_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = _write_csv(tmp_path / "fer2013.csv", seed=211)
    spellings = _spellings(tmp_path, original)
    hashes = {name: config_hash(resolve_config("paper", {"data.source": str(p)})) for name, p in spellings.items()}
    monkeypatch.setenv("FER_DATA", str(spellings["copy"]))
    hashes["auto"] = config_hash(resolve_config("paper"))  # `auto` counts as the file it finds
    assert len(set(hashes.values())) == 1, hashes
    assert len({data_identity({"source": str(p)})[1] for p in spellings.values()}) == 1
    assert load_dataset({**load_defaults()["data"], "source": str(spellings["symlink"])}).digest == \
        load_dataset({**load_defaults()["data"], "source": str(spellings["copy"])}).digest
    # Other bytes are other data; other settings still count; the synthetic faces count as themselves.
    other = _write_csv(tmp_path / "other.csv", seed=212)
    assert config_hash(resolve_config("paper", {"data.source": str(other)})) != hashes["original"]
    assert config_hash(resolve_config("paper", {"data.source": str(original), "data.split_seed": 1})) != \
        hashes["original"]
    monkeypatch.setenv("FER_DATA", "synthetic")
    assert config_hash(resolve_config("paper")) == config_hash(resolve_config("paper", {"data.source": "synthetic"}))
    # A path that does not exist keeps its spelling (loading it says it is missing): hashing never raises.
    missing = config_hash({"data": {"source": str(tmp_path / "gone.csv")}})
    assert missing != config_hash({"data": {"source": str(tmp_path / "gone2.csv")}})


def _write_image_folder(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_an_image_folder_counts_by_its_files_bytes(tmp_path):
    original = _write_image_folder(tmp_path / "faces", seed=213)
    time.sleep(0.01)  # the copy's files get other mtimes (shutil.copy does not keep them)
    copy = Path(shutil.copytree(original, tmp_path / "elsewhere" / "faces copy", copy_function=shutil.copy))
    (copy / "train" / ".DS_Store").write_bytes(b"\0macOS litter")  # hidden files are not data (the loader skips them)
    h = {name: config_hash({"data": {"source": str(p)}}) for name, p in {"original": original, "copy": copy}.items()}
    assert h["original"] == h["copy"]
    edited = copy / "train" / "happy" / "edited.png"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(edited)
    os.replace(edited, copy / "train" / "happy" / "0.png")  # other pixels under the same name, saved as editors do
    assert config_hash({"data": {"source": str(copy)}}) != h["original"]


def _grid_file(tmp_path: Path, name: str, data: Path) -> str:
    fixed = "".join(f"  {k}: {v}\n" for k, v in TINY_FILE.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: paper\ndesign: sequence\nseeds: [1]\ndata: {data}\n"
                    f"steps:\n  - name: tiny\nfixed:\n{fixed}")
    return str(path)


def test_a_grid_resumes_from_another_path_of_the_same_file(tmp_path):
    original = _write_csv(tmp_path / "fer2013.csv", seed=214)
    spellings = _spellings(tmp_path, original)
    first = run_experiment(GridRequest(_grid_file(tmp_path, "identity_grid", original)))
    assert (first.total, first.finished, first.skipped) == (1, 1, 0)
    for name in ("copy", "symlink"):
        again = run_experiment(GridRequest(_grid_file(tmp_path, "identity_grid", Path(spellings[name]))))
        assert (again.finished, again.skipped, again.failed) == (0, 1, 0), f"the {name} retrained a finished run"


@pytest.mark.slow  # two folds trained (~10 s)
def test_a_kfold_run_resumes_from_another_path_of_the_same_file(tmp_path):
    original = _write_csv(tmp_path / "fer2013.csv", seed=217)
    copy = _spellings(tmp_path, original)["copy"]
    folds = KFoldRequest(variant="paper", folds=2, overrides={**TINY_FILE, "data.source": str(copy)})
    trained = run_kfold(folds)[0]
    assert (trained.finished, trained.skipped) == (2, 0)
    resumed = run_kfold(dataclasses.replace(folds, overrides={**TINY_FILE, "data.source": str(original)}))[0]
    assert (resumed.finished, resumed.skipped, resumed.parent_run_id) == (0, 2, trained.parent_run_id)
    parent = MlflowClient().get_run(trained.parent_run_id).data  # MLflow keeps a param's first value
    assert parent.params["data.source"] == str(copy)
    assert parent.tags["params_on_resume"] == f"data.source={original}"


# --- the parse cache under concurrent and killed writers --------------------------------------------------------

PARSE_AT_ONCE = """
import sys, time
from pathlib import Path
from fer_ablate.config.settings import load_defaults
from fer_ablate.data import cache, load_dataset
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():  # both processes start parsing within a millisecond of each other
    time.sleep(0.0005)
dataset = load_dataset({**load_defaults()["data"], "source": sys.argv[1]})
for i in range(100):  # then race on one key: the old folder entries failed here ("Directory not empty")
    cache.store("race", {"x": dataset.splits["train"][0]}, {"writer": sys.argv[3], "i": i})
print(dataset.digest, sum(dataset.sizes().values()))
"""


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(f"{cache.TMP_PREFIX}*"))


def test_two_processes_parsing_one_new_csv_at_once_both_succeed(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FER_ABLATE_CACHE", str(root))
    csv = _write_csv(tmp_path / "fer2013.csv", seed=215, per_class=40)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PARSE_AT_ONCE, str(csv), str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # both imported, at the barrier
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    assert results[0][0] == results[1][0] and results[0][0].split()[1] == str(7 * 44)
    entries = sorted(p.name for p in root.iterdir() if p.name != "hash-index.json")
    assert len(entries) == 2 and not _temporaries(root), entries  # the parse and the race: one entry each
    hit = load_dataset({**load_defaults()["data"], "source": str(csv)})
    assert hit.digest == results[0][0].split()[0]
    assert cache.load("race")["_meta"]["i"] == 99


KILLED_WRITER = """
import numpy as np
from fer_ablate.data import cache
big = np.zeros(20_000_000, np.uint8)  # 20 MB: about 10 ms a write, the temporary file exists most of the time
print("writing", flush=True)
while True:
    cache.store("killed", {"images": big}, {})
"""


def _kill_mid_write(root: Path) -> list[str]:
    for _ in range(5):  # a kill between a rename and the next mkstemp leaves nothing: try again (rare)
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 30
        while not _temporaries(root) and time.monotonic() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        if left := _temporaries(root):
            return left
    pytest.fail("the writer was never caught mid-write")


def test_a_writer_killed_mid_write_leaves_nothing_that_breaks_the_next_reader(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FER_ABLATE_CACHE", str(root))
    left = _kill_mid_write(root)
    assert left and all(name.startswith(f"{cache.TMP_PREFIX}{cache._HOST}-") for name in left)
    killed = cache.load("killed")  # the last complete entry or none: never a part of one
    assert killed is None or killed["images"].shape == (20_000_000,)
    csv = _write_csv(tmp_path / "fer2013.csv", seed=216)
    assert sum(load_dataset({**load_defaults()["data"], "source": str(csv)}).sizes().values()) == 70
    assert not _temporaries(root), "the next write removes a dead writer's temporary file"
    # A truncated entry (a full disk, a copied cache) is a miss: parsed again and replaced.
    entry = next(root.glob("fer2013-*.npz"))
    entry.write_bytes(entry.read_bytes()[:1000])
    assert sum(load_dataset({**load_defaults()["data"], "source": str(csv)}).sizes().values()) == 70
    assert cache.load(entry.name.removesuffix(f"-{cache.CACHE_VERSION}.npz")) is not None


class _Unsaveable:
    """An array-like whose conversion fails half-way through a write (a caller's bug, or Ctrl-C)."""

    def __init__(self, error: BaseException):
        self.error = error

    def __array__(self, dtype=None, copy=None):
        raise self.error


@pytest.mark.parametrize("error", [ValueError("cannot convert"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    root = tmp_path / "cache"
    monkeypatch.setenv("FER_ABLATE_CACHE", str(root))
    with pytest.raises(type(error)):
        cache.store("broken", {"images": np.zeros(1000, np.uint8), "labels": _Unsaveable(error)}, {})
    assert not _temporaries(root) and cache.load("broken") is None


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    done = subprocess.Popen(["true"])
    done.wait()  # its pid is dead now (a reuse within this test is vanishingly unlikely)
    host, stale = cache._HOST, time.time() - cache.STALE_AFTER_S - 60
    names = {"dead": f".tmp-{host}-{done.pid}-ab12", "live": f".tmp-{host}-{os.getpid()}-cd34",
             "other host, fresh": ".tmp-otherbox-1-ef56", "other host, old": ".tmp-otherbox-2-gh78",
             "old format folder": ".tmp-x1y2z3"}
    for label, name in names.items():
        path = tmp_path / name
        path.mkdir() if "folder" in label else path.write_bytes(b"partial")
        if "old" in label:
            os.utime(path, (stale, stale))
    removed = {p.name for p in cache.remove_stale_temporaries(tmp_path)}
    assert removed == {names["dead"], names["other host, old"], names["old format folder"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["other host, fresh"]])


def test_a_cache_folder_that_cannot_be_written_costs_a_parse_not_the_run(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the cache folder should be")  # refused even to root, unlike chmod
    monkeypatch.setenv("FER_ABLATE_CACHE", str(blocker / "cache"))
    csv = _write_csv(tmp_path / "fer2013.csv", seed=218)
    cfg = {**load_defaults()["data"], "source": str(csv)}
    assert sum(load_dataset(cfg).sizes().values()) == 70
    assert "parse cache not written" in caplog.text and "parsed again next time" in caplog.text
    copy = _spellings(tmp_path, csv)["copy"]
    assert config_hash({"data": cfg}) == config_hash({"data": {**cfg, "source": str(copy)}})  # hashed, not indexed
