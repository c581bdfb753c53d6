import gzip

import numpy as np
import pytest
from conftest import REAL_FER2013, fer_row
from PIL import Image

from fer_ablate.config.settings import load_defaults
from fer_ablate.data import CLASS_NAMES, DataError, cache, load_dataset, resolve_source
from fer_ablate.data.fer_csv import parse_fer_csv
from fer_ablate.data.folders import read_face
from fer_ablate.data.synthetic import CLASS_PRIORS, make_synthetic_faces
from fer_ablate.paths import cache_dir, project_root


def data_cfg(source, **extra):
    return {**load_defaults()["data"], "source": str(source), **extra}


def test_csv_all_three_usages(fer_csv):
    ds = load_dataset(data_cfg(fer_csv))
    assert ds.source == "fer2013-csv"
    assert ds.sizes() == {"train": 42, "validation": 14, "test": 14}
    assert ds.class_counts("test") == dict.fromkeys(CLASS_NAMES, 2)
    x, y = ds.splits["train"]
    assert x.shape == (42, 48, 48) and x.dtype == np.uint8
    # Pixels are exactly the CSV's numbers, row-major.
    second_line = fer_csv.read_text().splitlines()[1].split(",")
    assert x[0].ravel().tolist() == list(map(int, second_line[1].split()))


def test_fast_and_line_by_line_parsers_agree(fer_csv):
    from fer_ablate.data.fer_csv import _column_order, parse_line

    images, labels, usage, skipped = parse_fer_csv(fer_csv)
    lines = fer_csv.read_bytes().splitlines()
    cols = _column_order(lines[0], fer_csv)
    for i, line in enumerate(lines[1:]):
        label, code, px = parse_line(line, cols)
        assert label == labels[i] and code == usage[i]
        np.testing.assert_array_equal(px.reshape(48, 48), images[i])
    assert not skipped


def test_gzip_and_cache(fer_csv_gz, fer_csv):
    first = load_dataset(data_cfg(fer_csv_gz))
    plain = load_dataset(data_cfg(fer_csv))  # the gzip decompresses to exactly these pixels
    for split in first.splits:
        np.testing.assert_array_equal(first.splits[split][0], plain.splits[split][0])
    cached = list(cache_dir().glob(f"fer2013-{first.digest}-*"))
    assert len(cached) == 1, "parsed arrays are cached under the file's content hash"
    # Prove the second load is a cache hit, not a second parse: invert the cached pixels on disk, and the
    # next load of the unchanged file must return the inverted ones.
    key = cached[0].name.removesuffix(f"-{cache.CACHE_VERSION}.npz")
    arrays = cache.load(key)
    meta = arrays.pop("_meta")
    cache.store(key, {**arrays, "images": 255 - arrays["images"]}, meta)
    second = load_dataset(data_cfg(fer_csv_gz))
    assert second.digest == first.digest
    for split in first.splits:
        np.testing.assert_array_equal(second.splits[split][0], 255 - first.splits[split][0])
    # A changed file is a miss: new content, new key, parsed afresh (one row fewer, true pixels).
    fer_csv_gz.write_bytes(gzip.compress(b"\n".join(fer_csv.read_bytes().splitlines()[:-1]) + b"\n"))
    changed = load_dataset(data_cfg(fer_csv_gz))
    assert changed.digest != first.digest and sum(changed.sizes().values()) == sum(first.sizes().values()) - 1
    np.testing.assert_array_equal(changed.splits["train"][0], first.splits["train"][0])


def test_icml_variant_with_spaced_column_names(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["emotion, Usage, pixels"]
    for label in range(7):
        for usage in ("Training", "PublicTest"):
            row = fer_row(label, usage, rng).split(",")
            rows.append(f"{row[0]},{usage},{row[1]}")
    path = tmp_path / "icml_face_data.csv"
    path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(data_cfg(path))
    assert ds.sizes() == {"train": 7, "validation": 7}
    assert sorted(ds.splits["train"][1].tolist()) == list(range(7))


def test_training_only_csv_carves_validation(tmp_path):
    rng = np.random.default_rng(2)
    rows = ["emotion,pixels,Usage"] + [fer_row(label, "Training", rng) for label in range(7) for _ in range(10)]
    path = tmp_path / "train_only.csv"
    path.write_text("\n".join(rows))  # no trailing newline either
    ds = load_dataset(data_cfg(path, val_fraction=0.2))
    assert ds.sizes() == {"train": 56, "validation": 14}
    assert set(ds.splits["validation"][1].tolist()) == set(range(7))


def _bad_csv(tmp_path, line: str, header="emotion,pixels,Usage"):
    rng = np.random.default_rng(3)
    rows = [header, fer_row(0, "Training", rng), line, fer_row(1, "Training", rng)]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


GOOD_PIXELS = " ".join(["7"] * 2304)
BAD_ROWS = {
    "wrong pixel count": ("3," + " ".join(["7"] * 2303) + ",Training", "expected 2304 pixel values, found 2303"),
    "non-numeric pixel": ("3," + GOOD_PIXELS.replace("7", "x7", 1) + ",Training", "pixel value 'x7'"),
    "pixel over 255": ("3," + GOOD_PIXELS.replace("7", "256", 1) + ",Training", "pixel value '256'"),
    "unknown label": ("9," + GOOD_PIXELS + ",Training", "unknown emotion label '9'"),
    "non-numeric label": ("happy," + GOOD_PIXELS + ",Training", "unknown emotion label 'happy'"),
    "unknown usage": ("3," + GOOD_PIXELS + ",Validation", "unknown Usage value 'Validation'"),
    "missing field": ("3," + GOOD_PIXELS, "expected 3 comma-separated fields, found 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_names_file_line_and_problem(tmp_path, case):
    line, message = BAD_ROWS[case]
    path = _bad_csv(tmp_path, line)
    with pytest.raises(DataError) as err:
        parse_fer_csv(path)
    assert "bad.csv: line 3: " in str(err.value) and message in str(err.value)


def test_skip_bad_rows_counts_and_reports(tmp_path):
    path = _bad_csv(tmp_path, BAD_ROWS["unknown label"][0])
    images, labels, _, skipped = parse_fer_csv(path, skip_bad_rows=True)
    assert len(labels) == 2 and sum(skipped.values()) == 1
    assert "unknown emotion label" in next(iter(skipped))
    ds = load_dataset(data_cfg(path, skip_bad_rows=True))
    assert sum(ds.skipped.values()) == 1


def test_missing_column_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) Usage"):
        parse_fer_csv(_bad_csv(tmp_path, "0,1 2", header="emotion,pixels"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        parse_fer_csv(empty)
    with pytest.raises(DataError, match="nope.csv: file not found"):
        parse_fer_csv(tmp_path / "nope.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match="no valid data rows"):
        parse_fer_csv(header_only)
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(b"emotion,pixels,Usage\n")[:12])
    with pytest.raises(DataError, match="corrupt gzip"):
        parse_fer_csv(corrupt)


def _write_folder_tree(root, splits=("train", "test"), per_class=4):
    rng = np.random.default_rng(4)
    for split in splits:
        for name in CLASS_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = 48 if i % 2 == 0 else 64  # a non-48 image is resized
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}{suffix}")


def test_image_folders_carve_validation(tmp_path):
    _write_folder_tree(tmp_path)
    ds = load_dataset(data_cfg(tmp_path, val_fraction=0.25))
    assert ds.source == "image-folder"
    assert ds.sizes() == {"train": 21, "validation": 7, "test": 28}
    assert ds.class_counts("validation") == dict.fromkeys(CLASS_NAMES, 1)
    # Folder names map to FER2013's label order, whatever their alphabetical order.
    assert ds.class_counts("test")["neutral"] == 4 and CLASS_NAMES.index("neutral") == 6


def test_image_folders_with_val_folder(tmp_path):
    _write_folder_tree(tmp_path, splits=("train", "validation", "test"), per_class=2)
    ds = load_dataset(data_cfg(tmp_path))
    assert ds.sizes() == {"train": 14, "validation": 14, "test": 14}


def test_unreadable_image_and_unknown_class_folder(tmp_path):
    _write_folder_tree(tmp_path, per_class=1)
    bad = tmp_path / "train" / "fear" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_dataset(data_cfg(tmp_path))
    skipped = load_dataset(data_cfg(tmp_path, skip_bad_rows=True))
    assert skipped.skipped == {"unreadable image": 1}
    bad.unlink()
    (tmp_path / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match="class folder 'contempt' has no FER2013 class.*move it out"):
        load_dataset(data_cfg(tmp_path))
    (tmp_path / "train" / "contempt").rmdir()
    (tmp_path / "train" / "smirk").mkdir()
    with pytest.raises(DataError, match="unknown class folder 'smirk'; expected angry, disgust"):
        load_dataset(data_cfg(tmp_path))


def test_class_folders_spelled_as_other_fer_datasets_do(tmp_path):
    """FER+ / AffectNet / RAF-DB folder names (Anger, Happiness, Fearful, ...) map to FER2013's classes."""
    _write_folder_tree(tmp_path, per_class=1)
    renames = {"angry": "Anger", "fear": "Fearful", "happy": "Happiness", "sad": "SADNESS", "surprise": "surprised",
               "disgust": "Disgusted"}
    for split in ("train", "test"):
        for old, new in renames.items():
            (tmp_path / split / old).rename(tmp_path / split / new)
    ds = load_dataset(data_cfg(tmp_path, val_fraction=0.5))
    assert sorted(ds.splits["test"][1]) == list(range(7))  # every class found, each under its own label
    x, y = ds.splits["test"]
    expected = read_face(tmp_path / "test" / "Happiness" / "0.jpg")
    np.testing.assert_array_equal(x[list(y).index(CLASS_NAMES.index("happy"))], expected)


def test_synthetic_faces_priors_and_determinism():
    x1, y1 = make_synthetic_faces(3000, seed=5)
    x2, y2 = make_synthetic_faces(3000, seed=5)
    np.testing.assert_array_equal(x1, x2)
    freq = np.bincount(y1, minlength=7) / len(y1)
    assert freq.argmax() == 3  # happy is the most frequent
    assert 0.005 < freq[1] < 0.03  # disgust about 1.5%
    np.testing.assert_allclose(freq, CLASS_PRIORS, atol=0.02)
    assert x1.std() > 20 and 50 < x1.mean() < 200


def test_auto_resolution(tmp_path, monkeypatch, fer_csv):
    monkeypatch.delenv("FER_DATA", raising=False)
    assert resolve_source("auto") in ("synthetic", str(project_root() / "data" / "fer2013.csv"))
    monkeypatch.setenv("FER_DATA", str(fer_csv))
    assert resolve_source("auto") == str(fer_csv)
    with pytest.raises(DataError, match="not found"):
        resolve_source(str(tmp_path / "missing.csv"))


def test_limits_are_stratified(fer_csv):
    ds = load_dataset(data_cfg(fer_csv, train_limit=14, eval_limit=7))
    assert ds.sizes() == {"train": 14, "validation": 7, "test": 7}
    assert set(ds.splits["train"][1].tolist()) == set(range(7))


@pytest.mark.skipif(not REAL_FER2013.is_file(), reason=f"real FER2013 copy not present at {REAL_FER2013}")
def test_real_fer2013_documented_class_counts():
    ds = load_dataset(data_cfg(REAL_FER2013))
    assert ds.sizes() == {"train": 28709, "validation": 3589}
    assert ds.class_counts("train") == {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215,
                                        "sad": 4830, "surprise": 3171, "neutral": 4965}
    assert ds.class_counts("validation") == {"angry": 467, "disgust": 56, "fear": 496, "happy": 895,
                                             "sad": 653, "surprise": 415, "neutral": 607}


def test_numpy_fallback_matches_c_fast_path(fer_csv, tmp_path, monkeypatch):
    """Where the C extension could not be built, the numpy path gives the same arrays and errors."""
    from fer_ablate.data import fer_csv as parser

    with_c = parser.parse_fer_csv(fer_csv)
    monkeypatch.setattr(parser, "_fastcsv", None)
    without_c = parser.parse_fer_csv(fer_csv)
    for a, b in zip(with_c[:3], without_c[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    line, message = BAD_ROWS["pixel over 255"]
    with pytest.raises(DataError, match=f"line 3: .*{message}"):
        parser.parse_fer_csv(_bad_csv(tmp_path, line))


def test_c_fast_path_is_built():
    """The install compiles the optional C parser (gcc is on every machine of ours); say so if not."""
    from fer_ablate.data import fer_csv as parser

    assert parser._fastcsv is not None, "fer_ablate/data/_fastcsv.c was not compiled: pip install -e . again"


def test_test_fraction_carves_a_fixed_stratified_held_out_split_from_training(fer_csv, tmp_path):
    from fer_ablate.config.settings import load_defaults
    from fer_ablate.data import load_dataset

    no_private = tmp_path / "no_private.csv"
    no_private.write_text("".join(line for line in fer_csv.read_text().splitlines(keepends=True)
                                  if not line.rstrip().endswith("PrivateTest")))
    cfg = {**load_defaults()["data"], "source": str(no_private), "test_fraction": 0.5}
    first, again = load_dataset(cfg), load_dataset(cfg)
    assert first.sizes() == {"train": 21, "validation": 14, "test": 21}  # 6 Training faces per class, half held out
    assert sorted(np.bincount(first.splits["test"][1])) == [3] * 7  # stratified
    np.testing.assert_array_equal(first.splits["test"][0], again.splits["test"][0])  # seeded: every variant's
    held = {x.tobytes() for x in first.splits["test"][0]}
    assert not held & {x.tobytes() for x in first.splits["train"][0]}
    # A file with its own PrivateTest keeps it as the test split; the fraction is not used.
    own = load_dataset({**cfg, "source": str(fer_csv)})
    assert own.sizes() == {"train": 42, "validation": 14, "test": 14}
