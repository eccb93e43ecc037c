"""The one checkpoint format: by variable name, verified by its manifest, one retention policy."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from fer_dist import checkpoint, optim, storage
from fer_dist import config as C
from fer_dist import model as M

SMOKE = C.resolve("smoke", {})


def _model_and_optimizer(config=SMOKE, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = M.build(config)
    optimizer = optim.make_optimizer(config)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _save(directory, model, optimizer, epoch=1, val_accuracy=0.5, best=None):
    loop = {
        "epoch": epoch,
        "step": 0,
        "metrics": {"val_accuracy": val_accuracy, "val_loss": 1 - val_accuracy},
        "phase": 1,
    }
    checkpoint.save(str(directory), model=model, optimizer=optimizer, loop=loop, config_json=SMOKE.to_json(), best=best)
    return str(directory)


def test_a_loss_scaled_optimizer_saves_its_scale_and_loads_a_checkpoint_without_one(tmp_path, caplog):
    """Mixed precision's loss scaler (optim.loss_scaled, on a float32 model here: the names are
    what matters): its own variables under loss_scale/, the inner optimizer's as a plain run's;
    a checkpoint written before the scaler existed loads, the scale starting afresh."""
    model, plain = _model_and_optimizer(seed=1)
    plain.iterations.assign(5)
    old = _save(tmp_path / "old", model, plain)
    scaled = optim.loss_scaled(optim.make_optimizer(SMOKE))
    scaled.build(model.trainable_variables)
    scaled.dynamic_scale.assign(64.0)
    scaled.iterations.assign(9)
    new = _save(tmp_path / "new", model, scaled)
    with np.load(os.path.join(new, "optimizer.npz")) as saved, np.load(os.path.join(old, "optimizer.npz")) as before:
        assert float(saved["loss_scale/dynamic_scale"]) == 64.0 and int(saved["iteration"]) == 9
        assert set(saved.files) - {n for n in saved.files if n.startswith("loss_scale/")} == set(before.files)

    other, fresh = _model_and_optimizer(seed=2)
    fresh = optim.loss_scaled(fresh)
    fresh.build(other.trainable_variables)
    checkpoint.load(new, model=other, optimizer=fresh)
    assert float(fresh.dynamic_scale.numpy()) == 64.0 and int(fresh.iterations.numpy()) == 9
    caplog.set_level(logging.WARNING, logger="fer_dist")
    checkpoint.load(old, model=other, optimizer=fresh)
    assert int(fresh.iterations.numpy()) == 5 and float(fresh.dynamic_scale.numpy()) == 64.0  # left as it was
    assert "holds no loss scale" in caplog.text
    with pytest.raises(checkpoint.CheckpointError, match="loss_scale/dynamic_scale: in the checkpoint, not in"):
        checkpoint.load(new, model=other, optimizer=_model_and_optimizer(seed=3)[1])


def test_round_trip_by_name_into_a_model_built_later(tmp_path):
    model, optimizer = _model_and_optimizer(seed=1)
    optimizer.iterations.assign(7)
    best = [np.asarray(v.numpy()) + 1 for v in model.variables]
    directory = _save(tmp_path / "c", model, optimizer, best=best)
    files = set(os.listdir(directory))
    assert files == {"model.npz", "optimizer.npz", "best.npz", "config.json", "state.json", "manifest.json"}
    with np.load(os.path.join(directory, "model.npz")) as saved:
        assert "stem_conv/kernel" in saved.files and not any(k.startswith("arr_") for k in saved.files)
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    assert manifest["format_version"] == checkpoint.FORMAT_VERSION and manifest["epoch"] == 1
    assert manifest["files"]["model.npz"]["size"] == os.path.getsize(os.path.join(directory, "model.npz"))
    assert not [n for n in files if n.startswith(".tmp")]

    # A second model in the same process: Keras numbers its seed generators differently.
    other, other_optimizer = _model_and_optimizer(seed=2)
    state, restored_best = checkpoint.load(directory, model=other, optimizer=other_optimizer)
    assert state["epoch"] == 1 and state["phase"] == 1 and "format_version" not in state
    assert int(other_optimizer.iterations.numpy()) == 7
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(best, restored_best):
        np.testing.assert_array_equal(a, b)


def test_a_model_of_another_shape_is_refused_naming_the_first_mismatch(tmp_path):
    model, optimizer = _model_and_optimizer()
    directory = _save(tmp_path / "c", model, optimizer)
    wider = SMOKE.replace(head_units=(48,))
    other, other_optimizer = _model_and_optimizer(wider)
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match this config's model.*first mismatch head"):
        checkpoint.load(directory, model=other, optimizer=other_optimizer)


def test_damaged_newest_is_skipped_for_the_newest_whole_one(tmp_path, caplog):
    model, optimizer = _model_and_optimizer()
    parent = tmp_path / "checkpoints"
    _save(parent / checkpoint.name(1), model, optimizer, epoch=1)
    newest = _save(parent / checkpoint.name(2), model, optimizer, epoch=2)
    assert checkpoint.verify(newest) is None
    with open(os.path.join(newest, "optimizer.npz"), "r+b") as f:  # truncated, as by a lost upload
        f.truncate(100)
    assert "optimizer.npz does not match its manifest" in checkpoint.verify(newest)
    caplog.set_level(logging.WARNING, logger="fer_dist")
    found = checkpoint.newest_whole(str(parent), checkpoint.EPOCH_PREFIX)
    assert found.epoch == 1 and "skipping checkpoint" in caplog.text and "epoch_0002" in caplog.text
    with pytest.raises(checkpoint.CheckpointError, match="optimizer.npz does not match"):
        checkpoint.load(newest, model=model, optimizer=optimizer)
    os.remove(os.path.join(newest, "manifest.json"))  # interrupted before its manifest: incomplete
    assert checkpoint.verify(newest) == "no manifest.json (incomplete)"


def test_positional_checkpoints_of_earlier_versions_are_migrated(tmp_path, caplog):
    model, optimizer = _model_and_optimizer(seed=3)
    legacy = tmp_path / "epoch_0004"
    legacy.mkdir()
    np.savez(legacy / "model.npz", *[np.asarray(v.numpy()) for v in model.variables])
    np.savez(legacy / "optimizer.npz", *[np.asarray(v.numpy()) for v in optimizer.variables])
    (legacy / "config.json").write_text(SMOKE.to_json())
    (legacy / "state.json").write_text(json.dumps({"epoch": 4, "metrics": {"val_accuracy": 0.7}}))
    assert checkpoint.verify(str(legacy)) is None
    assert checkpoint.info(str(legacy)).val_accuracy == 0.7
    other, other_optimizer = _model_and_optimizer(seed=4)
    caplog.set_level(logging.WARNING, logger="fer_dist")
    state, best = checkpoint.load(str(legacy), model=other, optimizer=other_optimizer)
    assert state["epoch"] == 4 and best is None and "positional format" in caplog.text
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_retention_keeps_the_best_k_by_the_monitored_metric_plus_the_latest():
    infos = [checkpoint.Info(f"e{e}", e, 0, acc) for e, acc in [(1, 0.3), (2, 0.6), (3, 0.5), (4, 0.2)]]
    assert checkpoint.kept(infos, 1, "val_accuracy") == {"e2", "e4"}
    assert checkpoint.kept(infos, 2, "val_accuracy") == {"e2", "e3", "e4"}
    step = checkpoint.Info("e4s", 4, 9, None)  # no val_accuracy: never ranked, kept only as the latest
    assert checkpoint.kept(infos + [step], 1, "val_accuracy") == {"e2", "e4s"}
    assert checkpoint.kept([], 2) == set()
    # val_loss (the default): the lowest; here it disagrees with val_accuracy's best (e2)
    losses = [(1, 0.3, 1.1), (2, 0.6, 0.9), (3, 0.5, 0.7), (4, 0.2, 1.5)]
    infos = [checkpoint.Info(f"e{e}", e, 0, acc, {"val_accuracy": acc, "val_loss": loss}) for e, acc, loss in losses]
    assert checkpoint.kept(infos, 1) == {"e3", "e4"}
    assert checkpoint.kept(infos, 1, "val_accuracy") == {"e2", "e4"}
    assert checkpoint.kept(infos, 2) == {"e2", "e3", "e4"}


def test_upload_verify_and_prune_on_gcs(tmp_path, gcs_prefix):
    model, optimizer = _model_and_optimizer()
    for epoch, acc in [(1, 0.4), (2, 0.9), (3, 0.1)]:
        local = _save(tmp_path / str(epoch), model, optimizer, epoch=epoch, val_accuracy=acc)
        checkpoint.upload(local, storage.join(gcs_prefix, checkpoint.ray_name(epoch)))
    gone = checkpoint.prune(gcs_prefix, checkpoint.RAY_PREFIX, keep=1)
    assert [u.rsplit("/", 1)[1] for u in gone] == ["checkpoint_epoch_0001"]
    assert sorted(storage.listdir(gcs_prefix)) == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]
    newest = checkpoint.newest_whole(gcs_prefix, checkpoint.RAY_PREFIX)
    assert newest.epoch == 3 and checkpoint.verify(newest.uri) is None
    fresh, _ = _model_and_optimizer(seed=5)
    checkpoint.load_model_weights(newest.uri, fresh)
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
