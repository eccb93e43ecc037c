"""fer_dist.data: FER-2013 CSVs, image folders, splits, and one-line errors for bad input."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_dist import EMOTIONS
from fer_dist.data import Split, class_counts, load, read_csv, read_image_folder, stratified_split
from fer_dist.errors import UserError

REAL_FILE = Path(__file__).parents[1] / "../shared/data/fer2013/fer2013.csv.gz"
HEADER = "emotion,pixels,Usage"
PNG_MAGIC = b"\x89PNG"


def pixels(value: int = 7, n: int = 2304) -> str:
    return " ".join([str(value)] * n)


def write(path: Path, lines: list[str], gz: bool = False) -> str:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def rows(usage: str, n: int, first_label: int = 0) -> list[str]:
    """n rows of `usage` cycling through the labels; pixel value = label * 10 + row % 3."""
    return [f"{(first_label + i) % 7},{pixels(((first_label + i) % 7) * 10 + i % 3)},{usage}" for i in range(n)]


def error_of(uri: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load(uri, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------
# CSV: good files
# ------------------------------------------------------------------------------
def test_csv_splits_map_from_usage(tmp_path):
    uri = write(tmp_path / "f.csv", [HEADER, *rows("Training", 14), *rows("PublicTest", 7), *rows("PrivateTest", 8)])
    ds = load(uri)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (14, 7, 8)
    assert ds.source == uri and ds.notes == ()
    assert ds.train.images.shape == (14, 48, 48) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64
    assert ds.train.labels.tolist() == [i % 7 for i in range(14)]
    assert ds.train.images[:, 0, 0].tolist() == [(i % 7) * 10 + i % 3 for i in range(14)]
    assert ds.test.labels.tolist() == [i % 7 for i in range(8)]


@pytest.mark.parametrize("name", ["f.csv.gz", "gzipped-but-named.csv"])
def test_gzip_is_detected_by_magic_bytes(tmp_path, name):
    uri = write(tmp_path / name, [HEADER, *rows("Training", 7), *rows("PublicTest", 7)], gz=True)
    ds = load(uri)
    assert (len(ds.train), len(ds.val)) == (7, 7)


def test_column_order_case_extra_columns_and_crlf(tmp_path):
    lines = ["Usage,extra,Emotion,pixels"] + [f"PublicTest,x,{i % 7},{pixels(i)}" for i in range(7)]
    lines += [f"Training,y,{i % 7},{pixels(200 + i)}" for i in range(7)]
    path = tmp_path / "f.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    ds = load(str(path))
    assert ds.val.images[:, 5, 5].tolist() == list(range(7))
    assert ds.train.images[:, -1, -1].tolist() == list(range(200, 207))


def test_tolerated_spacing_quotes_and_leading_zeros_parse_like_the_fast_path(tmp_path):
    plain = [HEADER, *rows("Training", 7), *rows("PublicTest", 7)]
    odd = list(plain)
    odd[1] = f'0," {pixels(0)} ",Training'  # quoted, padded
    odd[2] = "1," + " ".join(["010"] * 2303 + ["0255"]) + ",Training"  # leading zeros, 4 digits
    ds = load(write(tmp_path / "odd.csv", odd))
    assert ds.train.images[0].max() == 0
    assert ds.train.images[1].reshape(-1)[:2303].tolist() == [10] * 2303 and ds.train.images[1, -1, -1] == 255
    assert np.array_equal(ds.train.images[2:], load(write(tmp_path / "plain.csv", plain)).train.images[2:])


def test_without_usage_column_every_row_is_training(tmp_path):
    uri = write(tmp_path / "f.csv", ["emotion,pixels"] + [f"{i % 7},{pixels(i)}" for i in range(20)])
    ds = load(uri)
    assert len(ds.train) + len(ds.val) == 20 and ds.test is None


def test_read_csv_returns_splits_and_skipped(tmp_path):
    uri = write(tmp_path / "f.csv", [HEADER, *rows("Training", 7), "9," + pixels() + ",Training"])
    splits, skipped = read_csv(uri, skip_bad_rows=True)
    assert set(splits) == {"train"} and len(splits["train"]) == 7
    assert skipped == [f"{uri} line 9: emotion 9 is outside 0-6"]


# ------------------------------------------------------------------------------
# CSV: bad rows, one test per case
# ------------------------------------------------------------------------------
def bad_file(tmp_path, bad_row: str, at: int = 3) -> str:
    """A good file with `bad_row` on physical line `at` (header = line 1)."""
    lines = [HEADER, *rows("Training", 10)]
    lines.insert(at - 1, bad_row)
    return write(tmp_path / "fer2013.csv", lines)


def test_wrong_pixel_count(tmp_path):
    uri = bad_file(tmp_path, "0," + pixels(n=2303) + ",Training", at=7)
    assert error_of(uri) == f"{uri} line 7: expected 2304 pixels, got 2303"


def test_non_integer_pixel(tmp_path):
    values = ["1"] * 2304
    values[16] = "ab"
    uri = bad_file(tmp_path, "0," + " ".join(values) + ",Training", at=5)
    assert error_of(uri) == f"{uri} line 5: pixel 17 is 'ab', not an integer"


def test_out_of_range_pixel(tmp_path):
    values = ["1"] * 2304
    values[2] = "300"
    uri = bad_file(tmp_path, "0," + " ".join(values) + ",Training", at=4)
    assert error_of(uri) == f"{uri} line 4: pixel 3 is 300, outside 0-255"


def test_negative_pixel(tmp_path):
    values = ["1"] * 2304
    values[-1] = "-1"
    uri = bad_file(tmp_path, "0," + " ".join(values) + ",Training")
    assert error_of(uri) == f"{uri} line 3: pixel 2304 is -1, outside 0-255"


def test_label_outside_range(tmp_path):
    uri = bad_file(tmp_path, "7," + pixels() + ",Training", at=6)
    assert error_of(uri) == f"{uri} line 6: emotion 7 is outside 0-6"


def test_label_not_an_integer(tmp_path):
    uri = bad_file(tmp_path, "happy," + pixels() + ",Training", at=2)
    assert error_of(uri) == f"{uri} line 2: emotion 'happy' is not an integer 0-6"


def test_unknown_usage(tmp_path):
    uri = bad_file(tmp_path, "0," + pixels() + ",Foo", at=8)
    assert error_of(uri) == f"{uri} line 8: Usage 'Foo' is not one of Training, PublicTest, PrivateTest"


def test_wrong_field_count(tmp_path):
    uri = bad_file(tmp_path, "0," + pixels(), at=4)
    assert error_of(uri) == f"{uri} line 4: expected 3 comma-separated fields, got 2"


def test_line_numbers_count_blank_lines_and_the_first_error_wins(tmp_path):
    lines = [HEADER, *rows("Training", 3), "", "", "0," + pixels(n=5) + ",Training", "8," + pixels() + ",Training"]
    uri = write(tmp_path / "f.csv.gz", lines, gz=True)
    assert error_of(uri) == f"{uri} line 7: expected 2304 pixels, got 5"


def test_error_in_a_later_chunk_has_the_exact_line(tmp_path):
    lines = [HEADER, *rows("Training", 2100)]
    lines[2050] = "0," + pixels(n=2305) + ",Training"  # physical line 2051
    uri = write(tmp_path / "big.csv", lines)
    assert error_of(uri) == f"{uri} line 2051: expected 2304 pixels, got 2305"


# ------------------------------------------------------------------------------
# CSV: structural problems (errors even with skip_bad_rows)
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("skip", [False, True])
def test_missing_column(tmp_path, skip):
    uri = write(tmp_path / "f.csv", ["emotion,Usage", "0,Training"])
    assert error_of(uri, skip_bad_rows=skip) == f"{uri} line 1: missing column 'pixels' (header has: emotion, Usage)"


@pytest.mark.parametrize("skip", [False, True])
def test_empty_file(tmp_path, skip):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert error_of(str(path), skip_bad_rows=skip) == f"{path}: empty file"


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "empty.csv.gz"
    path.write_bytes(gzip.compress(b""))
    assert error_of(str(path)) == f"{path}: empty file"


@pytest.mark.parametrize("skip", [False, True])
def test_header_without_rows(tmp_path, skip):
    uri = write(tmp_path / "f.csv", [HEADER, ""])
    assert error_of(uri, skip_bad_rows=skip) == f"{uri}: no data rows (only a header)"


def png_bytes(size=(48, 48), mode="L", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=(90 if mode == "L" else (200, 30, 10))).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 4, png_bytes(), b"\x1f\x8b\x08\x00garbage, not deflate"],
    ids=["binary", "png-renamed", "bad-gzip"],
)
@pytest.mark.parametrize("skip", [False, True])
def test_not_a_csv_text_file(tmp_path, content, skip):
    path = tmp_path / "faces.csv"
    path.write_bytes(content)
    message = error_of(str(path), skip_bad_rows=skip)
    assert message.startswith(f"{path}: not a CSV text file")


def test_missing_path(tmp_path):
    uri = str(tmp_path / "nope.csv.gz")
    assert error_of(uri, skip_bad_rows=True) == f"{uri}: no such file or directory"


def test_file_without_training_rows(tmp_path):
    uri = write(tmp_path / "f.csv", [HEADER, *rows("PublicTest", 7)])
    assert error_of(uri) == f"{uri}: no Training rows (found: PublicTest); a training split is required"


# ------------------------------------------------------------------------------
# skip_bad_rows
# ------------------------------------------------------------------------------
def test_skip_bad_rows_skips_and_notes_them(tmp_path):
    lines = [HEADER, *rows("Training", 14), *rows("PublicTest", 7)]
    for at in (7, 9, 12):
        lines.insert(at - 1, "0," + pixels(n=3) + ",Training")
    uri = write(tmp_path / "f.csv", lines)
    with pytest.raises(UserError):
        load(uri)
    ds = load(uri, skip_bad_rows=True)
    assert (len(ds.train), len(ds.val)) == (14, 7)
    assert ds.train.labels.tolist() == [i % 7 for i in range(14)]
    assert ds.notes[-1] == f"skipped 3 bad rows: lines 7, 9, 12 (first: {uri} line 7: expected 2304 pixels, got 3)"


def test_skipped_note_lists_at_most_ten_lines(tmp_path):
    lines = [HEADER, *rows("Training", 14), *rows("PublicTest", 7)] + ["9," + pixels() + ",Training"] * 12
    ds = load(write(tmp_path / "f.csv", lines), skip_bad_rows=True)
    note = ds.notes[-1]
    assert note.startswith("skipped 12 bad rows: lines 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, … (first:")


def test_every_row_bad_is_an_error(tmp_path):
    uri = write(tmp_path / "f.csv", [HEADER] + ["0,1 2 3,Training"] * 3)
    message = error_of(uri, skip_bad_rows=True)
    assert message.startswith(f"{uri}: every data row is bad (3 rows; first: {uri} line 2: expected 2304 pixels")


# ------------------------------------------------------------------------------
# carved validation split, missing test split
# ------------------------------------------------------------------------------
def test_without_public_test_a_stratified_val_split_is_carved(tmp_path):
    labels = [0] * 100 + [1] * 50 + [3] * 200 + [6] * 30
    lines = [HEADER] + [f"{y},{pixels(i % 256)},Training" for i, y in enumerate(labels)]
    uri = write(tmp_path / "f.csv", lines)
    ds = load(uri, val_fraction=0.1, seed=3)
    assert class_counts(ds.val) == [10, 5, 0, 20, 0, 0, 3]
    assert class_counts(ds.train) == [90, 45, 0, 180, 0, 0, 27]
    assert ds.notes == (
        "no PublicTest: carved a stratified 10% validation split from Training (seed 3)",
        "no PrivateTest: no test split, no test metrics",
    )
    assert ds.test is None
    again, other = load(uri, val_fraction=0.1, seed=3), load(uri, val_fraction=0.1, seed=4)
    assert np.array_equal(again.val.images, ds.val.images)
    assert not np.array_equal(other.val.images, ds.val.images)


def test_stratified_split_partitions_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 997).astype(np.int64)
    images = np.arange(997 * 4, dtype=np.int64).reshape(997, 2, 2).astype(np.uint8)
    split = Split(images, labels)
    rest, carved = stratified_split(split, 0.2, seed=1)
    assert len(carved) == round(0.2 * 997) and len(rest) + len(carved) == 997
    assert sorted(np.r_[rest.labels, carved.labels].tolist()) == sorted(labels.tolist())
    for total, part in zip(class_counts(split), class_counts(carved)):
        assert abs(part - 0.2 * total) <= 1
    assert np.array_equal(stratified_split(split, 0.2, seed=1)[1].labels, carved.labels)


def test_stratified_split_carves_at_least_one_and_keeps_one():
    split = Split(np.zeros((3, 48, 48), np.uint8), np.array([0, 1, 2], dtype=np.int64))
    assert [len(p) for p in stratified_split(split, 0.01, 0)] == [2, 1]
    assert [len(p) for p in stratified_split(split, 0.99, 0)] == [1, 2]


def test_too_few_training_rows_to_carve(tmp_path):
    uri = write(tmp_path / "f.csv", [HEADER, *rows("Training", 1)])
    assert error_of(uri) == f"{uri}: only 1 Training rows, too few to carve a validation split"


def test_class_counts():
    assert class_counts(Split(np.zeros((4, 48, 48), np.uint8), np.array([0, 6, 6, 3]))) == [1, 0, 0, 1, 0, 0, 2]


# ------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------
def make_folder(root: Path, layout: dict[str, dict[str, list[bytes]]]) -> str:
    for split, emotions in layout.items():
        for emotion, images in emotions.items():
            folder = root / split / emotion
            folder.mkdir(parents=True)
            for i, data in enumerate(images):
                suffix = "png" if data.startswith(PNG_MAGIC) else "jpg"
                (folder / f"im{i}.{suffix}").write_bytes(data)
    return str(root)


def test_image_folder_splits_labels_and_conversion(tmp_path):
    root = make_folder(
        tmp_path / "fer",
        {
            "train": {"happy": [png_bytes()] * 3, "Sad": [png_bytes((96, 64), "RGB", "JPEG")] * 2, "0": [png_bytes()]},
            "test": {"surprise": [png_bytes()] * 2},
            "validation": {"neutral": [png_bytes()]},
        },
    )
    (Path(root) / "train" / ".DS_Store").write_bytes(b"junk")
    ds = load(root, channels="gray")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 1, 2)
    assert ds.train.images.shape == (6, 48, 48) and ds.train.images.dtype == np.uint8
    assert sorted(ds.train.labels.tolist()) == [0, 3, 3, 3, 4, 4]
    red = Image.open(io.BytesIO(png_bytes((96, 64), "RGB", "JPEG")))
    sad = ds.train.images[ds.train.labels == 4]
    assert (sad[0] == np.asarray(red.convert("L").resize((48, 48), Image.Resampling.BILINEAR))).all()
    # channels=auto (the default): one colour image makes the data RGB; gray faces get R = G = B.
    colour = load(root)
    assert colour.channels == "rgb" and colour.train.images.shape == (6, 48, 48, 3)
    happy = colour.train.images[colour.train.labels == 3]
    assert (happy == 90).all()
    assert (colour.train.images[colour.train.labels == 4][0] == np.asarray(red.resize((48, 48)))).all()
    assert ds.val.labels.tolist() == [6] and ds.test.labels.tolist() == [5, 5]
    assert ds.notes == ()


def test_image_folder_without_val_carves_one(tmp_path):
    root = make_folder(tmp_path / "fer", {"train": {e: [png_bytes()] * 10 for e in EMOTIONS}})
    ds = load(root, seed=2)
    assert (len(ds.train), len(ds.val), ds.test) == (63, 7, None)
    assert class_counts(ds.val) == [1] * 7
    assert ds.notes == (
        "no val/: carved a stratified 10% validation split from train/ (seed 2)",
        "no test/: no test split, no test metrics",
    )


def test_image_folder_of_other_classes_carries_their_names(tmp_path):
    """Folders that are not all FER-2013 emotions are classes of their own, sorted by name."""
    root = make_folder(tmp_path / "fer", {"train": {"happy": [png_bytes()] * 4, "surprised": [png_bytes()] * 4}})
    ds = load(root)
    assert ds.class_names == ("happy", "surprised")
    assert sorted(np.concatenate([ds.train.labels, ds.val.labels]).tolist()) == [0] * 4 + [1] * 4


def test_classes_txt_orders_the_classes_and_names_what_it_lacks(tmp_path):
    layout = {"train": {"positive": [png_bytes()] * 3, "neutral": [png_bytes()] * 3, "negative": [png_bytes()] * 3}}
    root = make_folder(tmp_path / "v", layout)
    (Path(root) / "classes.txt").write_text("# valence\nnegative\nneutral\npositive\n")
    ds = load(root)
    assert ds.class_names == ("negative", "neutral", "positive")
    assert np.bincount(np.concatenate([ds.train.labels, ds.val.labels])).tolist() == [3, 3, 3]
    (Path(root) / "classes.txt").write_text("negative\npositive\n")
    assert error_of(root) == (
        f"{root}/train/neutral: class folder 'neutral' is not listed in {root}/classes.txt (negative, positive)"
    )
    (Path(root) / "classes.txt").write_text("negative\nneutral\nnegative\npositive\n")
    assert error_of(root) == f"{root}/classes.txt line 3: class 'negative' is listed twice"


def test_a_file_among_class_folders_is_refused_not_taken_for_a_class(tmp_path):
    root = make_folder(tmp_path / "fer", {"train": {"happy": [png_bytes()] * 3, "sad": [png_bytes()] * 3}})
    (Path(root) / "train" / "notes.txt").write_text("not a class")
    assert error_of(root) == (
        f"{root}/train/notes.txt: a file where class folders are expected ({root}/train/<class>/*.jpg); move it out"
    )


def test_one_class_is_not_a_classifier(tmp_path):
    root = make_folder(tmp_path / "one", {"train": {"cats": [png_bytes()] * 3}})
    assert error_of(root) == f"{root}: 1 class(es) (cats); a classifier needs at least 2"


def test_image_folder_without_train(tmp_path):
    root = make_folder(tmp_path / "fer", {"test": {"happy": [png_bytes()]}})
    assert error_of(root) == f"{root}: no train/ folder (has: test); expected {root}/train/<class>/*.jpg"


@pytest.mark.parametrize(
    "name,content,why",
    [("broken.jpg", b"not a jpeg at all", "not a readable image"), ("notes.txt", b"hello", "not an image file")],
)
def test_image_folder_bad_file(tmp_path, name, content, why):
    root = make_folder(tmp_path / "fer", {"train": {"happy": [png_bytes()] * 10, "sad": [png_bytes()] * 10}})
    (Path(root) / "train" / "sad" / name).write_bytes(content)
    message = error_of(root)
    assert message.startswith(f"{root}/train/sad/{name}: {why}")
    ds = load(root, skip_bad_rows=True)
    assert len(ds.train) + len(ds.val) == 20
    assert ds.notes[-1].startswith(f"skipped 1 bad images: train/sad/{name} (first: {root}/train/sad/{name}: {why}")
    splits, skipped = read_image_folder(root, skip_bad_rows=True)
    assert len(splits["train"]) == 20 and skipped == [message]


# ------------------------------------------------------------------------------
# built-in and the real file
# ------------------------------------------------------------------------------
def test_builtin_is_split_80_10_10_stratified():
    pytest.importorskip("fer_dist.synthetic")
    ds = load("builtin", builtin_size=700, seed=1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (560, 70, 70)
    assert ds.source == "builtin" and ds.train.images.shape[1:] == (48, 48)
    totals = np.add(np.add(class_counts(ds.train), class_counts(ds.val)), class_counts(ds.test))
    assert all(abs(t - 0.1 * n) <= 1 for t, n in zip(class_counts(ds.test), totals))


@pytest.mark.fer2013
@pytest.mark.skipif(not REAL_FILE.exists(), reason=f"{REAL_FILE} is absent")
def test_real_fer2013_file():
    ds = load(str(REAL_FILE))
    assert (len(ds.train), len(ds.val), ds.test) == (28709, 3589, None)
    assert class_counts(ds.train) == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert class_counts(ds.val) == [467, 56, 496, 895, 653, 415, 607]
    assert ds.train.images.shape == (28709, 48, 48) and ds.train.images.dtype == np.uint8
