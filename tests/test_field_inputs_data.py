"""Data files users bring (issue 15, items 1-6): each kind loads right, pixel for pixel, or fails in one line.

Every input is generated here: FER2013 CSVs in the dialects spreadsheets and scripts write, the archives
Kaggle and mirrors ship, held-out files without Training rows, images in every encoding a camera or an
editor produces, and image-folder trees with the litter real folders carry.
"""

import gzip
import io
import json
import logging
import lzma
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from fer_ablate.config.settings import load_defaults
from fer_ablate.data import CLASS_NAMES, DataError, load_dataset
from fer_ablate.data import fer_csv as parser
from fer_ablate.data.images import IMAGE_SUFFIXES, decode_grey, read_grey
from fer_ablate.data.synthetic import make_synthetic_faces

ROWS = [(label, usage) for usage in ("Training", "PublicTest", "PrivateTest") for label in range(7)]


def data_cfg(source, **extra):
    return {**load_defaults()["data"], "source": str(source), **extra}


def _pixels(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 48 * 48) for _ in ROWS]


def _plain_text(pixels, rows=ROWS) -> str:
    return "emotion,pixels,Usage\n" + "".join(f"{lab},{' '.join(map(str, px))},{use}\n"
                                              for (lab, use), px in zip(rows, pixels, strict=True))


def _dialect(name: str, pixels) -> bytes:
    """The same rows as _plain_text, written the way one tool or another writes CSV."""
    plain = _plain_text(pixels)
    lines = [(lab, " ".join(map(str, px)), use) for (lab, use), px in zip(ROWS, pixels, strict=True)]
    if name == "utf8_bom":
        return b"\xef\xbb\xbf" + plain.encode()
    if name == "quoted":  # csv.QUOTE_ALL, as Excel and R's write.csv do
        return ('"emotion","pixels","Usage"\r\n' + "".join(f'"{a}","{b}","{c}"\r\n' for a, b, c in lines)).encode()
    if name == "quoted_pixels_only":
        return ("emotion,pixels,Usage\n" + "".join(f'{a},"{b}",{c}\n' for a, b, c in lines)).encode()
    if name == "bare_cr":
        return plain.replace("\n", "\r").encode()
    if name == "crlf":
        return plain.replace("\n", "\r\n").encode()
    if name == "float_labels":  # pandas writes 3.0 once the column held a NaN
        return ("emotion,pixels,Usage\n" + "".join(f"{a}.0,{b},{c}\n" for a, b, c in lines)).encode()
    if name == "semicolon":  # spreadsheets in locales with a decimal comma
        return plain.replace(",", ";").encode()
    if name == "tab":
        return plain.replace(",", "\t").encode()
    if name == "utf16":  # "Unicode text" from a spreadsheet
        return plain.encode("utf-16")
    if name == "bom_quoted_cr_spaced_header":
        return b"\xef\xbb\xbf" + ('"Emotion", "Pixels", "Usage"\r' +
                                  "".join(f'"{a}","{b}",{c}\r' for a, b, c in lines)).encode()
    if name == "notes_with_quotes_and_commas":  # a 4th column only the csv module reads right
        return ("emotion,pixels,Usage,note\n" + "".join(f'{a},{b},{c},"said ""hi"", then left"\n'
                                                       for a, b, c in lines)).encode()
    if name == "pixels_wrapped_over_lines":  # a quoted field may hold line breaks
        cut = [b.index(" ", 3000) for _, b, _ in lines]
        return ("emotion,pixels,Usage\n" + "".join(f'{a},"{b[:k]}\n{b[k + 1:]}",{c}\n'
                                                    for (a, b, c), k in zip(lines, cut, strict=True))).encode()
    raise AssertionError(name)


DIALECTS = ["utf8_bom", "quoted", "quoted_pixels_only", "bare_cr", "crlf", "float_labels", "semicolon", "tab",
            "utf16", "bom_quoted_cr_spaced_header", "notes_with_quotes_and_commas", "pixels_wrapped_over_lines"]


@pytest.fixture(params=["C", "numpy"])
def parser_path(request, monkeypatch):
    """Both parser paths that remain: the C extension and the numpy fallback used without a compiler."""
    if request.param == "C":
        assert parser._fastcsv is not None, "the C extension is not built: pip install -e ."
    else:
        monkeypatch.setattr(parser, "_fastcsv", None)
    return request.param


@pytest.mark.parametrize("dialect", DIALECTS)
def test_csv_dialects_parse_to_the_same_arrays(tmp_path, parser_path, dialect):
    pixels = _pixels()
    path = tmp_path / f"{dialect}.csv"
    path.write_bytes(_dialect(dialect, pixels))
    images, labels, usage, skipped = parser.parse_fer_csv(path)
    assert not skipped
    assert labels.tolist() == [lab for lab, _ in ROWS]
    assert usage.tolist() == [parser._USAGE_CODE[u.encode()] for _, u in ROWS]
    np.testing.assert_array_equal(images, np.stack(pixels).reshape(-1, 48, 48).astype(np.uint8))


@pytest.mark.parametrize("dialect", ["plain", "quoted", "bare_cr"])
def test_fractional_label_is_refused_with_file_and_line(tmp_path, parser_path, dialect):
    pixels = _pixels()
    data = _plain_text(pixels).encode() if dialect == "plain" else _dialect(dialect, pixels)
    newline = b"\r\n" if dialect == "quoted" else b"\r" if dialect == "bare_cr" else b"\n"
    lines = data.split(newline)
    quote = b'"' if dialect == "quoted" else b""
    lines[5] = quote + b"3.5" + lines[5][len(quote) + 1:]  # line 6 of the file
    path = tmp_path / "half.csv"
    path.write_bytes(newline.join(lines))
    with pytest.raises(DataError) as err:
        parser.parse_fer_csv(path)
    assert str(err.value) == f"{path}: line 6: emotion label '3.5' is not a whole number (expected 0-6)"


def test_pandas_index_column_and_blank_lines(tmp_path, parser_path):
    """``df.to_csv()`` without ``index=False`` adds an unnamed first column; editors leave blank lines."""
    pixels = _pixels()
    lines = _plain_text(pixels).splitlines()
    text = "," + lines[0] + "\n" + "".join(f"{i},{line}\n" + ("   \n" if i == 3 else "")
                                            for i, line in enumerate(lines[1:]))
    path = tmp_path / "indexed.csv"
    path.write_text(text + "\n\n")
    images, labels, _, skipped = parser.parse_fer_csv(path)
    assert not skipped and labels.tolist() == [lab for lab, _ in ROWS]
    np.testing.assert_array_equal(images, np.stack(pixels).reshape(-1, 48, 48))


def test_line_numbers_count_lines_of_the_file_as_given(tmp_path, parser_path):
    """After rows that span two lines (read by the csv module), a bad row is still named by its own line."""
    data = _dialect("pixels_wrapped_over_lines", _pixels()).split(b"\n")
    data[10] = data[10].replace(b",Training", b",Trainig")  # row 5 spans lines 10-11 of the file
    path = tmp_path / "wrapped.csv"
    path.write_bytes(b"\n".join(data))
    with pytest.raises(DataError, match=r"wrapped.csv: line 10: unknown Usage value 'Trainig'"):
        parser.parse_fer_csv(path)
    images, labels, _, skipped = parser.parse_fer_csv(path, skip_bad_rows=True)
    assert len(labels) == len(ROWS) - 1 and dict(skipped) == {"unknown Usage value 'Trainig'": 1}


def _assert_one_short_line(message: str, limit: int = 300):
    assert "\n" not in message and "\r" not in message and len(message) < limit, message


def _kaggle_tar(csv_bytes: bytes) -> bytes:
    """fer2013.tar as Kaggle ships it: fer2013/fer2013.csv next to a README and a .bib, plus macOS litter."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("fer2013/README", b"FER2013\n"), ("fer2013/fer2013.bib", b"@misc{}\n"),
                           ("fer2013/._fer2013.csv", b"\x00\x05\x16\x07"), ("fer2013/fer2013.csv", csv_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["fer2013.tar.gz", "fer2013", "fer2013.zip", "fer2013.tar.xz", "nested.zip"])
def test_archive_with_one_csv_is_read(tmp_path, kind):
    pixels = _pixels()
    csv_bytes = _plain_text(pixels).encode()
    tar = _kaggle_tar(csv_bytes)
    data = {"fer2013.tar.gz": gzip.compress(tar), "fer2013": tar, "fer2013.tar.xz": lzma.compress(tar),
            "fer2013.zip": _zip({"fer2013.csv": csv_bytes, "__MACOSX/._fer2013.csv": b"\x00"}),
            "nested.zip": _zip({"data/fer2013.csv.gz": gzip.compress(csv_bytes), "data/README.md": b"x"})}[kind]
    path = tmp_path / kind
    path.write_bytes(data)
    ds = load_dataset(data_cfg(path))
    assert ds.sizes() == {"train": 7, "validation": 7, "test": 7}
    np.testing.assert_array_equal(ds.splits["test"][0], np.stack(pixels[14:]).reshape(-1, 48, 48))


ARCHIVE_REFUSALS = {
    "several CSVs": (_zip({"train.csv": b"x", "test.csv": b"x", "icml_face_data.csv": b"x"}),
                     "a zip archive holding 3 CSV files (train.csv, test.csv, icml_face_data.csv): extract it "
                     "and pass the one you mean"),
    "image folders": (_zip({"train/happy/1.jpg": b"x", "test/sad/2.png": b"x"}),
                      "a zip archive holding 2 images (in test, train): extract it and pass the folder that "
                      "holds train/ and test/"),
    "7z": (b"7z\xbc\xaf\x27\x1c" + bytes(range(256)) * 20, "a 7-Zip archive: extract it (7z x) and pass the CSV "
                                                           "inside"),
    "excel": (_zip({"[Content_Types].xml": b"x", "xl/workbook.xml": b"x"}),
              "an Excel workbook, not a CSV: save it as CSV (UTF-8)"),
    "binary": (bytes(range(256)) * 40, "a binary file, not a CSV"),
}


@pytest.mark.parametrize("case", sorted(ARCHIVE_REFUSALS))
def test_archive_or_binary_is_refused_in_one_line(tmp_path, case):
    data, expected = ARCHIVE_REFUSALS[case]
    path = tmp_path / "download"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_dataset(data_cfg(path))
    assert str(err.value).startswith(f"{path}: {expected}")
    _assert_one_short_line(str(err.value))


def test_tar_without_a_csv_says_what_it_holds(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("fer2013/README", "fer2013/fer2013.bib"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    path = tmp_path / "fer2013.tar.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"a tar.gz archive holding 2 files \(fer2013/README, fer2013/fer2013.bib\)"
                                        r", no CSV: pass a FER2013 CSV or an image folder"):
        load_dataset(data_cfg(path))


BAD_DATA = {  # a row or header whose offending text is long, binary or multi-line: shown in one short line
    "long pixel token": ("3," + "7 " * 2303 + "x" * 9000 + ",Training", "pixel value 'xxxxxxxx"),
    "binary label": ("\x00\x01\x02" * 3000 + "," + " ".join(["7"] * 2304) + ",Training", "unknown emotion label"),
    "long usage": ("3," + " ".join(["7"] * 2304) + "," + "Tr\tain" * 2000, "unknown Usage value 'Tr\\tain"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_quoted_in_one_short_line(tmp_path, parser_path, case):
    line, expected = BAD_DATA[case]
    path = tmp_path / "bad.csv"
    path.write_text(_plain_text(_pixels()[:2], ROWS[:2]) + line + "\n")
    with pytest.raises(DataError) as err:
        parser.parse_fer_csv(path)
    assert f"bad.csv: line 4: {expected}" in str(err.value)
    _assert_one_short_line(str(err.value))


def test_header_garbage_is_quoted_in_one_short_line(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"\x7fELF" + b"\xfe\xfa,\x01" * 5000 + b"\n1,2,3\n")
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) emotion, pixels, Usage") as err:
        load_dataset(data_cfg(path))
    _assert_one_short_line(str(err.value), 400)


def test_kaggle_challenge_csv_without_usage_says_which_file_to_use(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("emotion,pixels\n0," + " ".join(["7"] * 2304) + "\n")
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) Usage; found \['emotion', 'pixels'\], "
                                        r"expected emotion, pixels, Usage; Kaggle's train.csv and test.csv have "
                                        r"no Usage: use fer2013.csv or icml_face_data.csv"):
        load_dataset(data_cfg(path))


# Item 3: held-out files and folders (no Training rows) load for evaluation; training refuses them.


def test_held_out_csv_loads_for_evaluation_only(tmp_path):
    rows = [(label, "PrivateTest") for label in range(7)]
    path = tmp_path / "held_out.csv"
    path.write_text(_plain_text(_pixels()[:7], rows))
    ds = load_dataset(data_cfg(path), purpose="evaluate")
    assert ds.sizes() == {"test": 7}
    with pytest.raises(DataError) as err:
        load_dataset(data_cfg(path))
    assert str(err.value) == (f"{path}: no Training rows (only 7 PrivateTest): training needs them; to score a "
                              f"saved model on it: fer-ablate evaluate --model MODEL --data {path}")
    public = tmp_path / "public.csv"
    public.write_text(_plain_text(_pixels()[:7], [(label, "PublicTest") for label in range(7)]))
    assert load_dataset(data_cfg(public), purpose="evaluate").sizes() == {"validation": 7}


def test_evaluate_and_train_commands_on_a_held_out_file(tmp_path, capsys):
    from fer_ablate.cli import main
    from fer_ablate.config.settings import resolve_config
    from fer_ablate.training.loop import build_models

    path = tmp_path / "held_out.csv"
    path.write_text(_plain_text(_pixels()[:7], [(label, "PrivateTest") for label in range(7)]))
    model, _, _ = build_models(resolve_config("paper", tiny_overrides()))
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    assert main(["evaluate", "--model", str(model_path), "--data", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["splits"]) == ["test"] and report["splits"]["test"]["n"] == 7
    assert main(["train", "--data", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) != 0
    assert "held_out.csv: no Training rows (only 7 PrivateTest)" in capsys.readouterr().err


def test_held_out_folder_loads_for_evaluation_only(tmp_path):
    _write_tree(tmp_path, {"Test": CLASS_NAMES})
    assert load_dataset(data_cfg(tmp_path), purpose="evaluate").sizes() == {"test": 14}
    with pytest.raises(DataError, match=r"no train/ folder \(only 14 test\): training needs one"):
        load_dataset(data_cfg(tmp_path))


# Item 4: one decoder; pixel values compared with the same face saved as an 8-bit PNG.


def _face(height=60, width=44) -> np.ndarray:
    """A synthetic face, not symmetric under rotation, so a sideways load cannot pass."""
    faces, _ = make_synthetic_faces(8, seed=3)
    face = np.array(Image.fromarray(faces[0]).resize((width, height), Image.Resampling.BILINEAR))
    face[:6, :10] = 0  # a dark corner marks "up"
    return face


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _rotated_with_exif(face: np.ndarray) -> bytes:
    """The face stored sideways (as a phone sensor reads it) with EXIF orientation 6 ("rotate 90 CW")."""
    stored = Image.fromarray(np.rot90(face, 1))  # counter-clockwise: viewers turn it clockwise back
    exif = stored.getexif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=100, exif=exif)


EXACT_ENCODINGS = {
    "png16": lambda f: _encode(Image.fromarray(f.astype(np.uint16) * 257), "PNG"),
    "tiff16": lambda f: _encode(Image.fromarray(f.astype(np.uint16) * 257), "TIFF"),
    "rgba_opaque": lambda f: _encode(Image.fromarray(np.dstack([f, f, f, np.full_like(f, 255)])), "PNG"),
    "la_opaque": lambda f: _encode(Image.fromarray(np.dstack([f, np.full_like(f, 255)]), "LA"), "PNG"),
    "palette": lambda f: _encode(Image.fromarray(f).convert("P"), "PNG"),
    "gif": lambda f: _encode(Image.fromarray(f), "GIF"),
    "webp_lossless": lambda f: _encode(Image.fromarray(f), "WEBP", lossless=True),
    "tiff": lambda f: _encode(Image.fromarray(f), "TIFF"),
    "bmp_rgb": lambda f: _encode(Image.fromarray(np.dstack([f, f, f])), "BMP"),
    "pgm": lambda f: _encode(Image.fromarray(f), "PPM"),
}
CLOSE_ENCODINGS = {  # lossy or colour-converted: within a few grey levels of the reference
    "jpeg_exif_rotated": _rotated_with_exif,
    "cmyk_jpeg": lambda f: _encode(Image.fromarray(np.dstack([f, f, f])).convert("CMYK"), "JPEG", quality=100),
    "webp_lossy": lambda f: _encode(Image.fromarray(f), "WEBP", quality=100),
    # Radiance HDR: Pillow does not identify it, so OpenCV decodes it (floats in [0, 1] scaled to 0-255).
    "hdr_float_opencv": lambda f: _cv2_encode(".hdr", np.dstack([f, f, f]).astype(np.float32) / 255),
}


def _cv2_encode(suffix: str, pixels: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(suffix, pixels)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("kind", sorted(EXACT_ENCODINGS) + sorted(CLOSE_ENCODINGS))
def test_every_encoding_decodes_like_the_8bit_png(kind):
    face = _face()
    reference = decode_grey(_encode(Image.fromarray(face), "PNG"))
    np.testing.assert_array_equal(reference, face)
    decoded = decode_grey({**EXACT_ENCODINGS, **CLOSE_ENCODINGS}[kind](face), kind)
    assert decoded.shape == face.shape and decoded.dtype == np.uint8
    diff = np.abs(decoded.astype(int) - reference)
    if kind in EXACT_ENCODINGS:
        assert diff.max() == 0
    else:
        assert diff.mean() < 2.0 and diff.max() <= 12, (diff.mean(), diff.max())


def test_transparency_is_composited_onto_white():
    face = _face()
    alpha = np.zeros_like(face)
    alpha[:, face.shape[1] // 2:] = 255
    alpha[:4] = 128
    decoded = decode_grey(_encode(Image.fromarray(np.dstack([face, face, face, alpha])), "PNG"))
    expected = (face.astype(int) * alpha + 255 * (255 - alpha.astype(int)) + 127) // 255
    np.testing.assert_array_equal(decoded, expected)
    assert (decoded[10:, : face.shape[1] // 2] == 255).all()


def test_folder_loader_predict_and_serving_share_the_decoder(tmp_path):
    """The same files through the folder loader and through predict's reader give the same pixels."""
    from fer_ablate.inference.faces import as_crop, decode_image, read_image
    from fer_ablate.inference.predict import IMAGE_SUFFIXES as PREDICT_SUFFIXES

    assert PREDICT_SUFFIXES == IMAGE_SUFFIXES  # one list of image suffixes
    face = _face(48, 48)
    folder = tmp_path / "test" / "happy"
    folder.mkdir(parents=True)
    files = {"a.png": EXACT_ENCODINGS["png16"](face), "b.jpg": _rotated_with_exif(face),
             "c.webp": EXACT_ENCODINGS["webp_lossless"](face), "d.tif": EXACT_ENCODINGS["tiff16"](face)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    _write_tree(tmp_path, {"test": [c for c in CLASS_NAMES if c != "happy"]})
    x, y = load_dataset(data_cfg(tmp_path), purpose="evaluate").splits["test"]
    loaded = x[y == CLASS_NAMES.index("happy")]
    for i, (name, data) in enumerate(sorted(files.items())):
        np.testing.assert_array_equal(loaded[i], as_crop(read_image(folder / name)), err_msg=name)
        np.testing.assert_array_equal(loaded[i], as_crop(decode_image(data, name)), err_msg=name)
    # The 16-bit PNG is the face itself, not nearly white (the old loader gave a mean of 254.5).
    np.testing.assert_array_equal(loaded[0], face)


def test_decompression_bomb_is_refused_before_decoding():
    # A 70-byte PNG whose header declares 20,000 x 20,000 = 400 M pixels (400 MB once decoded).
    data = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    with pytest.raises(DataError, match=r"bomb.png: (20000x20000 pixels is )?over the 40,000,000 pixel limit"):
        decode_grey(data, "bomb.png")


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    with pytest.raises(DataError, match="x.jpg: not a readable image"):
        decode_grey(b"GIF89a nonsense", "x.jpg")
    with pytest.raises(DataError, match="nope.png: No such file"):
        read_grey(tmp_path / "nope.png")


# Items 5 and 6: split folder names without case; hidden files ignored; everything else counted.


def _write_tree(root, layout: dict[str, list[str]], per_class: int = 2):
    rng = np.random.default_rng(7)
    for split, classes in layout.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("names", [("Train", "Test", "Val"), ("TRAIN", "testing", "Validation"),
                                   ("training", "TEST", "valid"), ("train", "Test", "dev")])
def test_split_folders_match_without_case(tmp_path, names):
    _write_tree(tmp_path, dict.fromkeys(names, list(CLASS_NAMES)))
    ds = load_dataset(data_cfg(tmp_path))
    assert ds.sizes() == {"train": 14, "validation": 14, "test": 14}
    assert not ds.skipped


def test_unrecognised_split_folder_is_reported(tmp_path, caplog):
    _write_tree(tmp_path, {"train": CLASS_NAMES, "test_old": CLASS_NAMES, "holdout": CLASS_NAMES})
    with caplog.at_level(logging.WARNING, logger="fer_ablate.data"):
        ds = load_dataset(data_cfg(tmp_path))
    assert "test" not in ds.splits
    for name in ("holdout", "test_old"):
        assert any(f"folder '{name}' is not a split name" in r.getMessage() for r in caplog.records), name
        assert ds.skipped[f"folder not a split name ({name})"] == 1


def test_two_folders_for_one_split_are_refused(tmp_path):
    _write_tree(tmp_path, {"train": CLASS_NAMES, "val": CLASS_NAMES, "Validation": CLASS_NAMES})
    with pytest.raises(DataError, match="both 'Validation' and 'val' are the validation split: keep one"):
        load_dataset(data_cfg(tmp_path))


def test_hidden_files_ignored_and_unused_files_counted_and_recorded(tmp_path, caplog):
    import mlflow

    from fer_ablate.tracking import log_dataset

    _write_tree(tmp_path, {"train": CLASS_NAMES, "test": CLASS_NAMES})
    happy = tmp_path / "train" / "happy"
    (happy / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (happy / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork: not a PNG
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints" / "x-checkpoint.png").write_bytes(b"junk")
    (happy / ".ipynb_checkpoints").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._train").write_bytes(b"junk")
    (tmp_path / ".hidden_split").mkdir()
    # Not loaded, and counted: a nested folder, other file types, files outside class folders.
    (happy / "more").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(happy / "more" / f"{i}.png")
    (happy / "notes.txt").write_text("x")
    (happy / "face.psd").write_bytes(b"8BPS")
    (tmp_path / "train" / "labels.csv").write_text("x")
    (tmp_path / "README.md").write_text("x")
    with caplog.at_level(logging.WARNING, logger="fer_ablate.data"):
        ds = load_dataset(data_cfg(tmp_path, val_fraction=0.5))
    assert ds.sizes() == {"train": 7, "validation": 7, "test": 14}
    expected = {"file in a sub-folder of a class folder": 3, "unsupported file type (.txt)": 1,
                "unsupported file type (.psd)": 1, "file outside class folders": 1, "file outside split folders": 1}
    assert ds.skipped == expected
    summary = [r.getMessage() for r in caplog.records if "not loaded:" in r.getMessage()]
    assert len(summary) == 1
    assert "3 file in a sub-folder of a class folder" in summary[0] and "1 unsupported file type (.psd)" in summary[0]
    # An MLflow experiment of its own with artifacts in tmp_path (set_experiment would put them in ./mlruns
    # and export MLFLOW_EXPERIMENT_ID to every later test).
    experiment_id = mlflow.MlflowClient().create_experiment(f"field-inputs-data-{tmp_path.name}",
                                                            artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_dataset(ds)
    recorded = mlflow.get_run(run.info.run_id)
    assert recorded.data.metrics["data_skipped_rows"] == sum(expected.values())
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data_skipped_rows.json",
                                                dst_path=str(tmp_path / "dl"))
    with open(local) as f:
        assert json.load(f) == expected


def test_split_folders_one_level_down_say_which_folder_to_pass(tmp_path):
    _write_tree(tmp_path / "archive", {"train": CLASS_NAMES})
    with pytest.raises(DataError, match=r"no split folders .*the split folders are in .*archive: pass that folder"):
        load_dataset(data_cfg(tmp_path))


def test_class_folders_without_split_folders_say_where_to_put_them(tmp_path):
    _write_tree(tmp_path, {".": CLASS_NAMES})
    with pytest.raises(DataError, match=r"class folders without split folders: move them into .*/train/"):
        load_dataset(data_cfg(tmp_path))
