"""The strategy and the compiled steps: the one place `tf.distribute` is touched.

`Distributed.create()` makes MultiWorkerMirroredStrategy when TF_CONFIG names several workers
(Ray Train sets it on every worker), else the default strategy (one CPU or one GPU), and
decides once which process is the chief (`is_chief`). Its methods are what the loop needs of
the strategy: a scope, distributed datasets, the compiled train/eval steps (`build_steps`:
a custom loop of `GradientTape` + `strategy.run` + `tf.nn.compute_average_loss`; Keras 3
`model.fit` does not work under MWMS inside Ray, ray-project/ray#47464), a cross-worker vote,
and a forward pass on every replica (PreciseBN).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import tensorflow as tf

from fer_dist import augment
from fer_dist.config import TrainConfig


def is_chief(rank: int) -> bool:
    """The one decision of which process writes outputs: worker 0 (or the only process)."""
    return rank == 0


@dataclasses.dataclass
class Steps:
    """A phase's compiled steps; each takes an iterator over distributed batches and returns
    (summed loss, summed hits) over the global batch."""

    train: Callable
    eval: Callable


@dataclasses.dataclass
class Distributed:
    strategy: object
    rank: int
    replicas: int

    @classmethod
    def create(cls) -> Distributed:
        """Before any other TF op: MWMS needs a fresh context."""
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        workers = tf_config.get("cluster", {}).get("worker", [])
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if len(workers) > 1 else tf.distribute.get_strategy()
        resolver = getattr(strategy, "cluster_resolver", None)
        rank = int(resolver.task_id) if resolver is not None and resolver.task_id is not None else 0
        return cls(strategy, rank, strategy.num_replicas_in_sync)

    @property
    def chief(self) -> bool:
        return is_chief(self.rank)

    def scope(self):
        return self.strategy.scope()

    def dataset(self, dataset_fn):
        """A distributed dataset of per-replica batches from a `tf.distribute.InputContext` function."""
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def any_worker(self) -> Callable[[bool], bool]:
        """A vote: True on every worker when any worker passes True (a collective MAX), so that
        every worker stops at the same step. One process: the flag itself."""
        if self.replicas == 1:
            return bool
        strategy = self.strategy

        @tf.function
        def vote(flag):
            value = strategy.run(lambda: tf.cast(flag, tf.float32))
            return strategy.reduce("MAX", value, axis=None) > 0

        return lambda flag: bool(vote(tf.constant(flag)))

    def forward(self, fn: Callable, batch) -> None:
        """Runs `fn(batch)` on every replica (its share of the distributed batch)."""
        self.strategy.run(fn, args=(batch,))

    def build_steps(self, net, trainable, optimizer, config: TrainConfig, *, class_weights, in_graph: bool) -> Steps:
        """The train and eval steps of `net`, updating `trainable`, compiled."""
        replica_train, replica_eval = _replica_steps(net, trainable, optimizer, config, class_weights, in_graph)
        strategy = self.strategy
        step_fn = tf.function(replica_train, jit_compile=True) if config.jit_compile else replica_train

        @tf.function
        def train_step(iterator):
            loss, correct = strategy.run(step_fn, args=next(iterator))
            return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

        @tf.function
        def eval_step(iterator):
            loss, correct = strategy.run(replica_eval, args=next(iterator))
            return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

        return Steps(train_step, eval_step)


def per_example_loss_fn(config: TrainConfig) -> Callable:
    """Cross-entropy on logits per example (with `label_smoothing` when set)."""
    if config.label_smoothing == 0:
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        return loss
    smoothing = config.label_smoothing

    def smoothed(labels, logits):
        one_hot = tf.one_hot(labels, logits.shape[-1])
        return tf.keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True, label_smoothing=smoothing)

    return smoothed


def _replica_steps(net, trainable, optimizer, config: TrainConfig, class_weights, in_graph: bool):
    """(train, eval) step functions of one replica. `in_graph`: augment images / mix up in the
    step (fer_dist/augment.py); on cached features the only augmentation is the cached flip."""
    per_example_loss = per_example_loss_fn(config)
    mixing = in_graph and config.mixup_alpha > 0

    def replica_train_step(images, labels):
        mix = None
        if in_graph:
            seed = augment.step_seed(config.seed, optimizer.iterations)
            augment_seed, mixup_seed = augment.split_seed(seed, 2)
            images = augment.augment_images(images, config, augment_seed)
            if mixing:
                images, labels_b, lam = augment.mixup(images, labels, config.mixup_alpha, mixup_seed)
                mix = (labels_b, lam)
        with tf.GradientTape() as tape:
            logits = net(images, training=True)
            example_loss = augment.train_loss(per_example_loss, labels, logits, mix, class_weights)
            loss = tf.nn.compute_average_loss(example_loss, global_batch_size=config.global_batch_size)
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        grads = tape.gradient(loss, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        return loss, tf.reduce_sum(augment.train_hits(labels, logits, mix))

    def replica_eval_step(images, labels, weights):
        logits = net(images, training=False)
        loss = tf.reduce_sum(per_example_loss(labels, logits) * weights)
        hit = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return loss, tf.reduce_sum(hit * weights)

    return replica_train_step, replica_eval_step


def configure_runtime(config: TrainConfig) -> None:
    """Seeds, determinism and precision; before any model is built."""
    import keras

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
