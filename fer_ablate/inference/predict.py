"""``fer-ablate predict``: photos, folders and videos in; per-face labels, annotated images and timelines out.

Records (JSON lines or CSV): one per face with file, frame (videos), box, label, the 7 probabilities and
``output`` (the annotated image or timeline it belongs to, relative to ``--out``); a photo without a face
gives one record with ``message: no face found``; an unreadable or missing file gives one with its error,
and the run goes on. Records are written and flushed as they are produced, so an interrupted run keeps
every record finished before the interrupt. Annotated copies (box, label, top-3) go to ``annotated/``
and, per video, a PNG timeline of the emotions over time to ``timelines/``, each under its path relative
to the inputs' common folder, so ``2023/IMG_0001.jpg`` and ``2024/IMG_0001.jpg`` never overwrite each
other; two inputs that differ only by extension (``clip.mp4``, ``clip.avi``) get the extension added.
A model with caveats from its training run (trained on synthetic faces, degenerate: ``provenance``) is
said so in a warning on stderr and in a ``notice`` field of every record; a plain ``.keras`` file has none.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from fer_ablate.data import CLASS_NAMES
from fer_ablate.data.images import IMAGE_SUFFIXES
from fer_ablate.inference.classifier import FaceClassifier, FacePrediction
from fer_ablate.inference.faces import ImageError, read_image

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
CSV_COLUMNS = ["file", "frame", "time_s", "face", "x", "y", "w", "h", "label", "score",
               *[f"p_{c}" for c in CLASS_NAMES], "output", "message"]  # + "notice" for a model with caveats


def _hidden(path: Path, folder: Path) -> bool:
    # macOS "._x.jpg" resource forks and ".ipynb_checkpoints" copies look like media but are not inputs.
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders as their images and videos (sorted, recursive, hidden names skipped).

    A path that does not exist, or a folder without images or videos, is kept as it is: ``predict_paths``
    turns it into an error record and goes on.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            media = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                           and p.is_file() and not _hidden(p, path))
            found += media or [path]  # an empty folder is reported as an error record, not skipped
        else:
            found.append(path)
    return found


class OutputNames:
    """Unique output paths: each input's path relative to the inputs' common folder, made unique.

    ``2023/a.jpg`` and ``2024/a.jpg`` keep their folders; ``a.jpg`` and ``a.png`` (the same name once the
    output suffix replaces theirs) become ``a.jpg`` and ``a_png.jpg``; any further clash gets ``_2``, ``_3``.
    Names are compared case-insensitively, as macOS and Windows file systems do.
    """

    def __init__(self, files: list[Path]):
        folders = [os.path.abspath(p.parent) for p in files if p.is_file()]  # a missing path has no output
        try:
            self.root = Path(os.path.commonpath(folders)) if folders else Path.cwd()
        except ValueError:  # different drives (Windows): no common folder, file names only
            self.root = None
        self.taken: set[str] = set()

    def claim(self, source: Path, folder: str, ending: str) -> str:
        """A new path ``folder/<relative path><ending>`` (relative to the output folder) for ``source``."""
        absolute = Path(os.path.abspath(source))
        inside = self.root is not None and self.root in absolute.parents
        relative = absolute.relative_to(self.root) if inside else Path(absolute.name)
        stem = (Path(folder) / relative.parent / relative.stem).as_posix()
        kind = relative.suffix.lstrip(".").lower()
        candidates = itertools.chain([f"{stem}{ending}", f"{stem}_{kind}{ending}"],
                                     (f"{stem}_{kind}_{n}{ending}" for n in range(2, 10_000)))
        for name in candidates:
            if name.lower() not in self.taken:
                self.taken.add(name.lower())
                return name
        raise ImageError(f"{source}: no free output name")  # 10,000 clashes: not a real input


def _record(source: Path, face: FacePrediction | None, index: int | None, output: str | None = None,
            **extra: Any) -> dict[str, Any]:
    message = extra.pop("message", "no face found")
    base = {"file": str(source), **extra, "output": output}
    if face is None:
        return {**base, "face": None, "box": None, "label": None, "message": message}
    return {**base, "face": index, **face.as_dict(), "message": ""}


def _error(source: Path, exc: Exception, output: str | None = None) -> dict[str, Any]:
    log.error("%s", exc)
    return _record(source, None, None, output, message=f"error: {exc}")


def annotate(image_bgr: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """A copy with each face's box, label and top-3 probabilities drawn on it."""
    import cv2

    out = image_bgr.copy()
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for face in faces:
        if face.box is None:
            continue
        b = face.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.w, b.y + b.h), (0, 200, 0), thickness)
        scale = max(0.4, b.w / 250)
        for k, (name, p) in enumerate(face.top(3)):
            y = b.y + b.h + int((k + 1) * 22 * scale)
            text = f"{name} {p:.2f}"
            cv2.putText(out, text, (b.x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(out, text, (b.x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255) if k == 0 else
                        (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def _predict_image(classifier: FaceClassifier, path: Path, crops: bool, out_dir: Path | None,
                   output: str | None) -> Iterator[dict]:
    import cv2

    try:
        grey = read_image(path)
    except ImageError as exc:
        yield _error(path, exc)
        return
    faces = classifier.analyse(grey, crops_mode=crops)
    if out_dir is not None and output is not None:
        colour = cv2.imread(str(path), cv2.IMREAD_COLOR)
        colour = colour if colour is not None else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        (out_dir / output).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_dir / output), annotate(colour, faces))
    if not faces:
        yield _record(path, None, None, output)
    for i, face in enumerate(faces):
        yield _record(path, face, i, output)


FPS_RANGE = (0.0, 240.0)  # a header fps outside (0, 240] is no real camera's: reported, not trusted
FALLBACK_FPS = 25.0  # when a video has neither usable timestamps nor a sane header fps


def video_frames(path: Path, every: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, seconds, BGR frame)`` for one frame in ``every``; ImageError if unreadable.

    Seconds come from the container's timestamp of each frame (``CAP_PROP_POS_MSEC`` after the grab):
    a browser-recorded WebM's header may claim 1000 fps (its time base) while its frames are 33 ms apart.
    Only a video without timestamps (each frame's not later than the one before) is timed by its index
    and the header fps. A header fps outside ``FPS_RANGE`` is reported in a warning, and not used.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ImageError(f"{path}: not a readable video")
    header_fps = capture.get(cv2.CAP_PROP_FPS)
    sane = FPS_RANGE[0] < header_fps <= FPS_RANGE[1]
    fps = header_fps if sane else FALLBACK_FPS
    if not sane:
        log.warning("%s: the header says %g fps, outside the sane range (%g, %g]: frame times come from the "
                    "container's timestamps (or %g fps where it has none)", path, header_fps, *FPS_RANGE, fps)
    index, timed, base = 0, True, (0, 0.0)  # base: the last timestamped frame (index, seconds)
    try:
        while True:
            ok = capture.grab()
            if not ok:
                break
            stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if timed and not (stamp > base[1] or (index == 0 and stamp >= 0)):
                timed = False  # a repeated or missing timestamp: this container has none to trust
                log.warning("%s: frame %d has no usable timestamp: later frames are timed at %g fps from frame "
                            "%d", path, index, fps, base[0])
            if timed:
                base = (index, stamp)
            seconds = stamp if timed else base[1] + (index - base[0]) / fps
            if index % every == 0:
                ok, frame = capture.retrieve()
                if ok:
                    yield index, seconds, frame
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise ImageError(f"{path}: no frames could be decoded")


def _predict_video(classifier: FaceClassifier, path: Path, every: int, out_dir: Path | None,
                   output: str | None) -> Iterator[dict]:
    import cv2

    timeline: list[tuple[float, np.ndarray | None]] = []
    start = time.perf_counter()
    try:
        for n, (index, seconds, frame) in enumerate(video_frames(path, every), 1):
            faces = classifier.analyse(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            extra = {"frame": index, "time_s": round(seconds, 3)}
            if not faces:
                yield _record(path, None, None, output, **extra)
            for i, face in enumerate(faces):
                yield _record(path, face, i, output, **extra)
            largest = max(faces, key=lambda f: f.box.w * f.box.h) if faces else None
            timeline.append((seconds, largest.probabilities if largest else None))
            if n % 50 == 0:
                log.info("%s: %d frames sampled (%.1f s of video) in %.1f s", path.name, n, seconds,
                         time.perf_counter() - start)
    except ImageError as exc:
        yield _error(path, exc, output if timeline else None)
    if out_dir is not None and output is not None and timeline:
        (out_dir / output).parent.mkdir(parents=True, exist_ok=True)
        plot_timeline(timeline, f"{path.name}: emotions over time (largest face, every {every} frames)",
                      out_dir / output)


def plot_timeline(points: list[tuple[float, np.ndarray | None]], title: str, path: Path) -> Path:
    """Stacked probabilities of the 7 emotions per sampled frame; gaps where no face was found."""
    from fer_ablate.reports.plots import plt, save_figure  # plots selects the headless Agg backend before pyplot loads

    times = np.array([t for t, _ in points])
    probs = np.array([p if p is not None else np.full(len(CLASS_NAMES), np.nan) for _, p in points])
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.stackplot(times, np.nan_to_num(probs).T, labels=CLASS_NAMES, alpha=0.85, step="post")
    missing = np.isnan(probs[:, 0])
    if missing.any():
        ax.scatter(times[missing], np.full(missing.sum(), 0.02), marker="x", color="black", label="no face")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return save_figure(fig, path)


def predict_paths(classifier: FaceClassifier, paths: list[str], out_dir: str | Path | None = None, every: int = 5,
                  crops: bool = False, fmt: str = "jsonl",
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Predict every image and video under ``paths``; return the records (see the module docstring).

    With ``out_dir``, records go to ``out_dir/predictions.{fmt}`` one by one (flushed), and annotated
    images and timelines next to them; ``on_record`` is called with each record as it is made. A missing
    or unreadable input is an error record. The classifier's notices are logged as warnings first and
    carried in each record's ``notice``. Raises ImageError for ``every`` < 1.
    """
    if every < 1:
        raise ImageError(f"--every must be at least 1, got {every}")
    for notice in classifier.notices:
        log.warning("%s", notice)
    files = expand_inputs(paths)
    out = Path(out_dir) if out_dir else None
    names = OutputNames(files)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with RecordWriter(out / f"predictions.{fmt}" if out else None, notice=bool(classifier.notices)) as writer:
        for n, path in enumerate(files, 1):
            for record in _predict_file(classifier, path, every, crops, out, names):
                if classifier.notice:  # absent, not empty, for a model without caveats: records stay as they were
                    record["notice"] = classifier.notice
                records.append(record)
                writer.write(record)
                if on_record is not None:
                    on_record(record)
            if n % 20 == 0 or n == len(files):
                log.info("predict: %d/%d files, %d records, %.1f s", n, len(files), len(records),
                         time.perf_counter() - start)
    return records


def _predict_file(classifier: FaceClassifier, path: Path, every: int, crops: bool, out: Path | None,
                  names: OutputNames) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        problem = "no images or videos in this folder" if path.is_dir() else \
            "not a regular file" if path.exists() else "no such file or folder"
        yield _error(path, ImageError(f"{path}: {problem}"))
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        output = names.claim(path, "timelines", "_timeline.png") if out else None
        yield from _predict_video(classifier, path, every, out, output)
    else:
        output = names.claim(path, "annotated", ".jpg") if out and not crops else None
        yield from _predict_image(classifier, path, crops, out, output)


class RecordWriter:
    """Writes records to JSON lines or CSV (by the path's suffix) one at a time, flushed after each.

    A ``None`` path writes nothing. Use as a context manager; the file is closed on any exit, Ctrl-C too.
    ``notice``: the CSV gets a last column ``notice`` (records of a model with caveats carry one).
    """

    def __init__(self, path: Path | None, notice: bool = False):
        self.path = path
        self.columns = [*CSV_COLUMNS, "notice"] if notice else CSV_COLUMNS
        self.file: IO[str] | None = None
        self.csv: csv.DictWriter | None = None

    def __enter__(self) -> RecordWriter:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("w", newline="" if self.path.suffix == ".csv" else None)
            if self.path.suffix == ".csv":
                self.csv = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
                self.csv.writeheader()
        return self

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to the operating system."""
        if self.file is None:
            return
        if self.csv is not None:
            self.csv.writerow(_csv_row(record))
        else:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    box = r.get("box") or [None] * 4
    probs = r.get("probabilities") or {}
    return {"file": r["file"], "frame": r.get("frame"), "time_s": r.get("time_s"), "face": r["face"],
            **dict(zip("xywh", box, strict=True)), "label": r["label"], "score": r.get("score"),
            **{f"p_{c}": probs.get(c) for c in CLASS_NAMES}, "output": r.get("output"), "message": r["message"],
            "notice": r.get("notice", "")}  # dropped by a writer without the notice column


def write_records(records: list[dict[str, Any]], path: Path) -> Path:
    """JSON lines, or CSV with one probability column per class (by the path's suffix)."""
    with RecordWriter(path, notice=any("notice" in r for r in records)) as writer:
        for record in records:
            writer.write(record)
    return path
