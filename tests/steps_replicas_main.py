"""Test helper: the same 4 training steps on 1 replica and on 2 (MirroredStrategy over two
logical CPUs, one process) with fer_dist's compiled step; prints the largest weight difference
per case as JSON.

    python tests/steps_replicas_main.py
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
from fer_dist.steps import Distributed  # noqa: E402

BATCH, STEPS = 16, 4


def train(
    strategy, allreduce_dtype: str, pre_reduced: bool = True, optimizer: str = "adam", powersgd: str | None = None
) -> list[np.ndarray]:
    """`powersgd`: None (uncompressed), "full" (every matrix at full rank) or "rank1"."""
    sets = {"global_batch_size": BATCH, "allreduce_dtype": allreduce_dtype, "optimizer": optimizer}
    if powersgd:
        sets.update(gradient_compression="powersgd", powersgd_rank=1, powersgd_start_step=0)
    if optimizer == "sgd":  # the update is proportional to the gradient: a double sum shows
        sets.update(learning_rate=0.5, momentum=0.0)
    config = C.resolve("smoke", sets)
    replicas = strategy.num_replicas_in_sync
    dist = Distributed(strategy, 0, replicas, replicas)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, 12)).astype(np.float32)
    y = rng.integers(0, 7, size=BATCH * STEPS).astype(np.int32)
    with dist.scope():
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(7)])
        opt = optim.make_optimizer(config) if pre_reduced else keras.optimizers.SGD(config.learning_rate)
        opt.build(net.trainable_variables)
    shapes = [v.shape for v in net.trainable_variables]
    factors = compression.full_rank_plan(shapes) if powersgd == "full" else None
    steps = dist.build_steps(
        net, net.trainable_variables, opt, config, class_weights=None, in_graph=False, factors=factors
    )
    per = BATCH // replicas
    batches = iter(dist.dataset(lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(per)))
    for _ in range(STEPS):
        steps.train(batches)
    return [v.numpy() for v in net.trainable_variables]


def largest_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


one = train(tf.distribute.get_strategy(), "float32")
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {dtype: largest_difference(one, train(two, dtype)) for dtype in ("float32", "bfloat16", "float16")}
one_sgd = train(tf.distribute.get_strategy(), "float32", optimizer="sgd")
out["sgd"] = largest_difference(one_sgd, train(two, "float32", optimizer="sgd"))
out["sgd_keras_sums_again"] = largest_difference(one_sgd, train(two, "float32", pre_reduced=False, optimizer="sgd"))
# PowerSGD: at full rank the compressed sum is the sum; at rank 1 it is not (but trains)
out["powersgd_full_sgd"] = largest_difference(one_sgd, train(two, "float32", optimizer="sgd", powersgd="full"))
out["powersgd_full_adam"] = largest_difference(one, train(two, "float32", powersgd="full"))
rank1 = train(two, "float32", optimizer="sgd", powersgd="rank1")
out["powersgd_rank1_sgd"] = largest_difference(one_sgd, rank1)
out["powersgd_rank1_finite"] = bool(all(np.isfinite(w).all() for w in rank1))
print(json.dumps(out), flush=True)
