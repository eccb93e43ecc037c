"""The frozen-trunk feature cache: exact logits, the cut, training through it, the full model after."""

import json
import logging
import os

import numpy as np
import pytest

from fer_dist import checkpoint, inference
from fer_dist import config as C
from fer_dist import features as F
from fer_dist import train as T
from fer_dist.sessions import LocalSession
from tests.tiny import tiny_dataset, tiny_split

# ResNet50 weights=none with the seed's 143 frozen layers and a small head: seconds per test.
SMALL = {"weights": "none", "head_units": "32", "early_stop_patience": "0"}


def _config(tmp_path, **extra):
    return C.resolve("seed", dict(SMALL, feature_cache_dir=str(tmp_path / "cache"), **extra))


@pytest.fixture(scope="module")
def built():
    """(config, full model) built as train.fit builds it: seeds first."""
    import keras

    from fer_dist import model as M

    cfg = C.resolve("seed", SMALL)
    keras.utils.set_random_seed(cfg.seed)
    return cfg, M.build(cfg)


def _inputs(images, cfg):
    import tensorflow as tf

    from fer_dist.model import preprocess

    return preprocess(tf.constant(images), cfg)


def test_seed_cut_is_conv4_block6_out(built):
    from fer_dist.model import trunk_of

    cfg, model = built
    trunk = trunk_of(model)
    assert trunk.layers[142].name == "conv4_block6_out" and trunk.layers[143].name.startswith("conv5_block1")
    assert F.clean_cut(trunk, 143) == 143
    # Inside conv5_block1 the cut falls back to the block boundary; nothing frozen: no cut.
    assert F.clean_cut(trunk, 150) == 143
    assert F.clean_cut(trunk, 1) == 0
    split, why = F.split_model(model, cfg)
    assert why == "" and split.cut == 143 and split.cut_name == "conv4_block6_out"
    assert split.feature_shape == (3, 3, 1024) and split.frozen_in_remainder == 0
    # The remainder trains exactly the full model's trainable variables (the same objects).
    assert {id(v) for v in split.remainder.trainable_variables} == {id(v) for v in model.trainable_variables}


def test_cached_logits_equal_full_model_logits(built):
    cfg, model = built
    split, _ = F.split_model(model, cfg)
    images = tiny_split(12, seed=5).images
    full = model(_inputs(images, cfg), training=False).numpy()
    exact = F.compute_features(split.prefix, images, cfg.replace(feature_dtype="float32"))
    assert exact.dtype == np.float32 and exact.shape == (12, 3, 3, 1024)
    cached = split.remainder(exact, training=False).numpy()
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5 * np.abs(full).max())
    # float16 storage: the logits move by well under 1% of their scale.
    half = F.compute_features(split.prefix, images, cfg)
    assert half.dtype == np.float16
    cached16 = split.remainder(half.astype(np.float32), training=False).numpy()
    assert np.abs(cached16 - full).max() < 1e-2 * np.abs(full).max()
    assert (cached16.argmax(-1) == full.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("freeze", [138, 150])
def test_cut_inside_a_block_is_still_exact(built, freeze):
    """freeze_layers off a block boundary: cut earlier, run the frozen rest in the remainder."""
    import keras

    from fer_dist import model as M

    cfg = C.resolve("seed", dict(SMALL, freeze_layers=str(freeze)))
    keras.utils.set_random_seed(cfg.seed)
    model = M.build(cfg)
    split, why = F.split_model(model, cfg)
    assert why == ""
    assert split.cut <= freeze and split.frozen_in_remainder == freeze - split.cut
    images = tiny_split(6, seed=6).images
    full = model(_inputs(images, cfg), training=False).numpy()
    feats = F.compute_features(split.prefix, images, cfg.replace(feature_dtype="float32"))
    np.testing.assert_allclose(
        split.remainder(feats, training=False).numpy(), full, rtol=1e-5, atol=1e-5 * np.abs(full).max()
    )


def test_configs_that_cannot_use_the_cache():
    assert F.config_reason(C.resolve("seed", {"feature_cache": "false"})) == "feature_cache=false"
    assert "backbone=compact" in F.config_reason(C.resolve("smoke"))
    assert "freeze_layers=0" in F.config_reason(C.resolve("seed", {"freeze_layers": "0"}))
    assert F.config_reason(C.resolve("seed")) is None


def test_same_seed_same_prefix_weights():
    """weights=none: the prefix init is a function of the seed (the cache key relies on it too)."""
    import keras

    from fer_dist import model as M

    cfg = C.resolve("seed", SMALL)
    hashes = []
    for _ in range(2):
        keras.utils.set_random_seed(cfg.seed)
        split, _ = F.split_model(M.build(cfg), cfg)
        hashes.append(F.prefix_weights_sha256(split.prefix))
    assert hashes[0] == hashes[1]


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_training_on_cached_features(tmp_path, caplog):
    """Learns on tiny data through the cache; checkpoint and returned model are the full model."""
    from fer_dist import model as M

    caplog.set_level(logging.INFO, logger="fer_dist")
    cfg = _config(tmp_path, epochs="3")
    data = tiny_dataset()
    run_dir = str(tmp_path / "run")
    result = T.fit(cfg, LocalSession(run_dir, show_progress=False), dataset=data)
    assert "feature cache: training the last 38 layers on cached conv4 features (exact" in caplog.text
    history = result.state.history
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] > 0.5

    # One cache entry, complete.
    (entry,) = os.listdir(tmp_path / "cache")
    meta = json.load(open(tmp_path / "cache" / entry / F.META_FILE))
    assert meta["cut_layer"] == "conv4_block6_out" and meta["splits"]["train"]["size"] == len(data.train)

    # The returned model is the full model: images in, its probabilities equal the remainder's on features.
    final = result.model
    assert final.name == "fer_resnet50" and final.input_shape[1:] == (48, 48, 3)
    split, _ = F.split_model(final, cfg)
    images = data.val.images[:40]
    probs = inference.predict_probs(final, images, cfg)
    feats = F.compute_features(split.prefix, images, cfg.replace(feature_dtype="float32"))
    logits = split.remainder(feats, training=False).numpy()
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)

    # The checkpoint holds every variable of the full model: it loads into a fresh model.build.
    ckpt = os.path.join(run_dir, "checkpoints", "epoch_0003")
    fresh = M.build(cfg)
    checkpoint.load_model_weights(ckpt, fresh)
    np.testing.assert_allclose(inference.predict_probs(fresh, images, cfg), probs, atol=1e-6)

    # A second run with the same config and data loads the entry instead of computing it.
    caplog.clear()
    T.fit(cfg.replace(epochs=1), LocalSession(str(tmp_path / "again"), show_progress=False), dataset=data)
    assert "loaded in" in caplog.text and len(os.listdir(tmp_path / "cache")) == 1


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_cached_training_follows_uncached_training(tmp_path, caplog):
    """float32 features: the same batches, dropout masks and updates as training on images."""
    caplog.set_level(logging.INFO, logger="fer_dist")
    data = tiny_dataset(n_train=192, n_val=64, n_test=7)
    cfg = _config(tmp_path, epochs="1", steps_per_epoch="3", feature_dtype="float32")
    cached = T.fit(cfg, LocalSession(str(tmp_path / "a"), show_progress=False), dataset=data)
    plain = T.fit(
        cfg.replace(feature_cache=False), LocalSession(str(tmp_path / "b"), show_progress=False), dataset=data
    )
    assert "feature cache: not used (feature_cache=false)" in caplog.text
    for a, b in zip(cached.model.variables, plain.model.variables):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(b).max()), err_msg=str(a.shape))
    assert cached.state.history[0]["loss"] == pytest.approx(plain.state.history[0]["loss"], rel=1e-4)


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_two_phase_moves_the_cut_and_recomputes_the_cache(tmp_path, caplog):
    """Phase 1 trains on conv4 features; phase 2 unfreezes to layer 81 and trains on features cut there."""
    caplog.set_level(logging.INFO, logger="fer_dist")
    cfg = _config(tmp_path, epochs="2", steps_per_epoch="3", unfreeze_epoch="1", unfreeze_to="81")
    result = T.fit(cfg, LocalSession(str(tmp_path / "run"), show_progress=False), dataset=tiny_dataset())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache: training")]
    assert len(lines) == 2 and "cached conv4 features" in lines[0] and "cached conv4" not in lines[1], lines
    assert "phase 2 from epoch 2: 81 trunk layers frozen" in caplog.text
    assert [r["epoch"] for r in result.state.history] == [1, 2]
    assert result.state.history[1]["learning_rate"] == pytest.approx(0.1 * result.state.history[0]["learning_rate"])
    assert len(os.listdir(tmp_path / "cache")) == 2  # one entry per cut


def test_pipeline_reads_each_example_from_the_flipped_features_half_the_time():
    import tensorflow as tf

    from fer_dist import pipeline

    split = tiny_split(96, 3)
    cfg = C.resolve("seed", {"global_batch_size": "16", "augment_flip": "true"})
    plain = np.arange(96, dtype=np.float16).reshape(96, 1, 1, 1) + 1  # row i holds i + 1
    flipped = -plain  # and its flipped twin -(i + 1)

    def batches():
        ds = tf.distribute.get_strategy().distribute_datasets_from_function(
            pipeline.train_dataset_fn(split, cfg, 0, 2, 6, plain, flipped)
        )
        return [(x.numpy().ravel(), y.numpy()) for x, y in ds]

    got = batches()
    assert len(got) == 12
    values = np.concatenate([x for x, _ in got])
    labels = np.concatenate([y for _, y in got])
    index = np.abs(values).astype(int) - 1
    np.testing.assert_array_equal(labels, split.labels[index])  # labels follow the example, flipped or not
    for epoch in range(2):
        order = pipeline.epoch_order(96, epoch, 6, cfg).ravel()
        np.testing.assert_array_equal(index[epoch * 96 : (epoch + 1) * 96], order)  # the same order as without flips
    share = float(np.mean(values < 0))
    assert 0.35 < share < 0.65, share
    np.testing.assert_array_equal(values, np.concatenate([x for x, _ in batches()]))  # a function of (seed, epoch)
    with pytest.raises(ValueError):
        pipeline.train_dataset_fn(split, cfg, 0, 1, 6, plain, flipped[:10])


def test_pipeline_rows_skip_steps_and_split_over_replicas_as_specified():
    """A worker's rows are epoch_order's global batches from the `skip_steps`th on (also past an
    epoch's end), each cut into its replicas' batches; with flips, coins of flip_coins. An uneven
    split is an error when the pipeline is made."""
    import tensorflow as tf

    from fer_dist import pipeline
    from fer_dist.errors import UserError

    split, steps, epochs = tiny_split(96, 3), 6, (1, 2, 3)
    cfg = C.resolve("seed", {"global_batch_size": "16", "augment_flip": "true"})
    plain = np.arange(96, dtype=np.float16).reshape(96, 1, 1, 1) + 1  # row i holds i + 1
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    for skip in (0, 3, steps + 2):
        order = np.concatenate([pipeline.epoch_order(96, e, steps, cfg) for e in epochs])[skip:]
        coins = np.concatenate([pipeline.flip_coins(96, e, steps, cfg) for e in epochs])[skip:]
        for flipped in (None, -plain):
            ds = pipeline.train_dataset_fn(split, cfg, 1, 4, steps, plain, flipped, skip_steps=skip)(ctx)
            got = np.stack([x.numpy().ravel() for x, _ in ds])
            want = order.reshape(-1, 8) + 1  # per global batch: replica 0's 8, then replica 1's 8
            if flipped is not None:
                want = np.where(coins.reshape(-1, 8) > 0, -want, want)
            np.testing.assert_array_equal(got, want, err_msg=f"skip_steps={skip}, flips={flipped is not None}")
    uneven = C.resolve("seed", {"global_batch_size": "15"})
    with pytest.raises(UserError, match="do not split over its 2 replicas"):
        pipeline.train_dataset_fn(split, uneven, 1, 2, steps, plain)(ctx)


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_augment_flip_trains_on_cached_features_of_flipped_images(tmp_path, caplog):
    from fer_dist import model as M

    caplog.set_level(logging.INFO, logger="fer_dist")
    data = tiny_dataset(n_train=96, n_val=32, n_test=7)
    cfg = _config(tmp_path, epochs="1", steps_per_epoch="2", feature_dtype="float32", augment_flip="true")
    T.fit(cfg, LocalSession(str(tmp_path / "run"), show_progress=False), dataset=data)
    assert "feature cache: training the last" in caplog.text and "flipped-image features" in caplog.text
    (entry,) = os.listdir(tmp_path / "cache")
    stored = np.load(tmp_path / "cache" / entry / F.FLIP_FILE)

    import keras

    keras.utils.set_random_seed(cfg.seed)  # the same random weights as the run's model
    split, _ = F.split_model(M.build(cfg), cfg)
    want = split.prefix(_inputs(data.train.images[:, :, ::-1].copy(), cfg), training=False).numpy()
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    unflipped = np.load(tmp_path / "cache" / entry / "train.npy")
    assert np.abs(stored - unflipped).max() > 1e-3 * np.abs(unflipped).max()


# ---------------------------------------------------------------------------------
# The cache as a store: keyed by content, LRU under a size cap, progress, fer-cache.
# ---------------------------------------------------------------------------------
def _tiny_data(seed: int, source: str):
    from fer_dist.data import Dataset

    return Dataset(train=tiny_split(14, seed), val=tiny_split(7, seed + 100), test=None, source=source, notes=())


def test_same_data_at_another_path_hits_the_same_entry(built, tmp_path, caplog):
    import dataclasses

    caplog.set_level(logging.INFO, logger="fer_dist")
    cfg, model = built
    cfg = cfg.replace(feature_cache_dir=str(tmp_path / "cache"))
    data = _tiny_data(1, "/data/a/fer2013.csv")
    first, why = F.prepare(cfg, model, data)
    assert why == "" and not first.hit
    elsewhere = dataclasses.replace(data, source="gs://bucket/copy/fer2013.csv.gz")  # same images, other path
    again, _ = F.prepare(cfg, model, elsewhere)
    assert again.hit and again.uri == first.uri
    np.testing.assert_array_equal(again.train, first.train)
    (entry,) = F.list_entries(str(tmp_path / "cache"))
    assert entry.complete and entry.meta["source"] == "/data/a/fer2013.csv"  # kept for people, not in the key
    assert "data" not in entry.meta and "source" not in F.cache_key(cfg, first.split, elsewhere)[1]
    assert F.LAST_USED_FILE in entry.files and entry.size > first.train.nbytes + first.val.nbytes
    # Other images: another entry.
    other, _ = F.prepare(cfg, model, _tiny_data(2, "/data/a/fer2013.csv"))
    assert not other.hit and len(F.list_entries(str(tmp_path / "cache"))) == 2
    # Computing an entry logs its progress.
    assert "feature cache: computing train features of 14 images" in caplog.text
    assert "feature cache: val features 7/7 done in" in caplog.text


def test_compute_features_logs_progress(built, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fer_dist")
    monkeypatch.setattr(F, "PROGRESS_EVERY_S", 0.0)
    cfg, model = built
    split, _ = F.split_model(model, cfg)
    F.compute_features(split.prefix, tiny_split(10, seed=7).images, cfg, batch_size=4, label="train features")
    lines = [r.getMessage() for r in caplog.records if r.name == "fer_dist.features"]
    assert lines[0] == "feature cache: computing train features of 10 images through the frozen prefix"
    assert lines[1].startswith("feature cache: train features 4/10 (40%), ") and "images/s, ETA" in lines[1]
    assert lines[2].startswith("feature cache: train features 8/10 (80%), ")
    assert lines[3].startswith("feature cache: train features 10/10 done in ") and len(lines) == 4


def test_least_recently_used_entry_is_evicted_over_the_cap(built, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fer_dist")
    cfg, model = built
    root = str(tmp_path / "cache")
    cfg = cfg.replace(feature_cache_dir=root, feature_cache_max_gb=0)  # no cap while filling
    a, _ = F.prepare(cfg, model, _tiny_data(1, "a.csv"))
    b, _ = F.prepare(cfg, model, _tiny_data(2, "b.csv"))
    assert F.prepare(cfg, model, _tiny_data(1, "a.csv"))[0].hit  # A used after B: B is the least recently used
    size = max(e.size for e in F.list_entries(root))
    assert [e.uri for e in F.list_entries(root)] == [b.uri, a.uri]
    # Room for two and a half entries: writing C evicts B only, and keeps A and C.
    capped = cfg.replace(feature_cache_max_gb=2.5 * size / F.GB)
    c, _ = F.prepare(capped, model, _tiny_data(3, "c.csv"))
    assert [e.uri for e in F.list_entries(root)] == [a.uri, c.uri]
    evictions = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(evictions) == 1 and evictions[0].startswith(f"feature cache: evicted {os.path.basename(b.uri)} (")
    # A cap below one entry empties the rest of the cache but never the entry just used.
    caplog.clear()
    assert F.prepare(capped.replace(feature_cache_max_gb=1e-9), model, _tiny_data(4, "d.csv"))[0].hit is False
    (left,) = F.list_entries(root)
    assert left.key == F.cache_key(capped, c.split, _tiny_data(4, "d.csv"))[0]
    assert caplog.text.count("feature cache: evicted") == 2 and "nothing left to evict" in caplog.text


def test_an_incomplete_entry_is_evicted_only_when_stale(tmp_path):
    root = tmp_path / "cache"
    (root / "writing").mkdir(parents=True)
    (root / "writing" / "train.npy").write_bytes(b"x" * 5000)
    assert F.evict(str(root), 1e-6) == [] and (root / "writing").exists()  # it may be being written
    old = os.path.getmtime(root / "writing" / "train.npy") - 2 * F.INCOMPLETE_GRACE_S
    os.utime(root / "writing" / "train.npy", (old, old))
    assert [e.key for e in F.evict(str(root), 1e-6)] == ["writing"] and not (root / "writing").exists()


def test_feature_cache_max_gb_is_validated():
    from fer_dist.errors import UserError

    assert C.resolve("seed").feature_cache_max_gb == 4.0
    assert C.resolve("seed", {"feature_cache_max_gb": "0"}).feature_cache_max_gb == 0
    with pytest.raises(UserError, match="feature_cache_max_gb=-1.0: must be >= 0"):
        C.resolve("seed", {"feature_cache_max_gb": "-1"})


def test_cache_command_lists_and_clears(built, tmp_path):
    from tests.jobs_helpers import assert_user_error, run

    cfg, model = built
    root = str(tmp_path / "cache")
    cfg = cfg.replace(feature_cache_dir=root, feature_cache_max_gb=0)
    a, _ = F.prepare(cfg, model, _tiny_data(1, "/data/one/fer.csv"))
    b, _ = F.prepare(cfg.replace(augment_flip=True), model, _tiny_data(2, "/data/two/fer.csv"))
    key_a, key_b = os.path.basename(a.uri), os.path.basename(b.uri)

    listed = run("cache.py", "list", "--dir", root)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["key", "size", "last"]
    assert lines[1].startswith(key_b) and lines[2].startswith(key_a)  # most recently used first
    assert (
        "/data/two/fer.csv" in lines[1]
        and "48 px" in lines[1]
        and "14/7" in lines[1]
        and "conv4_block6_out" in lines[1]
    )
    assert " yes " in lines[1] and " no " in lines[2]  # flipped features in B only
    total = sum(e.size for e in F.list_entries(root))
    assert lines[3] == f"total: 2 entries, {F.human_size(total)} in {root}; cap 4 GB (feature_cache_max_gb)"

    assert_user_error(run("cache.py", "clear", "0000nope", "--dir", root), "no feature cache entry '0000nope'", root)
    cleared = run("cache.py", "clear", key_a[:8], "--dir", root)
    assert cleared.returncode == 0 and f"deleted {key_a} (" in cleared.stdout, cleared.stderr
    assert [e.key for e in F.list_entries(root)] == [key_b]
    cleared = run("cache.py", "clear", "--dir", root)
    assert cleared.returncode == 0 and "cleared 1 entries" in cleared.stdout and F.list_entries(root) == []
    assert run("cache.py", "list", "--dir", root).stdout.startswith(f"total: 0 entries, 0 B in {root}")
