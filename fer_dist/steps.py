"""The strategy and the compiled steps: the one place `tf.distribute` is touched.

`Distributed.create(config)` makes MultiWorkerMirroredStrategy when TF_CONFIG names several
workers (Ray Train sets it on every worker), else the default strategy (one CPU or one GPU), and
decides once which process is the chief (`is_chief`). Its methods are what the loop needs of
the strategy: a scope, distributed datasets, the compiled train/eval steps (`build_steps`:
a custom loop of `GradientTape` + `strategy.run` + `tf.nn.compute_average_loss`; Keras 3
`model.fit` does not work under MWMS inside Ray, ray-project/ray#47464), a cross-worker vote,
cross-worker sums, and a forward pass on every replica (PreciseBN).

What crosses the network in a step is the gradient all-reduce and nothing else: the step
all-reduces the gradients itself (`GradientReducer`), cast to `allreduce_dtype` (float32,
bfloat16 or float16: half the bytes) with the strategy's `CommunicationOptions`
(`allreduce_pack_mb`), or with `gradient_compression=powersgd` as rank-R factors with error
feedback (`fer_dist/compression.py`; its state made here, in the scope, one copy per replica),
and the optimizer (`optim.make_optimizer`) does not aggregate them again. Losses and hits stay on each worker
(`Steps.train` returns this worker's sums, without a host sync) until `sum_over_workers` adds
them up once per epoch; the time-budget vote runs every `vote_every_steps` steps. With
`mixed_precision` the step scales the loss (`optimizer.scale_loss`) and the loss scaler
(`optim.loss_scaled`) skips a step whose summed gradients are not all finite.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from fer_dist import augment, compression, optim
from fer_dist.config import TrainConfig
from fer_dist.rank import is_chief, worker_rank


@dataclasses.dataclass
class Steps:
    """A phase's compiled steps; each takes an iterator over distributed batches and returns
    (summed loss, summed hits) of this worker's replicas, as tensors (no host sync): summed over
    the workers by `Distributed.sum_over_workers`, they are those of the global batch."""

    train: Callable
    eval: Callable
    compression: compression.State | None = None  # PowerSGD's Q and error buffers, when compressing


@dataclasses.dataclass
class Distributed:
    strategy: object
    rank: int
    replicas: int
    local_replicas: int = 1  # this worker's (one per worker under Ray Train)
    _sum_fn: object = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, config: TrainConfig | None = None) -> Distributed:
        """Before any other TF op: MWMS needs a fresh context."""
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        workers = tf_config.get("cluster", {}).get("worker", [])
        if len(workers) > 1:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication_options(config))
        else:
            strategy = tf.distribute.get_strategy()
        rank = worker_rank()
        local = len(strategy.extended.worker_devices) if len(workers) > 1 else strategy.num_replicas_in_sync
        return cls(strategy, rank, strategy.num_replicas_in_sync, local)

    @property
    def chief(self) -> bool:
        return is_chief(self.rank)

    @property
    def share(self) -> float:
        """Global batch / this worker's part of it."""
        return self.replicas / self.local_replicas

    def vote_every(self, config: TrainConfig) -> int:
        """Steps between cross-worker votes: every step in one process (a vote is free there)."""
        return 1 if self.replicas == self.local_replicas else config.vote_every_steps

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

    def sum_over_workers(self, values: list) -> list[float]:
        """Each worker's tensors summed over the workers, as floats: one collective."""
        if self.replicas == 1:
            return [float(v) for v in values]
        stacked = tf.stack([tf.cast(v, tf.float32) for v in values]) / self.local_replicas
        return [float(v) for v in self._summer()(stacked).numpy()]

    def _summer(self) -> Callable:
        """The compiled cross-worker sum of `sum_over_workers` (traced once per value count)."""
        if self._sum_fn is None:
            strategy = self.strategy

            @tf.function
            def total(x):
                return strategy.reduce("SUM", strategy.run(lambda: tf.identity(x)), axis=None)

            self._sum_fn = total
        return self._sum_fn

    def time_all_reduce(self, variables: list, config: TrainConfig, repeats: int = 5) -> tuple[float, float]:
        """(seconds of one step's gradient collectives alone (`wire_groups`: the gradients in
        `allreduce_dtype`, or PowerSGD's P's, Q's and the rest), with the run's options; seconds
        of a vote (a one-value `sum_over_workers`)): medians of `repeats` after a warm-up.
        Collectives: every worker calls this at the same point. One process: (0, 0)."""
        if self.replicas == self.local_replicas:
            return 0.0, 0.0
        import time

        strategy, options = self.strategy, communication_options(config)
        groups = wire_groups([v.shape for v in variables], config)

        @tf.function
        def reduce_once():
            def replica():
                context = tf.distribute.get_replica_context()
                firsts = []
                for group in groups:  # one collective each, as in the step
                    reduced = context.all_reduce("SUM", [tf.zeros(s.shape, s.dtype) for s in group], options=options)
                    firsts += [tf.cast(tf.reshape(r, [-1])[0], tf.float32) for r in reduced]
                return tf.add_n(firsts)

            return strategy.experimental_local_results(strategy.run(replica))[0]

        float(reduce_once())  # trace and warm up
        reduces, votes = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            self.sum_over_workers([0.0])  # also makes every worker start the next one together
            votes.append(time.perf_counter() - start)
            start = time.perf_counter()
            float(reduce_once())
            reduces.append(time.perf_counter() - start)
        return sorted(reduces)[repeats // 2], sorted(votes[1:])[(repeats - 1) // 2]

    def forward(self, fn: Callable, batch) -> None:
        """Runs `fn(batch)` on every replica (its share of the distributed batch)."""
        self.strategy.run(fn, args=(batch,))

    def build_steps(
        self, net, trainable, optimizer, config: TrainConfig, *, class_weights, in_graph: bool, factors=None
    ) -> Steps:
        """The train and eval steps of `net`, updating `trainable`, compiled. `factors`: the
        PowerSGD plan (default: `compression.plan` at `powersgd_rank` when compressing)."""
        reducer = self.gradient_reducer(trainable, config, factors, loss_scale=optim.loss_scale(optimizer))
        replica_train, replica_eval = _replica_steps(
            net, trainable, optimizer, config, class_weights, in_graph, reducer
        )
        train_step = self._train_step(replica_train, config)
        eval_step = self._eval_step(replica_eval)
        if reducer.state is None or config.powersgd_start_step <= 0:
            return Steps(train_step, eval_step, reducer.state)
        plain = GradientReducer(config.allreduce_dtype, reducer.options)
        warm_up, _ = _replica_steps(net, trainable, optimizer, config, class_weights, in_graph, plain)
        first = int(optimizer.iterations.numpy())  # once, at build: the steps count from here on the host
        train = CompressFrom(self._train_step(warm_up, config), train_step, config.powersgd_start_step, first)
        return Steps(train, eval_step, reducer.state)

    def _train_step(self, replica_train, config: TrainConfig):
        strategy = self.strategy
        step_fn = tf.function(replica_train, jit_compile=True) if config.jit_compile else replica_train

        @tf.function
        def train_step(iterator):
            loss, correct = strategy.run(step_fn, args=next(iterator))
            return _local_sum(strategy, loss), _local_sum(strategy, correct)

        return train_step

    def _eval_step(self, replica_eval):
        strategy = self.strategy

        @tf.function
        def eval_step(iterator):
            loss, correct = strategy.run(replica_eval, args=next(iterator))
            return _local_sum(strategy, loss), _local_sum(strategy, correct)

        return eval_step

    def gradient_reducer(self, trainable, config: TrainConfig, factors=None, loss_scale=None) -> GradientReducer:
        """How the step's gradients cross the network: as they are, or PowerSGD-compressed (its
        Q and error buffers made here, one copy per replica; `loss_scale`: the scale variable the
        gradients carry, `optim.loss_scale`). One replica: nothing crosses."""
        options = communication_options(config)
        if config.gradient_compression != "powersgd" or self.replicas == 1:
            return GradientReducer(config.allreduce_dtype, options)
        shapes = [v.shape for v in trainable]
        factors = compression.plan(shapes, config.powersgd_rank) if factors is None else factors
        on_read = {"synchronization": tf.VariableSynchronization.ON_READ, "aggregation": tf.VariableAggregation.NONE}
        with self.strategy.scope():
            q = [
                tf.Variable(
                    compression.initial_q(f, config.seed), trainable=False, name=f"powersgd_q{f.index}", **on_read
                )
                for f in factors
            ]
            error = [
                tf.Variable(tf.zeros([f.n, f.m]), trainable=False, name=f"powersgd_error{f.index}", **on_read)
                for f in factors
            ]
        return GradientReducer(config.allreduce_dtype, options, compression.State(factors, q, error), loss_scale)


def _local_sum(strategy, per_replica):
    return tf.add_n(strategy.experimental_local_results(per_replica))


@dataclasses.dataclass
class GradientReducer:
    """Sums a replica's gradients over every replica, in replica context: whole, in `dtype`; or,
    with a PowerSGD `state`, the matrices compressed (P's and Q's in one collective each) and
    the other tensors whole. `loss_scale`: the loss scaler's scale variable (mixed precision),
    which the gradients carry (PowerSGD keeps its state without it)."""

    dtype: str
    options: object
    state: compression.State | None = None
    loss_scale: object = None

    def __call__(self, grads: list) -> list:
        context = tf.distribute.get_replica_context()
        if self.state is None or context is None or context.num_replicas_in_sync == 1:
            return all_reduce_gradients(grads, self.dtype, self.options)

        def sum_vector(x):
            return context.all_reduce("SUM", x, options=self.options)

        done, updates, finite = compression.reduce(
            grads, self.state, sum_vector, context.num_replicas_in_sync, self.loss_scale
        )
        rest = all_reduce_gradients([None if i in done else g for i, g in enumerate(grads)], self.dtype, self.options)
        # summed, so the same on every replica: every replica keeps or drops its state together
        finite = tf.logical_and(finite, compression.all_finite([r for r in rest if r is not None]))
        compression.commit(updates, finite)
        return [done.get(i, r) for i, r in enumerate(rest)]


@dataclasses.dataclass
class CompressFrom:
    """The train step: uncompressed for the first `start` optimizer steps, then compressed. The
    step count is kept on the host (no read of the optimizer's counter per step)."""

    warm_up: Callable
    compressed: Callable
    start: int
    step: int

    def __call__(self, iterator):
        self.step += 1
        return (self.warm_up if self.step <= self.start else self.compressed)(iterator)


ALLREDUCE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


def wire_groups(shapes: list, config: TrainConfig) -> list[list[tf.TensorSpec]]:
    """What one step's gradient collectives send, one list per collective: every gradient in
    `allreduce_dtype`; with PowerSGD, the other gradients so, then every P and every Q as one
    float32 vector each."""
    wire = ALLREDUCE_DTYPES[config.allreduce_dtype]
    if config.gradient_compression != "powersgd":
        return [[tf.TensorSpec(s, wire) for s in shapes]]
    factors = compression.plan(shapes, config.powersgd_rank)
    compressed = {f.index for f in factors}
    rest = [tf.TensorSpec(s, wire) for i, s in enumerate(shapes) if i not in compressed]
    p = sum(f.n * f.rank for f in factors)
    q = sum(f.m * f.rank for f in factors)
    return [group for group in (rest, [tf.TensorSpec([p], tf.float32)], [tf.TensorSpec([q], tf.float32)]) if group]


def wire_bytes(shapes: list, config: TrainConfig) -> tuple[int, int]:
    """(values, bytes) one step's gradient collectives send (`wire_groups`)."""
    specs = [s for group in wire_groups(shapes, config) for s in group]
    values = [int(np.prod(s.shape)) for s in specs]
    return sum(values), sum(v * s.dtype.size for v, s in zip(values, specs))


def wire_name(config: TrainConfig) -> str:
    """The gradients' wire format in words: `float32`, or `powersgd rank 4 (float32 rest)`."""
    if config.gradient_compression == "powersgd":
        return f"powersgd rank {config.powersgd_rank} ({config.allreduce_dtype} rest)"
    return config.allreduce_dtype


def communication_options(config: TrainConfig | None):
    """The all-reduce options of MWMS: `allreduce_pack_mb` (0: one pack)."""
    pack = int((config.allreduce_pack_mb if config is not None else 0) * 2**20)
    return tf.distribute.experimental.CommunicationOptions(bytes_per_pack=pack)


def all_reduce_gradients(grads: list, dtype: str, options=None) -> list:
    """The gradients summed over every replica, sent as `dtype` and cast back (None stays None).
    One replica: unchanged. The optimizer must not aggregate them again (`optim.PreReduced`)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    present = [g for g in grads if g is not None]
    wire = ALLREDUCE_DTYPES[dtype]
    sent = [tf.cast(g, wire) if g.dtype != wire else g for g in present]
    reduced = iter(
        tf.cast(r, g.dtype) if r.dtype != g.dtype else r
        for r, g in zip(context.all_reduce("SUM", sent, options=options), present)
    )
    return [None if g is None else next(reduced) for g in grads]


def per_example_loss_fn(config: TrainConfig) -> Callable:
    """Cross-entropy on logits per example (with `label_smoothing` when set), against class
    indices [B] or against soft targets [B, K] (FER+ votes, label_mode=probability)."""
    import keras  # Keras 3 itself: where TF_USE_LEGACY_KERAS=1, TF's alias is tf_keras

    smoothing = config.label_smoothing
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def loss(labels, logits):
        if labels.shape.rank == 2:  # a distribution per example
            return keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=smoothing)
        if smoothing == 0:
            return sparse(labels, logits)
        one_hot = tf.one_hot(labels, logits.shape[-1])
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True, label_smoothing=smoothing)

    return loss


def _replica_steps(net, trainable, optimizer, config: TrainConfig, class_weights, in_graph: bool, reducer):
    """(train, eval) step functions of one replica. `in_graph`: augment images / mix up in the
    step (fer_dist/augment.py); on cached features the only augmentation is the cached flip.
    `reducer` (a `GradientReducer`) sums the gradients over the replicas."""
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
            scaled = optimizer.scale_loss(loss)  # mixed precision: times the loss scale (optim.loss_scaled)
        grads = reducer(tape.gradient(scaled, trainable))
        optimizer.apply_gradients(zip(grads, trainable))  # a loss scaler skips a step that is not finite
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
    # set either way: a policy set by an earlier run in this process (a Tune trial) must not stay
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
