"""Test helper: fer_dist's compiled train step under `mixed_precision` (float16 compute, the
dynamic loss scaler of `optim.loss_scaled`), on 1 replica and on 2 (MirroredStrategy over two
logical CPUs, one process); prints what it measured as JSON.

    python tests/mixed_precision_main.py

- underflow: a net whose first layer's gradients are ~1e-8 (a 1e-5 rescaling after it), below
  float16's smallest value: one SGD step's move of that layer, in float32, in mixed precision
  with the loss scaler, and in mixed precision without it (the inner optimizer alone);
- overflow: a step at a loss scale of 2^100 (its float16 gradients are inf) on 2 replicas,
  with PowerSGD from step 0: the weights, the step count, the PowerSGD state before and after,
  and the scale after; then 3 steps at 2^15;
- replicas: the same 4 steps on 1 and on 2 replicas, mixed precision with the loss scaler.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402

from fer_dist import compression, optim  # noqa: E402
from fer_dist import config as C  # noqa: E402
from fer_dist.steps import Distributed, configure_runtime  # noqa: E402

BATCH = 16


SGD = {"optimizer": "sgd", "learning_rate": 0.5, "momentum": 0.0}  # the update is the gradient: a wrong scale shows


def setup(strategy, sets: dict, rescale: float = 1.0, scaler: bool = True, full_rank: bool = False):
    config = C.resolve("smoke", dict({"global_batch_size": BATCH, "deterministic": "false"}, **sets))
    configure_runtime(config)  # the dtype policy
    replicas = strategy.num_replicas_in_sync
    dist = Distributed(strategy, 0, replicas, replicas)
    with dist.scope():
        keras.utils.set_random_seed(0)
        net = keras.Sequential(
            [
                keras.Input((12,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Rescaling(rescale),
                keras.layers.Dense(7, dtype="float32"),
            ]
        )
        opt = optim.make_optimizer(config)
        if not scaler:
            opt = optim.inner(opt)
        opt.build(net.trainable_variables)
    factors = compression.full_rank_plan([v.shape for v in net.trainable_variables]) if full_rank else None
    steps = dist.build_steps(
        net, net.trainable_variables, opt, config, class_weights=None, in_graph=False, factors=factors
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 8, 12)).astype(np.float32)
    y = rng.integers(0, 7, size=BATCH * 8).astype(np.int32)
    per = BATCH // replicas
    batches = iter(dist.dataset(lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(per).repeat()))
    return net, opt, steps, batches, dist


def weights(net) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in net.trainable_variables]


def largest(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def underflow() -> dict:
    """The first layer's move after one SGD step (lr 1, momentum 0), three ways."""
    moves = {}
    for name, mixed, scaler in (("float32", "false", True), ("scaled", "true", True), ("unscaled", "true", False)):
        sets = dict(SGD, learning_rate=1.0, mixed_precision=mixed)
        net, _, steps, batches, _ = setup(tf.distribute.get_strategy(), sets, rescale=1e-5, scaler=scaler)
        before = weights(net)[0]
        steps.train(batches)
        moves[name] = weights(net)[0] - before
    reference = moves["float32"]
    moved = reference != 0
    out = {"reference_move": float(np.max(np.abs(reference))), "reference_moved": float(np.mean(moved))}
    for name in ("scaled", "unscaled"):
        out[name + "_error"] = float(np.max(np.abs(moves[name] - reference)) / np.max(np.abs(reference)))
        out[name + "_lost"] = float(np.mean(moves[name][moved] == 0))  # moved in float32, not here
    return out


def overflow(two) -> dict:
    sets = dict(SGD, mixed_precision="true", gradient_compression="powersgd", powersgd_rank=1, powersgd_start_step=0)
    net, opt, steps, batches, _ = setup(two, sets)
    opt.dynamic_scale.assign(2.0**100)
    before, iterations = weights(net), int(opt.iterations.numpy())
    powersgd = steps.compression.q + steps.compression.error
    state_before = [_replicas(v) for v in powersgd]
    steps.train(batches)
    out = {
        "skipped_moved": largest(before, weights(net)),
        "skipped_iterations": int(opt.iterations.numpy()) - iterations,
        "scale_after": float(opt.dynamic_scale.numpy()),
        "state_kept": bool(all(np.array_equal(_replicas(v), b) for v, b in zip(powersgd, state_before))),
        "state_finite": bool(all(np.isfinite(_replicas(v)).all() for v in powersgd)),
        "powersgd_variables": len(powersgd),
    }
    opt.dynamic_scale.assign(2.0**15)
    for _ in range(3):
        steps.train(batches)
    out["then_moved"] = largest(before, weights(net))
    out["then_finite"] = bool(all(np.isfinite(w).all() for w in weights(net)))
    out["then_iterations"] = int(opt.iterations.numpy()) - iterations
    out["then_state_moved"] = bool(all(not np.array_equal(_replicas(v), b) for v, b in zip(powersgd, state_before)))
    return out


def _replicas(variable) -> np.ndarray:
    return np.stack([np.array(x.numpy()) for x in variable.values])


def replicas(two) -> dict:
    """4 SGD steps in mixed precision: 1 replica against 2, uncompressed and with PowerSGD at full
    rank (exact: its sum is the sum); each difference relative to how far the weights moved."""
    starts, runs = {}, {}
    for name, strategy, sets, full in (
        ("one", tf.distribute.get_strategy(), {}, False),
        ("two", two, {}, False),
        ("two_powersgd_full", two, {"gradient_compression": "powersgd", "powersgd_start_step": 0}, True),
    ):
        net, _, steps, batches, _ = setup(strategy, dict(SGD, mixed_precision="true", **sets), full_rank=full)
        starts[name] = weights(net)
        for _ in range(4):
            steps.train(batches)
        runs[name] = weights(net)
    moved = largest(starts["one"], runs["one"])
    return {
        "moved": moved,
        "two": largest(runs["one"], runs["two"]) / moved,
        "two_powersgd_full": largest(runs["one"], runs["two_powersgd_full"]) / moved,
    }


TWO = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one: a second one's collectives collide with it
out = {"underflow": underflow(), "overflow": overflow(TWO), "replicas": replicas(TWO)}
print(json.dumps(out), flush=True)
