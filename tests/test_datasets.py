"""Datasets of any classes: folders with their own class names and a `classes.txt`, manifests
(`path,label[,split]`, local or gs://), and the class names in every output of a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_dist import data, storage
from fer_dist.errors import UserError
from tests import jobs_helpers

CLASSES = ("tense", "calm", "joy")  # not sorted: classes.txt gives the order


def band_face(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 gray face whose bright band's row says its class (one of three)."""
    image = rng.integers(0, 60, (48, 48)).astype(np.uint8)
    image[14 * label + 4 : 14 * label + 12, :] = 230
    return image


def write_folder(root: Path, per_class: dict[str, int], seed: int = 0, classes=CLASSES) -> str:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(band_face(label, rng), "L").save(folder / f"{i}.png")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return str(root)


def write_manifest(root: str, rows: list[tuple[str, str, str]], name: str = "manifest.csv") -> str:
    text = "path,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows)
    uri = storage.join(root, name)
    storage.write_text(uri, text)
    return uri


def upload_faces(root: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n faces per class and split (train, val) written under `root`; their manifest rows (relative paths)."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "val"):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                import io

                buffer = io.BytesIO()
                Image.fromarray(band_face(label, rng), "L").save(buffer, format="PNG")
                rel = f"images/{split}-{name}-{i}.png"
                storage.write_bytes(storage.join(root, rel), buffer.getvalue())
                rows.append((rel, name, split))
    return rows


# ------------------------------------------------------------------------------
# manifests
# ------------------------------------------------------------------------------
def test_a_manifest_reads_its_rows_with_their_classes_and_splits(tmp_path):
    rows = upload_faces(str(tmp_path), 2)
    uri = write_manifest(str(tmp_path), rows)
    ds = data.load(uri)
    assert ds.class_names == ("calm", "joy", "tense")  # sorted: no classes.txt
    assert (len(ds.train), len(ds.val), ds.test) == (6, 6, None)
    calm = ds.train.images[ds.train.labels == 0]
    assert (calm[:, 18:26, :] == 230).all()  # calm is CLASSES[1]: its band is at rows 18-25
    (tmp_path / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    assert data.load(uri).class_names == CLASSES


@pytest.mark.parametrize(
    "line, why",
    [
        ("images/nope.png,calm,train", "line 3: {root}/images/nope.png: not a readable image"),
        ("images/train-calm-0.png,calm,dev", "line 3: split 'dev' is not one of train, val, test"),
        ("images/train-calm-0.png,,train", "line 3: empty label"),
        ("images/train-calm-0.png,calm", "line 3: expected 3 comma-separated fields, got 2"),
    ],
)
def test_a_bad_manifest_row_is_named_by_its_line(tmp_path, line, why):
    rows = upload_faces(str(tmp_path), 1)
    uri = str(tmp_path / "m.csv")
    Path(uri).write_text(f"path,label,split\n{','.join(rows[0])}\n{line}\n" + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(UserError) as info:
        data.load(uri)
    assert str(info.value).startswith(f"{uri} {why.format(root=tmp_path)}"), str(info.value)


def test_a_manifest_that_is_not_utf8_is_named_by_its_line(tmp_path):
    """Past the first 64 KB (what is sniffed for binary data), a bad byte is named by its line."""
    uri = tmp_path / "m.csv"
    uri.write_bytes(b"path,label,split\n" + b"images/x.png,joy,train\n" * 3000 + b"\xff.png,joy,train\n")
    with pytest.raises(UserError) as info:
        data.load(str(uri))
    assert str(info.value) == f"{uri} line 3002: not UTF-8 text"


def test_evaluation_data_with_some_of_the_classes_is_relabelled_by_name(tmp_path):
    folder = write_folder(tmp_path / "two", {"test": 2}, classes=("calm", "tense"))  # no joy, sorted
    (Path(folder) / "classes.txt").unlink()
    splits = data.load_splits(folder)
    assert splits.class_names == ("calm", "tense")
    relabelled = data.as_classes(splits, CLASSES)
    assert relabelled.class_names == CLASSES
    assert relabelled.splits["test"].labels.tolist() == [1, 1, 0, 0]  # calm is CLASSES[1], tense CLASSES[0]
    with pytest.raises(UserError, match=r"its classes \(calm, tense\) differ from those of the run \(a, b\)"):
        data.as_classes(splits, ("a", "b"))


def test_earlier_runs_resume_gray_with_fer2013s_classes():
    from fer_dist import EMOTIONS, experiment
    from fer_dist import config as C

    text = json.dumps({k: v for k, v in C.TrainConfig().to_dict().items() if k not in ("class_names", "channels")})
    earlier = experiment.with_earlier_defaults(text, "config.json")
    assert (earlier.class_names, earlier.channels) == (EMOTIONS, "gray")
    now = experiment.with_earlier_defaults(C.TrainConfig().to_json(), "config.json")
    assert (now.class_names, now.channels) == ((), "auto")


def test_an_ensemble_of_gray_and_colour_runs_is_refused():
    from fer_dist import config as C
    from fer_dist import evaluate

    gray, rgb = C.TrainConfig(channels="gray"), C.TrainConfig(channels="rgb")
    with pytest.raises(UserError, match="cannot ensemble a and b: one takes gray faces, the other rgb"):
        evaluate.check_same_classes(["a", "b"], [gray, rgb])


def test_a_manifest_label_missing_from_classes_txt_is_named(tmp_path):
    rows = upload_faces(str(tmp_path), 1)
    (tmp_path / "classes.txt").write_text("calm\njoy\n")
    uri = write_manifest(str(tmp_path), rows)
    with pytest.raises(
        UserError, match=r"m.*\.csv line \d+: label 'tense' is not listed in .*classes.txt \(calm, joy\)"
    ):
        data.load(uri)


def test_a_gs_manifest_trains_through_the_emulator(gcs_prefix, tmp_path):
    """Manifest and images in the bucket (paths relative to the manifest): the run loads them,
    trains, and its config.json carries the classes."""
    from fer_dist import config as C
    from fer_dist import train
    from fer_dist.sessions import LocalSession

    rows = upload_faces(gcs_prefix, 12)
    storage.write_text(storage.join(gcs_prefix, "classes.txt"), "".join(f"{c}\n" for c in CLASSES))
    uri = write_manifest(gcs_prefix, rows)
    config = C.resolve("smoke", {"data": uri, "epochs": "2", "learning_rate": "0.003"})
    result = train.fit(config, LocalSession(str(tmp_path / "run"), show_progress=False))
    assert result.config.class_names == CLASSES
    assert result.dataset.source == uri and (len(result.dataset.train), len(result.dataset.val)) == (36, 36)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["class_names"] == list(CLASSES) and saved["data"] == uri
    assert result.model.output_shape[-1] == 3


# ------------------------------------------------------------------------------
# a run of other classes, as a user runs it
# ------------------------------------------------------------------------------
def test_resuming_with_data_of_other_classes_is_refused(tmp_path):
    from fer_dist import config as C
    from fer_dist import train
    from fer_dist.sessions import LocalSession

    folder = write_folder(tmp_path / "three", {"train": 6, "val": 3})
    config = C.resolve("smoke", {"data": folder, "epochs": "1"}).replace(class_names=("a", "b", "c"))
    with pytest.raises(UserError) as info:
        train.fit(config, LocalSession(str(tmp_path / "run"), show_progress=False))
    assert str(info.value) == f"{folder}: its classes (tense, calm, joy) differ from those of the run (a, b, c)"


@pytest.mark.slow  # trains, evaluates and predicts in subprocesses
def test_a_three_class_folder_run_names_its_classes_everywhere(tmp_path):
    import tensorflow as tf

    folder = write_folder(tmp_path / "three", {"train": 60, "val": 20, "test": 20})
    runs = tmp_path / "runs"
    args = ["--data", folder, "--preset", "smoke", "--output", str(runs), "--name", "r", "--quiet"]
    # What is checked is where the names go; that such data learns: the colour test below.
    trained = jobs_helpers.run("train.py", *args, "--epochs", "1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = runs / "r"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == list(CLASSES)
    assert list(metrics["test"]["per_class"]) == list(CLASSES)
    assert (run_dir / "test_confusion.csv").read_text().splitlines()[0] == "true," + ",".join(CLASSES)
    assert json.loads((run_dir / "config.json").read_text())["class_names"] == list(CLASSES)

    saved = run_dir / "saved_model"
    assert (saved / "assets.extra" / "labels.txt").read_text().split() == list(CLASSES)
    served = tf.saved_model.load(str(saved)).signatures["serving_uint8"]
    faces = np.stack([band_face(i, np.random.default_rng(9)) for i in range(3)])[..., None]
    out = served(images=tf.constant(faces))
    assert out["probabilities"].shape == (3, 3)
    assert [b.decode() for b in out["labels"].numpy()] == [CLASSES[c] for c in out["classes"].numpy()]

    evaluated = jobs_helpers.run("evaluate.py", str(run_dir), "--data", folder, "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert all(name in evaluated.stdout for name in CLASSES)

    photo = tmp_path / "joy.png"
    Image.fromarray(band_face(2, np.random.default_rng(3)), "L").save(photo)
    predicted = jobs_helpers.run(
        "predict.py", str(photo), "--run", str(run_dir), "--faces", "whole", "--format", "json"
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    row = json.loads(predicted.stdout)["predictions"][0]
    assert row["emotion"] in CLASSES and set(row["probabilities"]) == set(CLASSES)

    from fer_dist import evaluate

    two = write_folder(tmp_path / "two", {"test": 3}, classes=("joy", "tense"))  # no calm faces
    (Path(two) / "classes.txt").unlink()
    scored, _ = evaluate.evaluate_data([str(run_dir)], two, "test")
    assert list(scored["per_class"]) == list(CLASSES) and scored["per_class"]["calm"]["support"] == 0
    other = write_folder(tmp_path / "other", {"test": 3}, classes=("x", "y", "z"))
    with pytest.raises(UserError, match=r"its classes \(x, y, z\) differ from those of the run"):
        evaluate.evaluate_data([str(run_dir)], other, "test")
    assert os.path.exists(run_dir / "model.keras")


# ------------------------------------------------------------------------------
# colour
# ------------------------------------------------------------------------------
HUES = ("rose", "moss", "slate")


def hue_face(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 RGB face whose class is its hue only: its gray (PIL's "L") is a random texture
    drawn the same way for every class, so a gray model cannot tell the classes apart."""
    luma = rng.integers(90, 150, (48, 48)).astype(np.int64)
    r = np.clip(np.round(luma * (1.5, 0.5, 1.0)[label]), 0, 255).astype(np.int64)
    g = np.floor((luma - 0.299 * r - 15) / 0.587).astype(np.int64)
    b = np.ceil((luma * 65536 - 32768 - 19595 * r - 38470 * g) / 7471).astype(np.int64)
    for _ in range(3):  # PIL's fixed-point luma: step b until it gives `luma` exactly
        b += luma - ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16)
    face = np.stack([r, g, b], axis=-1).astype(np.uint8)
    assert (np.asarray(Image.fromarray(face, "RGB").convert("L")) == luma).all()
    return face


def write_hue_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(HUES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(hue_face(label, rng), "RGB").save(root / split / name / f"{i}.png")
    return str(root)


@pytest.mark.slow  # trains twice and exports a SavedModel
def test_colour_is_kept_and_learned_where_gray_cannot(tmp_path):
    import tensorflow as tf

    from fer_dist import config as C
    from fer_dist import reporting, train
    from fer_dist.sessions import LocalSession

    folder = write_hue_folder(tmp_path / "hues", {"train": 60, "val": 20})
    sets = {"data": folder, "epochs": "3", "learning_rate": "0.003", "precise_bn": "180"}
    accuracy = {}
    for channels in ("auto", "gray"):
        config = C.resolve("smoke", dict(sets, channels=channels))
        result = train.fit(config, LocalSession(str(tmp_path / channels), show_progress=False))
        accuracy[channels] = result.state.history[-1]["val_accuracy"]
        if channels == "auto":
            assert result.config.channels == "rgb" and result.dataset.train.images.shape[1:] == (48, 48, 3)
            reporting.export_model(result.model, result.config, str(tmp_path / channels))
    assert accuracy["auto"] >= 0.9 and accuracy["gray"] <= 0.6, accuracy  # chance is 1/3

    served = tf.saved_model.load(str(tmp_path / "auto" / "saved_model"))
    rng = np.random.default_rng(7)
    big = np.stack([np.asarray(Image.fromarray(hue_face(i, rng)).resize((96, 96))) for i in range(3)])
    out = served.signatures["serving_uint8"](images=tf.constant(big))
    assert [b.decode() for b in out["labels"].numpy()] == list(HUES)
    faces48 = np.stack([hue_face(i, rng) for i in range(3)]).astype(np.float32)
    fixed = served.signatures["serving_gray48"](images=tf.constant(faces48))
    assert fixed["classes"].numpy().tolist() == [sorted(HUES).index(h) for h in HUES]  # no classes.txt: sorted

    from fer_dist import predict

    for i, hue in enumerate(HUES):
        Image.fromarray(big[i]).save(tmp_path / f"{hue}.png")
    frame = predict.predict(str(tmp_path / "rose.png"), str(tmp_path / "auto"), predict.Options(faces="whole"))
    assert frame["emotion"].tolist() == ["rose"] and sorted(predict.class_columns(frame)) == sorted(HUES)
    print(f"val_accuracy: channels=auto {accuracy['auto']:.3f}, channels=gray {accuracy['gray']:.3f}")
