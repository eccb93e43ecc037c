"""In-graph augmentation, mixup and class weighting (fer_dist/augment.py), and the loop with them on."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from fer_dist import NUM_CLASSES, features
from fer_dist import augment as A
from fer_dist import config as C
from fer_dist import train as T
from fer_dist.sessions import LocalSession
from tests.tiny import tiny_dataset

ALL_ON = {
    "augment_flip": "true",
    "augment_shift": "0.15",
    "augment_zoom": "0.2",
    "augment_rotation": "15",
    "augment_erasing": "0.5",
}


def batch(n=16, size=48, low=-110.0, high=150.0, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(low, high, (n, size, size, 3)).astype(np.float32))


def seed_of(step=3):
    return A.step_seed(7, step)


# --- image augmentation --------------------------------------------------------------


def test_off_is_identity():
    x = batch()
    cfg = C.resolve("smoke")
    assert not A.any_image_augmentation(cfg)
    assert A.augment_images(x, cfg, seed_of()) is x


@pytest.mark.parametrize("field, value", [(k, v) for k, v in ALL_ON.items()] + [("all", None)])
def test_shapes_and_dtypes_are_kept(field, value):
    cfg = C.resolve("smoke", ALL_ON if field == "all" else {field: value})
    for size in (48, 64):
        x = batch(size=size)
        y = A.augment_images(x, cfg, seed_of())
        assert y.shape == x.shape and y.dtype == x.dtype
        assert not np.array_equal(y.numpy(), x.numpy())  # it did something


def test_values_stay_in_the_input_range_and_fill():
    # Positive inputs, so that the fill value 0 widens the range: [min(x, 0), max(x, 0)].
    x = batch(low=20.0, high=200.0)
    y = A.augment_images(x, C.resolve("smoke", ALL_ON), seed_of()).numpy()
    assert y.min() >= 0.0 - 1e-4 and y.max() <= x.numpy().max() + 1e-3
    assert (y == 0).any()  # shifted-in border or erased pixels are 0


def test_flip_really_mirrors_about_half_the_images():
    x = batch(n=64)
    y = A.augment_images(x, C.resolve("smoke", {"augment_flip": "true"}), seed_of()).numpy()
    xs, mirrored = x.numpy(), x.numpy()[:, :, ::-1, :]
    same = np.array([np.array_equal(a, b) for a, b in zip(y, xs)])
    flipped = np.array([np.array_equal(a, b) for a, b in zip(y, mirrored)])
    assert (same ^ flipped).all()  # each image is itself or its exact mirror
    assert 16 <= flipped.sum() <= 48
    # Mirroring means column j becomes column W-1-j.
    i = int(np.flatnonzero(flipped)[0])
    np.testing.assert_array_equal(y[i, :, 0, :], xs[i, :, -1, :])


def test_same_seed_same_draw_other_step_other_draw():
    x = batch()
    cfg = C.resolve("smoke", ALL_ON)
    a = A.augment_images(x, cfg, seed_of(3)).numpy()
    b = A.augment_images(x, cfg, seed_of(3)).numpy()
    c = A.augment_images(x, cfg, seed_of(4)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_affine_warp_matches_tensorflow_projective_transform():
    x = batch(n=6)
    rng = np.random.default_rng(1)
    theta = tf.constant(rng.uniform(-0.5, 0.5, 6), tf.float32)
    scale = tf.constant(rng.uniform(0.8, 1.25, 6), tf.float32)
    shifts = tf.constant(rng.uniform(-6, 6, (6, 2)), tf.float32)
    m = A.affine_matrices(theta, scale, shifts, 48, 48)
    ours = A.affine_warp(x, m).numpy()
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=tf.concat([m, tf.zeros([6, 2])], axis=1),
        output_shape=[48, 48],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    ).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_integer_translation_shifts_pixels_and_fills_zero():
    x = batch(n=1, low=1.0, high=100.0)
    m = A.affine_matrices(tf.zeros([1]), tf.ones([1]), tf.constant([[3.0, -2.0]]), 48, 48)  # right 3, up 2
    y = A.affine_warp(x, m).numpy()[0]
    xs = x.numpy()[0]
    np.testing.assert_allclose(y[:46, 3:], xs[2:, :45], atol=1e-4)
    assert (y[:, :3] == 0).all() and (y[46:, :] == 0).all()


def test_rotation_by_90_degrees_about_the_centre():
    x = batch(n=1, size=9)
    m = A.affine_matrices(tf.constant([math.pi / 2]), tf.ones([1]), tf.zeros([1, 2]), 9, 9)
    y = A.affine_warp(x, m).numpy()[0]
    # Forward map out = R(90) (in - c) + c in (x, y) pixel coordinates (y down): a rot90 of the array.
    np.testing.assert_allclose(y, np.rot90(x.numpy()[0], k=-1, axes=(0, 1)), atol=1e-3)


def test_erasing_probability_one_erases_one_rectangle_per_image():
    x = batch(n=8, low=1.0, high=100.0)
    y = A.random_erasing(x, seed_of(), 1.0).numpy()
    for img in y:
        rows, cols = np.nonzero((img == 0).all(axis=-1))
        assert len(rows) > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == len(rows)  # the zeros form one filled rectangle
        assert 0.02 * 48 * 48 * 0.5 <= len(rows) <= 0.25 * 48 * 48 * 1.5
    np.testing.assert_array_equal(A.random_erasing(x, seed_of(), 0.0).numpy(), x.numpy())


def test_augmentation_compiles_with_xla():
    x = batch(n=4)
    cfg = C.resolve("smoke", ALL_ON)
    y = tf.function(lambda v, s: A.augment_images(v, cfg, s), jit_compile=True)(x, seed_of())
    assert y.shape == x.shape and y.dtype == x.dtype


# --- mixup and class weighting -------------------------------------------------------


def log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def sparse_ce(labels, logits):
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")(labels, logits)


def test_mixup_mixes_images_and_labels_consistently():
    n = 12
    labels = tf.constant(np.arange(n) % NUM_CLASSES, tf.int32)
    # Image i is the constant i: a mixed image reveals its two sources.
    x = tf.constant(np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 3), np.float32))
    mixed, labels_b, lam = A.mixup(x, labels, 0.4, seed_of())
    lam = float(lam)
    assert 0.0 <= lam <= 1.0
    assert mixed.shape == x.shape and mixed.dtype == x.dtype
    values = mixed.numpy()[:, 0, 0, 0]
    partner = (values - lam * np.arange(n)) / (1 - lam)
    np.testing.assert_allclose(partner, np.round(partner), atol=1e-3)
    partner = np.round(partner).astype(int)
    assert sorted(partner) == list(range(n))  # a permutation
    np.testing.assert_array_equal(labels_b.numpy(), labels.numpy()[partner])


def test_mixup_loss_equals_the_hand_computed_mix():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, NUM_CLASSES)).astype(np.float32)
    a = np.array([0, 1, 2, 3, 4, 1], np.int32)
    b = np.array([1, 1, 6, 0, 2, 5], np.int32)
    lam = 0.3
    got = A.train_loss(sparse_ce, tf.constant(a), tf.constant(logits), (tf.constant(b), tf.constant(lam))).numpy()
    lsm = log_softmax(logits.astype(np.float64))
    want = -(lam * lsm[np.arange(6), a] + (1 - lam) * lsm[np.arange(6), b])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The plain loss is the mix's lam=1 end.
    plain = A.train_loss(sparse_ce, tf.constant(a), tf.constant(logits)).numpy()
    np.testing.assert_allclose(plain, -lsm[np.arange(6), a], rtol=1e-5)
    # Accuracy under mixup: lam for y_a hits, 1 - lam for y_b hits.
    pred = logits.argmax(1)
    hits = A.train_hits(tf.constant(a), tf.constant(logits), (tf.constant(b), tf.constant(lam))).numpy()
    np.testing.assert_allclose(hits, lam * (pred == a) + (1 - lam) * (pred == b), rtol=1e-6)


def test_balanced_class_weights_have_mean_one_and_favour_rare_classes():
    labels = np.array([3] * 50 + [1] * 2 + [0] * 20 + [6] * 28)  # disgust (1) rare, classes 2, 4, 5 absent
    w = A.class_weights(labels, "balanced")
    assert w.shape == (NUM_CLASSES,) and w.dtype == np.float32
    assert w[labels].mean() == pytest.approx(1.0, rel=1e-6)
    assert w[1] == pytest.approx(100 / (4 * 2)) and w[3] == pytest.approx(100 / (4 * 50))
    assert w[1] > w[0] > w[6] > w[3]
    assert A.class_weights(labels, "none") is None


def test_class_weighted_loss_with_and_without_mixup():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, NUM_CLASSES)).astype(np.float32)
    a, b = np.array([0, 1, 1, 3, 6], np.int32), np.array([1, 0, 3, 3, 2], np.int32)
    w = np.linspace(0.5, 2.0, NUM_CLASSES).astype(np.float32)
    lsm = log_softmax(logits.astype(np.float64))
    ce_a, ce_b = -lsm[np.arange(5), a], -lsm[np.arange(5), b]
    got = A.train_loss(sparse_ce, tf.constant(a), tf.constant(logits), weights=w).numpy()
    np.testing.assert_allclose(got, w[a] * ce_a, rtol=1e-5)
    got = A.train_loss(sparse_ce, tf.constant(a), tf.constant(logits), (tf.constant(b), 0.25), w).numpy()
    np.testing.assert_allclose(got, 0.25 * w[a] * ce_a + 0.75 * w[b] * ce_b, rtol=1e-5)


# --- the feature cache ---------------------------------------------------------------


@pytest.mark.parametrize("field, value", [(k, v) for k, v in ALL_ON.items() if k != "augment_flip"])
def test_feature_cache_is_refused_with_input_augmentation(field, value):
    cfg = C.resolve("seed", {field: value})
    reason = features.config_reason(cfg)
    assert reason is not None and "input augmentation is on" in reason and field in reason


def test_flip_alone_keeps_the_feature_cache():
    assert features.config_reason(C.resolve("seed", {"augment_flip": "true"})) is None
    reason = features.config_reason(C.resolve("seed", {"augment_flip": "true", "augment_shift": "0.1"}))
    assert "augment_shift=0.1" in reason and "augment_flip" not in reason


def test_feature_cache_with_mixup_and_class_weighting():
    assert features.config_reason(C.resolve("seed")) is None
    assert "mixup" in features.config_reason(C.resolve("seed", {"mixup_alpha": "0.2"}))
    assert features.config_reason(C.resolve("seed", {"class_weighting": "balanced"})) is None


# --- the real loop with everything on ------------------------------------------------

LOOP = dict(
    ALL_ON,
    epochs="2",
    steps_per_epoch="2",
    mixup_alpha="0.4",
    class_weighting="balanced",
    optimizer="sgd",
    learning_rate="0.05",
    lr_schedule="cosine",
    warmup_epochs="1",
    deterministic="true",
)


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_loop_with_augmentation_runs_writes_history_and_is_deterministic(tmp_path):
    cfg = C.resolve("smoke", LOOP)
    data = tiny_dataset()
    first = T.fit(cfg, LocalSession(str(tmp_path / "a"), show_progress=False), dataset=data)
    history = pd.read_csv(os.path.join(tmp_path, "a", "history.csv"))
    assert list(history["epoch"]) == [1, 2]
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["val_loss"]).all()
    # Cosine with one warm-up epoch of 2 steps: the last step of epoch 1 runs at the full rate,
    # the last of epoch 2 (step 3 of 4) half-way down the cosine.
    assert history["learning_rate"][0] == pytest.approx(0.05)
    assert history["learning_rate"][1] == pytest.approx(1e-6 + (0.05 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.5)))

    second = T.fit(cfg, LocalSession(str(tmp_path / "b"), show_progress=False), dataset=data)
    for a, b in zip(first.model.variables, second.model.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)

    # Augmentation changes what is learnt: the same run without it ends elsewhere.
    plain = cfg.replace(**{k: getattr(C.TrainConfig(), k) for k in ALL_ON})
    third = T.fit(plain, LocalSession(str(tmp_path / "c"), show_progress=False), dataset=data)
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(first.model.trainable_variables, third.model.trainable_variables)
    )


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_class_weighting_on_cached_features_follows_training_on_images(tmp_path, caplog):
    """Class weighting keeps the frozen-trunk cache: float32 features train as images do."""
    import logging

    from fer_dist.data import Dataset, Split
    from tests.tiny import tiny_split

    caplog.set_level(logging.INFO, logger="fer_dist")
    full = tiny_split(256, 1)
    keep = (full.labels != 1) | (np.arange(256) % 6 == 0)  # disgust rare, as in FER-2013
    data = Dataset(
        train=Split(full.images[keep], full.labels[keep]),
        val=tiny_split(64, 2),
        test=None,
        source="tiny-rare",
        notes=(),
    )
    cfg = C.resolve(
        "seed",
        {
            "weights": "none",
            "head_units": "32",
            "early_stop_patience": "0",
            "feature_cache_dir": str(tmp_path / "cache"),
            "epochs": "1",
            "steps_per_epoch": "3",
            "feature_dtype": "float32",
            "class_weighting": "balanced",
        },
    )
    cached = T.fit(cfg, LocalSession(str(tmp_path / "a"), show_progress=False), dataset=data)
    assert "feature cache: training the last" in caplog.text and "class weighting balanced: " in caplog.text
    plain = T.fit(
        cfg.replace(feature_cache=False), LocalSession(str(tmp_path / "b"), show_progress=False), dataset=data
    )
    for a, b in zip(cached.model.variables, plain.model.variables):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(b).max()), err_msg=str(a.shape))
    assert cached.state.history[0]["loss"] == pytest.approx(plain.state.history[0]["loss"], rel=1e-4)
    unweighted = T.fit(
        cfg.replace(class_weighting="none"), LocalSession(str(tmp_path / "c"), show_progress=False), dataset=data
    )
    assert unweighted.state.history[0]["loss"] != pytest.approx(cached.state.history[0]["loss"], rel=1e-3)
