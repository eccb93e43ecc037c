"""Tests for the model-independent half of fer_dist.evaluate (metrics, files, plots)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_dist import EMOTIONS, NUM_CLASSES, evaluate, inference
from fer_dist.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANGRY, DISGUST, HAPPY, SAD = (EMOTIONS.index(e) for e in ("angry", "disgust", "happy", "sad"))

# A three-class case (angry, happy, sad) inside the seven classes. Worked by hand:
#   true angry: 2 angry, 1 happy        angry: TP 2, predicted 2  -> P 1,   R 2/3, F1 4/5
#   true happy: 3 happy, 1 sad          happy: TP 3, predicted 5  -> P 3/5, R 3/4, F1 2/3
#   true sad:   2 sad,   1 happy        sad:   TP 2, predicted 3  -> P 2/3, R 2/3, F1 2/3
# accuracy 7/10; macro-F1 over the three classes present = (4/5 + 2/3 + 2/3) / 3 = 32/45.
LABELS = np.array([ANGRY] * 3 + [HAPPY] * 4 + [SAD] * 3)
PREDS = np.array([ANGRY, ANGRY, HAPPY, HAPPY, HAPPY, HAPPY, SAD, SAD, SAD, HAPPY])


def probs_for(preds: np.ndarray, top: float = 0.6) -> np.ndarray:
    """Rows with `top` on the predicted class and the rest spread evenly."""
    probs = np.full((len(preds), NUM_CLASSES), (1 - top) / (NUM_CLASSES - 1))
    probs[np.arange(len(preds)), preds] = top
    return probs


def assert_png(data: bytes, min_size: int = 2_000) -> Image.Image:
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_size
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- metrics -------------------------------------------------------------------------


def test_metrics_match_hand_computation():
    m = evaluate.compute_metrics(LABELS, probs_for(PREDS))
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["macro_f1"] == pytest.approx(32 / 45)
    assert m["macro_precision"] == pytest.approx((1 + 3 / 5 + 2 / 3) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    expected = {
        "angry": (1.0, 2 / 3, 4 / 5, 3),
        "happy": (3 / 5, 3 / 4, 2 / 3, 4),
        "sad": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    for name, (p, r, f1, support) in expected.items():
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f1)), name
        assert row["support"] == support
    assert list(m["per_class"]) == list(EMOTIONS)


def test_confusion_matrix_counts():
    cm = np.array(evaluate.compute_metrics(LABELS, probs_for(PREDS))["confusion_matrix"])
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES)
    assert cm.sum() == 10
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    expected[ANGRY, [ANGRY, HAPPY]] = [2, 1]
    expected[HAPPY, [HAPPY, SAD]] = [3, 1]
    expected[SAD, [SAD, HAPPY]] = [2, 1]
    np.testing.assert_array_equal(cm, expected)


@pytest.mark.filterwarnings("error")
def test_absent_classes_score_zero_without_warnings():
    m = evaluate.compute_metrics(LABELS, probs_for(PREDS))
    for name in ("disgust", "fear", "surprise", "neutral"):
        assert m["per_class"][name] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.filterwarnings("error")
def test_class_predicted_but_never_true_counts_in_macro_f1():
    m = evaluate.compute_metrics(np.array([ANGRY, ANGRY]), probs_for(np.array([ANGRY, DISGUST])))
    # angry: P 1, R 1/2, F1 2/3; disgust: P 0 (1 predicted, 0 right), R 0 (no support), F1 0.
    assert m["per_class"]["disgust"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_single_example():
    right = evaluate.compute_metrics(np.array([SAD]), probs_for(np.array([SAD])))
    assert (right["accuracy"], right["macro_f1"], right["n"]) == (1.0, 1.0, 1)
    wrong = evaluate.compute_metrics(np.array([SAD]), probs_for(np.array([HAPPY])))
    assert (wrong["accuracy"], wrong["macro_f1"]) == (0.0, 0.0)


def test_only_argmax_matters_not_normalisation():
    unnormalised = probs_for(PREDS) * 7.5
    assert evaluate.compute_metrics(LABELS, unnormalised) == evaluate.compute_metrics(LABELS, probs_for(PREDS))


def test_metrics_are_json_able():
    m = evaluate.compute_metrics(LABELS, probs_for(PREDS))
    assert json.loads(json.dumps(m)) == m


@pytest.mark.parametrize(
    "labels, probs",
    [
        (LABELS, probs_for(PREDS)[:, :6]),  # six classes
        (LABELS[:9], probs_for(PREDS)),  # length mismatch
        (np.array([0, 7]), probs_for(np.array([0, 1]))),  # label out of range
        (np.array([], int), np.zeros((0, NUM_CLASSES))),  # nothing to score
        (LABELS.astype(float), probs_for(PREDS)),  # float labels
    ],
)
def test_bad_inputs_raise_user_error(labels, probs):
    with pytest.raises(UserError):
        evaluate.compute_metrics(labels, probs)


# --- tables and reports --------------------------------------------------------------


def test_per_class_table_layout():
    m = evaluate.compute_metrics(LABELS, probs_for(PREDS))
    table = evaluate.per_class_table(m)
    assert list(table.index) == [*EMOTIONS, "macro avg"]
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    assert table.loc["happy", "precision"] == pytest.approx(3 / 5)
    assert table.loc["macro avg", "f1"] == pytest.approx(32 / 45)
    assert table.loc["macro avg", "support"] == 10
    assert table["support"].dtype.kind == "i"


def test_format_report_shows_headline_numbers_and_classes():
    text = evaluate.format_report(evaluate.compute_metrics(LABELS, probs_for(PREDS)), "test set")
    assert text.startswith("test set\n")
    assert "accuracy 0.7000" in text
    assert f"macro-F1 {32 / 45:.4f}" in text
    for name in (*EMOTIONS, "macro avg"):
        assert name in text


# --- files and figures ---------------------------------------------------------------


def test_write_confusion_csv_round_trips_and_png_is_real(tmp_path):
    m = evaluate.compute_metrics(LABELS, probs_for(PREDS))
    uris = evaluate.write_confusion(str(tmp_path), m, "test")
    assert uris == [str(tmp_path / "test_confusion.csv"), str(tmp_path / "test_confusion.png")]
    frame = pd.read_csv(uris[0], index_col=0)
    assert list(frame.columns) == list(EMOTIONS)
    assert list(frame.index) == list(EMOTIONS)
    np.testing.assert_array_equal(frame.to_numpy(), m["confusion_matrix"])
    assert_png((tmp_path / "test_confusion.png").read_bytes(), min_size=10_000)


HISTORY_CSV = """epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,images_per_second
0,1.9,0.22,1.8,0.25,0.001,850.0
1,1.6,0.35,1.6,0.33,0.0005,900.0
2,1.4,0.45,1.5,0.41,0.00025,905.5
"""


def test_plot_history_makes_a_three_panel_png():
    image = assert_png(evaluate.plot_history(HISTORY_CSV), min_size=10_000)
    assert image.width > 2 * image.height  # three panels side by side


def test_plot_history_rejects_csv_without_epochs():
    with pytest.raises(UserError):
        evaluate.plot_history("loss,accuracy\n1.0,0.5\n")
    with pytest.raises(UserError):
        evaluate.plot_history(HISTORY_CSV.splitlines()[0] + "\n")


def test_write_history_plot(tmp_path):
    assert evaluate.write_history_plot(str(tmp_path)) is None
    (tmp_path / "history.csv").write_text(HISTORY_CSV.splitlines()[0] + "\n")
    assert evaluate.write_history_plot(str(tmp_path)) is None
    assert not (tmp_path / "curves.png").exists()
    (tmp_path / "history.csv").write_text(HISTORY_CSV)
    assert evaluate.write_history_plot(str(tmp_path)) == str(tmp_path / "curves.png")
    assert_png((tmp_path / "curves.png").read_bytes(), min_size=10_000)


# --- ensembles and mistakes ----------------------------------------------------------


def test_average_probs_is_the_elementwise_mean():
    a, b = np.random.default_rng(0).dirichlet(np.ones(NUM_CLASSES), size=(2, 5))
    np.testing.assert_allclose(evaluate.average_probs([a, b]), (a + b) / 2)
    np.testing.assert_allclose(evaluate.average_probs([a]), a)


def test_averaging_two_models_fixes_a_mistake():
    labels = np.array([ANGRY, HAPPY])
    unsure_wrong = np.zeros((2, NUM_CLASSES))
    unsure_wrong[0, [ANGRY, HAPPY]] = [0.4, 0.6]  # wrong, but not by much
    unsure_wrong[1, HAPPY] = 1.0
    sure_right = np.zeros((2, NUM_CLASSES))
    sure_right[0, ANGRY] = 0.9
    sure_right[0, HAPPY] = 0.1
    sure_right[1, [ANGRY, HAPPY]] = [0.3, 0.7]
    assert evaluate.compute_metrics(labels, unsure_wrong)["accuracy"] == 0.5
    ensemble = evaluate.average_probs([unsure_wrong, sure_right])
    assert evaluate.compute_metrics(labels, ensemble)["accuracy"] == 1.0


@pytest.mark.parametrize(
    "prob_list",
    [[], [np.zeros((3, NUM_CLASSES)), np.zeros((4, NUM_CLASSES))], [np.zeros(3), np.zeros(3)]],
)
def test_average_probs_rejects_bad_shapes(prob_list):
    with pytest.raises(UserError):
        evaluate.average_probs(prob_list)


def test_most_confident_mistakes_are_picked_in_order():
    labels = np.full(4, ANGRY)
    probs = np.stack(
        [
            probs_for(np.array([HAPPY]), top=0.5)[0],  # wrong, p=0.5
            probs_for(np.array([ANGRY]), top=0.99)[0],  # right: never picked
            probs_for(np.array([SAD]), top=0.9)[0],  # wrong, p=0.9
            probs_for(np.array([HAPPY]), top=0.7)[0],  # wrong, p=0.7
        ]
    )
    np.testing.assert_array_equal(evaluate._most_confident_mistakes(labels, probs, k=2), [2, 3])
    np.testing.assert_array_equal(evaluate._most_confident_mistakes(labels, probs, k=25), [2, 3, 0])


def test_mistakes_grid_is_a_png():
    images = np.random.default_rng(1).integers(0, 256, size=(len(LABELS), 48, 48), dtype=np.uint8)
    assert_png(evaluate.mistakes_grid(images, LABELS, probs_for(PREDS), k=25), min_size=5_000)
    assert_png(evaluate.mistakes_grid(images[..., None], LABELS, probs_for(PREDS), k=2))
    assert_png(evaluate.mistakes_grid(images, LABELS, probs_for(LABELS)))  # no mistakes


def test_mistakes_grid_rejects_misaligned_images():
    with pytest.raises(UserError):
        evaluate.mistakes_grid(np.zeros((3, 48, 48), np.uint8), LABELS, probs_for(PREDS))
    with pytest.raises(UserError):
        evaluate.mistakes_grid(np.zeros((10, 48, 48), np.uint8), LABELS, probs_for(PREDS), k=0)


# --- test-time augmentation (TensorFlow; models built untrained) -----------------------


@pytest.fixture(scope="module")
def tta_model():
    import keras

    from fer_dist import config as C
    from fer_dist import model as model_lib

    config = C.resolve("smoke")
    keras.utils.set_random_seed(0)
    return config, model_lib.build(config)


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48)).astype(np.uint8)


def test_tta_flip_of_a_symmetric_face_equals_no_tta(tta_model):
    config, model = tta_model
    half = faces(5)[:, :, :24]
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    plain = inference.predict_probs(model, symmetric, config)
    flipped = inference.predict_probs(model, symmetric, config, tta="flip")
    np.testing.assert_allclose(flipped, plain, atol=1e-6)


def test_tta_flip_is_the_mean_over_the_face_and_its_mirror(tta_model):
    config, model = tta_model
    x = faces(6, seed=1)
    plain = inference.predict_probs(model, x, config)
    mirrored = inference.predict_probs(model, x[:, :, ::-1], config)
    flipped = inference.predict_probs(model, x, config, tta="flip")
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the model is not symmetric
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, atol=1e-6)


def test_tta_tencrop_rows_sum_to_one_and_views_are_crops_and_mirrors(tta_model):
    import tensorflow as tf

    from fer_dist import augment

    config, model = tta_model
    x = faces(7, seed=2)
    probs = inference.predict_probs(model, x, config, tta="tencrop", batch_size=4)
    assert probs.shape == (7, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(probs, inference.predict_probs(model, x, config), atol=1e-4)
    # A constant face looks the same in every view: tencrop == none.
    flat = np.full((2, 48, 48), 90, np.uint8)
    np.testing.assert_allclose(
        inference.predict_probs(model, flat, config, tta="tencrop"),
        inference.predict_probs(model, flat, config),
        atol=1e-5,
    )
    views = augment.tta_views(tf.random.uniform([2, 48, 48, 3]), "tencrop")
    assert len(views) == 10 and all(v.shape == (2, 48, 48, 3) for v in views)
    for crop, mirror in zip(views[:5], views[5:]):
        np.testing.assert_array_equal(mirror.numpy(), crop.numpy()[:, :, ::-1])
    assert augment.tencrop_size(48) == 52 and augment.tencrop_size(96) == 106


def test_bad_tta_is_a_user_error(tta_model):
    config, model = tta_model
    with pytest.raises(UserError, match="tta 'fivecrop': expected one of none, flip, tencrop"):
        inference.predict_probs(model, faces(1), config, tta="fivecrop")


def test_tta_composes_with_ensembles(tmp_path):
    from fer_dist import data as data_lib
    from tests.saved_run import save_untrained_run
    from tests.tiny import write_tiny_csv

    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    a = save_untrained_run(tmp_path / "a", data=csv, seed=1)
    b = save_untrained_run(tmp_path / "b", data=csv, seed=2, eval_tta="flip")
    val = data_lib.load(csv).val
    (ca, ma), (cb, mb) = inference.load_run(a), inference.load_run(b)
    want = evaluate.average_probs(
        [
            inference.predict_probs(ma, val.images, ca, tta="tencrop"),
            inference.predict_probs(mb, val.images, cb, tta="tencrop"),
        ]
    )
    metrics, split = evaluate.evaluate_data([a, b], csv, "val", tta="tencrop")
    assert split == "val" and metrics["tta"] == "tencrop"
    assert metrics == evaluate.compute_metrics(val.labels, want) | {"tta": "tencrop"}
    # Without --tta each run uses its own eval_tta.
    metrics, _ = evaluate.evaluate_data([a, b], csv, "val")
    assert metrics["tta"] == ["none", "flip"]
    want = evaluate.average_probs(
        [inference.predict_probs(ma, val.images, ca), inference.predict_probs(mb, val.images, cb, tta="flip")]
    )
    assert metrics["confusion_matrix"] == evaluate.compute_metrics(val.labels, want)["confusion_matrix"]


def test_pictures_go_to_tensorboard_as_images(tmp_path):
    import tensorflow as tf

    (tmp_path / "history.csv").write_text(HISTORY_CSV)
    evaluate.write_history_plot(str(tmp_path))
    assert evaluate.write_tensorboard_images(str(tmp_path)) == ["curves.png"]
    events = list((tmp_path / "tensorboard" / "eval").glob("events.out.tfevents.*"))
    assert len(events) == 1
    tags = [v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0])) for v in e.summary.value]
    assert tags == ["curves"]


# --- where evaluations go, ensembles' runs, data without a training split --------------


def _evaluate_job(monkeypatch, *run_dirs, **flags) -> None:
    """The evaluate job's main, in this process (its logging setup left alone)."""
    from fer_dist import logs
    from fer_dist.cli.evaluate import main

    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    options = {"data": None, "split": None, "output": None, "skip_bad_rows": False, "tta": None} | flags
    main(list(run_dirs), **options)


def test_evaluations_are_keyed_by_tta_and_ensemble_and_never_overwritten(tmp_path, monkeypatch, caplog):
    import hashlib
    import logging

    from tests.saved_run import save_untrained_run
    from tests.tiny import write_tiny_csv

    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    a = save_untrained_run(tmp_path / "a", data=csv, seed=1)
    b = save_untrained_run(tmp_path / "b", data=csv, seed=2)
    evaluations = tmp_path / "a" / "evaluations"

    _evaluate_job(monkeypatch, a, data=csv, split="val", tta="none")
    _evaluate_job(monkeypatch, a, data=csv, split="val", tta="flip")
    plain = json.loads((evaluations / "tiny-val" / "metrics.json").read_text())
    flipped = json.loads((evaluations / "tiny-val-tta_flip" / "metrics.json").read_text())
    assert (plain["tta"], flipped["tta"]) == ("none", "flip")
    assert plain["members"] == [str(tmp_path / "a")]
    assert (evaluations / "tiny-val-tta_flip" / "val_confusion.png").exists()

    before = (evaluations / "tiny-val" / "metrics.json").read_text()
    with caplog.at_level(logging.INFO, logger="fer_dist.evaluate"):
        _evaluate_job(monkeypatch, a, data=csv, split="val", tta="none")  # the same again: -2
    assert (evaluations / "tiny-val" / "metrics.json").read_text() == before
    again = json.loads((evaluations / "tiny-val-2" / "metrics.json").read_text())
    assert again["accuracy"] == plain["accuracy"] and again["output"] == str(evaluations / "tiny-val-2")
    assert "writing to " + str(evaluations / "tiny-val-2") in caplog.text

    _evaluate_job(monkeypatch, b, a, data=csv, split="val", tta="none")  # order of the runs does not matter
    members = sorted([str(tmp_path / "a"), str(tmp_path / "b")])
    digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:8]
    ensemble = tmp_path / "b" / "evaluations" / f"tiny-val-ensemble_{digest}" / "metrics.json"
    assert json.loads(ensemble.read_text())["members"] == members
    assert evaluate.evaluation_name(csv, "val", "flip", [a, b]) == f"tiny-val-tta_flip-ensemble_{digest}"
    assert sorted(p.name for p in evaluations.iterdir()) == ["tiny-val", "tiny-val-2", "tiny-val-tta_flip"]


def test_a_private_test_only_csv_is_scored_on_its_test_split(tmp_path, monkeypatch):
    from fer_dist import data as data_lib
    from tests.saved_run import save_untrained_run
    from tests.tiny import write_tiny_csv

    train_csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    test_csv = write_tiny_csv(tmp_path / "private.csv", n_train=0, n_val=0, n_test=14)
    with pytest.raises(UserError, match="no Training rows"):  # training still needs a training split
        data_lib.load(test_csv)
    run_dir = save_untrained_run(tmp_path / "run", data=train_csv)

    metrics, split = evaluate.evaluate_data([run_dir], test_csv, None)
    assert split == "test" and metrics["n"] == 14
    with pytest.raises(UserError, match=r"private.csv has no val split \(it has: test \(PrivateTest rows\)\)"):
        evaluate.evaluate_data([run_dir], test_csv, "val")

    _evaluate_job(monkeypatch, run_dir, data=test_csv)
    written = json.loads((tmp_path / "run" / "evaluations" / "private-test" / "metrics.json").read_text())
    assert written["split"] == "test" and written["n"] == 14 and written["accuracy"] == metrics["accuracy"]


def test_load_splits_needs_no_training_split(tmp_path):
    from fer_dist import data as data_lib
    from tests.tiny import tiny_split, write_tiny_csv

    # A CSV with training rows: the same splits as training's (validation carved the same way).
    csv = write_tiny_csv(tmp_path / "train_only.csv", n_train=70, n_val=0)
    loaded, available = data_lib.load(csv, seed=3), data_lib.load_splits(csv, seed=3)
    assert list(available.splits) == ["train", "val"]
    np.testing.assert_array_equal(available.splits["val"].labels, loaded.val.labels)
    np.testing.assert_array_equal(available.splits["val"].images, loaded.val.images)

    # An image folder with only test/.
    faces = tiny_split(7, 4)
    for i, (image, label) in enumerate(zip(faces.images, faces.labels)):
        folder = tmp_path / "images" / "test" / EMOTIONS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    with pytest.raises(UserError, match="no train/ folder"):
        data_lib.load(str(tmp_path / "images"))
    available = data_lib.load_splits(str(tmp_path / "images"))
    assert list(available.splits) == ["test"] and available.names == {"test": "test/ images"}
    assert sorted(available.splits["test"].labels) == sorted(faces.labels)
    with pytest.raises(UserError, match="no train/, val/ or test/ folder"):
        data_lib.load_splits(str(tmp_path / "images" / "test"))


def test_an_ensemble_of_different_classes_is_refused_naming_both_lists(tmp_path):
    import json
    import shutil

    import keras

    from tests.saved_run import save_untrained_run
    from tests.tiny import write_tiny_csv

    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    a = save_untrained_run(tmp_path / "a", data=csv)
    (tmp_path / "five").mkdir()
    shutil.copy(tmp_path / "a" / "config.json", tmp_path / "five" / "config.json")
    five = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    five.save(tmp_path / "five" / "model.keras")
    with pytest.raises(UserError, match=r".*/five: the model has 5 outputs, expected 7 classes \(angry, disgust"):
        evaluate.evaluate_data([a, str(tmp_path / "five")], csv, "val")
    # The same count, other names (in another order): refused by name, before any model loads.
    shutil.copytree(tmp_path / "a", tmp_path / "renamed")
    config = json.loads((tmp_path / "renamed" / "config.json").read_text())
    config["class_names"] = ["disgust", "angry", "fear", "happy", "sad", "surprise", "neutral"]
    (tmp_path / "renamed" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as info:
        evaluate.evaluate_data([a, str(tmp_path / "renamed")], csv, "val")
    assert str(info.value) == (
        f"cannot ensemble {a} and {tmp_path / 'renamed'}: different classes (angry, disgust, fear, happy, sad, "
        "surprise, neutral vs disgust, angry, fear, happy, sad, surprise, neutral)"
    )
    # Alone, it scores FER-2013 data by class name: the data's labels follow the run's order.
    metrics, _ = evaluate.evaluate_data([str(tmp_path / "renamed")], csv, "val")
    assert list(metrics["per_class"])[:2] == ["disgust", "angry"] and metrics["n"] == 21
    # Data with a class the run does not have is refused, both lists named.
    (tmp_path / "renamed" / "config.json").write_text(json.dumps(dict(config, class_names=["a", "b"])))
    with pytest.raises(UserError, match=r"tiny.csv: its classes \(angry, disgust, .*\) differ from those of the run"):
        evaluate.evaluate_data([str(tmp_path / "renamed")], csv, "val")
