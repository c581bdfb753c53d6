"""``fer-ablate predict``: photos, folders and videos in; per-face labels, annotated images and timelines out.

Records (JSON lines or CSV): one per face with file, frame (videos), box, label and the 7 probabilities;
a photo without a face gives one record with ``message: no face found``; an unreadable file gives one
with its error, and the run goes on. Annotated copies (box, label, top-3) and, per video, a PNG timeline
of the emotions over time go next to the records.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate.data import CLASS_NAMES
from fer_ablate.inference.faces import ImageError, read_image
from fer_ablate.inference.pyfunc_model import FaceClassifier, FacePrediction

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders as their images and videos (sorted, recursive); a missing path is an error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ImageError(f"{path}: no such file or folder")
    return found


def _record(source: Path, face: FacePrediction | None, index: int | None, **extra: Any) -> dict[str, Any]:
    message = extra.pop("message", "no face found")
    base = {"file": str(source), **extra}
    if face is None:
        return {**base, "face": None, "box": None, "label": None, "message": message}
    return {**base, "face": index, **face.as_dict(), "message": ""}


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


def _predict_image(classifier: FaceClassifier, path: Path, crops: bool, out_dir: Path | None) -> list[dict]:
    import cv2

    try:
        grey = read_image(path)
    except ImageError as exc:
        log.error("%s", exc)
        return [_record(path, None, None, message=f"error: {exc}")]
    faces = classifier.analyse(grey, crops_mode=crops)
    if out_dir is not None and not crops:
        colour = cv2.imread(str(path), cv2.IMREAD_COLOR)
        colour = colour if colour is not None else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        (out_dir / "annotated").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_dir / "annotated" / f"{path.stem}.jpg"), annotate(colour, faces))
    if not faces:
        return [_record(path, None, None)]
    return [_record(path, f, i) for i, f in enumerate(faces)]


def video_frames(path: Path, every: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, seconds, BGR frame)`` for one frame in ``every``; ImageError if unreadable."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ImageError(f"{path}: not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    index = 0
    try:
        while True:
            ok = capture.grab()
            if not ok:
                break
            if index % every == 0:
                ok, frame = capture.retrieve()
                if ok:
                    yield index, index / fps, frame
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise ImageError(f"{path}: no frames could be decoded")


def _predict_video(classifier: FaceClassifier, path: Path, every: int, out_dir: Path | None) -> list[dict]:
    import cv2

    records: list[dict] = []
    timeline: list[tuple[float, np.ndarray | None]] = []
    start = time.perf_counter()
    try:
        for n, (index, seconds, frame) in enumerate(video_frames(path, every), 1):
            faces = classifier.analyse(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            extra = {"frame": index, "time_s": round(seconds, 3)}
            records += [_record(path, f, i, **extra) for i, f in enumerate(faces)] or [_record(path, None, None,
                                                                                              **extra)]
            largest = max(faces, key=lambda f: f.box.w * f.box.h) if faces else None
            timeline.append((seconds, largest.probabilities if largest else None))
            if n % 50 == 0:
                log.info("%s: %d frames sampled (%.1f s of video) in %.1f s", path.name, n, seconds,
                         time.perf_counter() - start)
    except ImageError as exc:
        log.error("%s", exc)
        return records + [_record(path, None, None, message=f"error: {exc}")]
    if out_dir is not None and timeline:
        plot_timeline(timeline, f"{path.name}: emotions over time (largest face, every {every} frames)",
                      out_dir / f"{path.stem}_timeline.png")
    return records


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
                  crops: bool = False, fmt: str = "jsonl") -> list[dict[str, Any]]:
    """Predict every image and video under ``paths``; write records (and images) to ``out_dir`` if given."""
    if every < 1:
        raise ImageError(f"--every must be at least 1, got {every}")
    files = expand_inputs(paths)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for n, path in enumerate(files, 1):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            records += _predict_video(classifier, path, every, out)
        else:
            records += _predict_image(classifier, path, crops, out)
        if n % 20 == 0 or n == len(files):
            log.info("predict: %d/%d files, %d records, %.1f s", n, len(files), len(records),
                     time.perf_counter() - start)
    if out:
        write_records(records, out / f"predictions.{fmt}")
    return records


def write_records(records: list[dict[str, Any]], path: Path) -> Path:
    """JSON lines, or CSV with one probability column per class."""
    if path.suffix == ".csv":
        columns = ["file", "frame", "time_s", "face", "x", "y", "w", "h", "label", "score",
                   *[f"p_{c}" for c in CLASS_NAMES], "message"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for r in records:
                box = r.get("box") or [None] * 4
                probs = r.get("probabilities") or {}
                writer.writerow({"file": r["file"], "frame": r.get("frame"), "time_s": r.get("time_s"),
                                 "face": r["face"], **dict(zip("xywh", box, strict=True)), "label": r["label"],
                                 "score": r.get("score"), **{f"p_{c}": probs.get(c) for c in CLASS_NAMES},
                                 "message": r["message"]})
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
