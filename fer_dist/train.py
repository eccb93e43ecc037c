"""The training loop: one function for one process, one GPU, or N Ray workers.

    python jobs/train.py --data ../shared/data/fer2013/fer2013.csv.gz --preset seed

`fit(config, session)` runs a custom Keras 3 loop (`GradientTape` + `strategy.run` +
`tf.nn.compute_average_loss`) that works unchanged under the default strategy and under
`tf.distribute.MultiWorkerMirroredStrategy` (Keras 3 `model.fit` does not work under MWMS
inside Ray: ray-project/ray#47464). `make_strategy` is the only place a strategy is made.

Per step: set the learning rate (`lr_schedule=cosine` and `warmup_epochs` change it every
step; `scheduled_learning_rate`), augment the batch in-graph when `augment_*` / `mixup_alpha`
ask for it and weight the loss per class with `class_weighting` (fer_dist/augment.py).
Per epoch: train, evaluate on the validation split (all workers, reduced), decay the
learning rate by `decay_factor` after `decay_patience` epochs without a lower val_loss
(`lr_schedule=plateau`, the default), stop after `early_stop_patience` such epochs
(restoring the best weights), write `history.csv` and TensorBoard scalars, and hand a checkpoint to the session (a local run
directory, or Ray Train's checkpoint storage). Side effects happen on rank 0 only.

Feature cache (`feature_cache=true`, the default; `fer_dist/features.py`): with the resnet50
backbone and frozen layers, the frozen prefix's outputs are computed once per split (or
loaded), and the steps run the remainder model on them. The remainder shares the full
model's layers and variables, so checkpoints, the optimizer state, early-stopping restores
and the returned model are those of the full model, whichever path trained it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Protocol

import numpy as np

from fer_dist import storage
from fer_dist.config import TrainConfig, describe
from fer_dist.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_STATE = "state.json"  # written last: a checkpoint without it is incomplete


# ---------------------------------------------------------------------------------
# Sessions: where a loop runs and where its checkpoints and reports go.
# ---------------------------------------------------------------------------------
class Session(Protocol):
    run_dir: str  # URI where rank 0 writes config.json, history.csv, metrics.json, ...

    def restore_dir(self) -> str | None:
        """A fresh local copy of the checkpoint to resume from (the loop deletes it), or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Called by every rank every epoch; only rank 0 passes a checkpoint_dir."""

    def progress(self) -> bool:
        """Whether to show a progress bar."""


class LocalSession:
    """A plain process: checkpoints go to `<run_dir>/checkpoints/epoch_NNNN/`."""

    def __init__(self, run_dir: str, keep_checkpoints: int = 2, show_progress: bool = True):
        self.run_dir = run_dir
        self.keep = keep_checkpoints
        self.show_progress = show_progress and sys.stdout.isatty()  # a bar in a log file is noise

    @property
    def checkpoints_uri(self) -> str:
        return storage.join(self.run_dir, "checkpoints")

    def complete_checkpoints(self) -> list[str]:
        names = [n for n in storage.listdir(self.checkpoints_uri) if n.startswith("epoch_")]
        return [n for n in names if storage.exists(storage.join(self.checkpoints_uri, n, CHECKPOINT_STATE))]

    def restore_dir(self) -> str | None:
        done = self.complete_checkpoints()
        if not done:
            return None
        return storage.download_dir(storage.join(self.checkpoints_uri, done[-1]), tempfile.mkdtemp(prefix="fer_dist_restore_"))

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        name = f"epoch_{metrics['epoch']:04d}"
        target = storage.join(self.checkpoints_uri, name)
        # Upload everything but the state file, then the state file: complete or absent.
        for entry in sorted(os.listdir(checkpoint_dir)):
            if entry != CHECKPOINT_STATE:
                storage.write_bytes(storage.join(target, entry), _read(os.path.join(checkpoint_dir, entry)))
        storage.write_bytes(storage.join(target, CHECKPOINT_STATE), _read(os.path.join(checkpoint_dir, CHECKPOINT_STATE)))
        self._prune()

    def _prune(self) -> None:
        """Keeps the best `keep` checkpoints by val_accuracy, plus the latest."""
        done = self.complete_checkpoints()
        scored = []
        for name in done:
            state = json.loads(storage.read_text(storage.join(self.checkpoints_uri, name, CHECKPOINT_STATE)))
            scored.append((state["metrics"].get("val_accuracy", 0.0), name))
        keep = {name for _, name in sorted(scored, reverse=True)[: self.keep]} | {done[-1]}
        for name in done:
            if name not in keep:
                storage.delete_dir(storage.join(self.checkpoints_uri, name))

    def progress(self) -> bool:
        return self.show_progress


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------
# The strategy: the one place it is touched.
# ---------------------------------------------------------------------------------
def make_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers (Ray sets it),
    else the default strategy (one CPU or one GPU)."""
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    if len(workers) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def worker_rank(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id) if resolver is not None and resolver.task_id is not None else 0


def configure_runtime(config: TrainConfig) -> None:
    """Seeds, determinism and precision; before any model is built."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def make_optimizer(config: TrainConfig):
    import keras

    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            config.learning_rate, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay
        )
    if decay:
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=decay)
    if config.backbone == "resnet50":  # 24M trainable parameters in the seed recipe: the update matters
        return _fused_adam_class()(config.learning_rate)
    return keras.optimizers.Adam(config.learning_rate)


def scheduled_learning_rate(
    config: TrainConfig, base: float, global_step: int, steps_per_epoch: int, scale: float = 1.0
) -> float:
    """The learning rate of training step `global_step` (0-based, counted over the whole run).

    plateau: `base` (the plateau-decayed rate in the loop state). cosine: from
    config.learning_rate down to min_learning_rate along half a cosine over the steps after
    warm-up. Either way, during the first `warmup_epochs` epochs the rate ramps linearly up
    to its value: (global_step + 1) / warmup_steps of it. Depends only on the step, so a
    resumed run follows the same schedule. `scale` multiplies the cosine curve (phase 2 of a
    two-phase run: `unfreeze_lr_factor`; the plateau rate in `base` already holds it).
    """
    warmup = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        total = config.epochs * steps_per_epoch
        progress = min(1.0, max(0.0, (global_step - warmup) / max(1, total - warmup)))
        floor = min(config.min_learning_rate, config.learning_rate)
        value = scale * (floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    else:
        value = base
    if global_step < warmup:
        value *= (global_step + 1) / warmup
    return float(value)


_FUSED_ADAM = None


def _fused_adam_class():
    """`keras.optimizers.Adam` whose per-variable update is TF's fused `ResourceApplyAdam` kernel.

    Same formula, same slot variables (checkpoints are interchangeable with plain Adam), results
    equal to float32 rounding (1e-6 after 12 steps). Keras 3's Adam issues ~10 elementwise ops per
    variable, each a pass over memory; the fused kernel makes one. Measured on the 2-core CPU over
    the seed recipe's 24M trainable parameters: 367 ms -> 147 ms per update (one training step of
    the cached remainder: 43 -> 52 img/s). Used for the resnet50 backbone only: the compact CNN's
    100k parameters gain nothing, and its short test runs keep plain Adam's exact rounding. Where
    the fused op cannot be used (sparse gradients, amsgrad, a variable without a resource handle)
    the plain update runs.
    """
    global _FUSED_ADAM
    if _FUSED_ADAM is not None:
        return _FUSED_ADAM
    import keras
    import tensorflow as tf

    class FusedAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            if self.amsgrad or not isinstance(gradient, tf.Tensor):
                return super().update_step(gradient, variable, learning_rate)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            try:
                handles = variable.handle, m.handle, v.handle
            except (AttributeError, ValueError):
                return super().update_step(gradient, variable, learning_rate)
            dtype = variable.dtype
            local_step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=handles[0], m=handles[1], v=handles[2],
                beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False,
            )

    _FUSED_ADAM = FusedAdam
    return FusedAdam


# ---------------------------------------------------------------------------------
# Loop state, saved in every checkpoint.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    learning_rate: float = 0.0  # the plateau schedule's current rate (cosine: config.learning_rate)
    best_val_loss: float = float("inf")
    best_val_accuracy: float = 0.0
    best_epoch: int = 0  # epoch (1-based) of the lowest val_loss: the weights early stopping restores
    plateau_wait: int = 0  # epochs since val_loss last improved, for LR decay
    stop_wait: int = 0  # the same, for early stopping
    stopped_early: bool = False
    loop_seconds: float = 0.0  # wall time spent in training steps and validation so far (train_minutes)
    out_of_time: bool = False  # the train_minutes budget ran out
    phase: int = 1  # training phase of the last epoch (2: after `unfreeze_epoch`)
    history: list = dataclasses.field(default_factory=list)
    metrics: dict = dataclasses.field(default_factory=dict)

    def update(self, row: dict, config: TrainConfig) -> tuple[bool, bool]:
        """Applies one epoch's metrics: (improved, stop)."""
        self.epoch = row["epoch"]
        self.history.append(row)
        self.metrics = row
        self.best_val_accuracy = max(self.best_val_accuracy, row["val_accuracy"])
        improved = row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = row["val_loss"], row["epoch"]
            self.plateau_wait = self.stop_wait = 0
        else:
            self.plateau_wait += 1
            self.stop_wait += 1
            if config.lr_schedule == "plateau" and self.plateau_wait >= config.decay_patience:
                self.learning_rate = max(self.learning_rate * config.decay_factor, config.min_learning_rate)
                self.plateau_wait = 0
        stop = bool(config.early_stop_patience) and self.stop_wait >= config.early_stop_patience
        self.stopped_early = stop and self.epoch < config.epochs
        return improved, stop


def calibrate_batchnorm(model, images: np.ndarray, config: TrainConfig) -> tuple[int, int]:
    """`model.calibrate_batchnorm` on `config.calibrate_batchnorm` training images drawn with the
    seed (the same on every worker), run on a strategy-free copy whose variables are then assigned
    back, as a checkpoint restore does. Returns (BatchNorm layers, images)."""
    from fer_dist import model as model_lib

    count = min(config.calibrate_batchnorm, len(images))
    chosen = np.sort(np.random.default_rng([config.seed, 2]).choice(len(images), count, replace=False))
    plain = model_lib.build(config)
    for target, source in zip(plain.variables, model.variables):
        target.assign(np.asarray(source.numpy()))
    layers = model_lib.calibrate_batchnorm(plain, images[chosen], config)
    for target, source in zip(model.variables, plain.variables):
        target.assign(np.asarray(source.numpy()))
    return layers, count


def _save_variables(path: str, variables) -> None:
    np.savez(path, *[np.asarray(v.numpy()) for v in variables])


def _load_variables(path: str, variables, what: str) -> None:
    with np.load(path) as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
        raise UserError(f"checkpoint {path}: its {what} does not match this config's model (was the config changed?)")
    for v, a in zip(variables, arrays):
        v.assign(a)


def write_checkpoint(directory: str, model, optimizer, state: LoopState, config: TrainConfig, best_weights) -> None:
    os.makedirs(directory, exist_ok=True)
    _save_variables(os.path.join(directory, "model.npz"), model.variables)
    _save_variables(os.path.join(directory, "optimizer.npz"), optimizer.variables)
    if best_weights is not None and state.best_epoch != state.epoch:
        np.savez(os.path.join(directory, "best.npz"), *best_weights)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config.to_json())
    with open(os.path.join(directory, CHECKPOINT_STATE), "w") as f:
        json.dump(dataclasses.asdict(state), f, indent=1)


def read_checkpoint(directory: str, model, optimizer) -> tuple[LoopState, list | None]:
    """Restores model and optimizer variables; returns the loop state and the best weights."""
    _load_variables(os.path.join(directory, "model.npz"), model.variables, "model")
    _load_variables(os.path.join(directory, "optimizer.npz"), optimizer.variables, "optimizer state")
    with open(os.path.join(directory, CHECKPOINT_STATE)) as f:
        state = LoopState(**json.load(f))
    best_path = os.path.join(directory, "best.npz")
    best = None
    if os.path.exists(best_path):
        with np.load(best_path) as saved:
            best = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return state, best


# ---------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class FitResult:
    state: LoopState
    model: object  # a plain (strategy-free) Keras model holding the best weights (rank 0), else None
    rank: int
    dataset: object = None
    trained_epochs: int = 0  # epochs trained by this call (0: the run was already complete)


def fit(config: TrainConfig, session: Session, dataset=None) -> FitResult:
    """Trains `config` to the end (or early stop), checkpointing every epoch through `session`."""
    import tensorflow as tf

    from fer_dist import EMOTIONS, augment, data, features as features_lib, model as model_lib, pipeline

    strategy = make_strategy()  # before any other TF op: MWMS needs a fresh context
    rank = worker_rank(strategy)
    configure_runtime(config)
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise UserError(
            f"global_batch_size={config.global_batch_size} does not divide into {replicas} replicas "
            f"(per_worker_batch_size must be a whole number)"
        )
    per_worker_batch_size = config.global_batch_size // replicas

    if dataset is None:
        dataset = data.load(
            config.data, skip_bad_rows=config.skip_bad_rows, val_fraction=config.val_fraction,
            seed=config.seed, builtin_size=config.builtin_size,
        )
    if rank == 0:
        log.info("config: %s", describe(config))
        log.info(
            "data %s: train %d, val %d, test %s; %d replica(s), per_worker_batch_size %d",
            dataset.source, len(dataset.train), len(dataset.val),
            len(dataset.test) if dataset.test is not None else "none", replicas, per_worker_batch_size,
        )
        for note in dataset.notes:
            log.info("data: %s", note)

    with strategy.scope():
        model = model_lib.build(config)
        optimizer = make_optimizer(config)
        # Slots for every variable the run ever trains (phase 2's when there is one); phase 1
        # then updates a subset of them.
        model_lib.set_phase(model, config, 2 if config.unfreeze_epoch else 1)
        optimizer.build(model.trainable_variables)
        model_lib.set_phase(model, config, 1)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        ) if config.label_smoothing == 0 else None

    state, best_weights = LoopState(learning_rate=config.learning_rate), None
    restore = session.restore_dir()
    if config.calibrate_batchnorm and not restore:  # a checkpoint holds calibrated statistics already
        count, images = calibrate_batchnorm(model, dataset.train.images, config)
        if rank == 0:
            log.info("calibrate_batchnorm: set the moving statistics of %d BatchNorm layers from %d training images", count, images)
    if restore:
        state, best_weights = read_checkpoint(restore, model, optimizer)
        shutil.rmtree(restore, ignore_errors=True)
        if rank == 0:
            log.info("resumed from the checkpoint of epoch %d; continuing at epoch %d", state.epoch, state.epoch + 1)
    if best_weights is None and state.epoch:
        best_weights = [np.asarray(v.numpy()) for v in model.variables]

    first_epoch = state.epoch

    def phase_of(epoch: int) -> int:
        return 2 if config.unfreeze_epoch and epoch > config.unfreeze_epoch else 1

    def inputs_for(phase: int):
        """(net, train features, val features) of a phase: the remainder on cached features of
        the frozen prefix when that is exact, else the full model on images (None, None).
        Called after the restore: the cache key hashes the frozen prefix's weights as they are."""
        phase_config = config if phase == 1 else dataclasses.replace(
            config, freeze_layers=config.unfreeze_to, unfreeze_epoch=0
        )
        with strategy.scope():
            cached, why_not = features_lib.prepare(phase_config, model, dataset)
        if cached is None:
            if rank == 0:
                log.info("feature cache: not used (%s); training the full model on images", why_not)
            return model, None, None, None
        if rank == 0:
            log.info(
                "feature cache: training the last %d layers on cached %s features "
                "(exact: frozen layers in inference mode); cut after %s (trunk layer %d)%s, %s %s "
                "in %.1f s from %s",
                cached.split.trained_layers, cached.split.cut_name.split("_")[0], cached.split.cut_name,
                cached.split.cut - 1,
                f", {cached.split.frozen_in_remainder} frozen layer(s) run in the remainder"
                if cached.split.frozen_in_remainder else "",
                cached.train.dtype, "loaded" if cached.hit else "computed", cached.seconds, cached.uri,
            )
            if cached.train_flipped is not None:
                log.info(
                    "feature cache: augment_flip reads each example's flipped-image features (%s) with probability 1/2",
                    "loaded" if cached.flipped_hit else "computed now",
                )
        return cached.split.remainder, cached.train, cached.val, cached.train_flipped

    def per_example_loss(labels, logits):
        if loss_fn is not None:
            return loss_fn(labels, logits)
        one_hot = tf.one_hot(labels, logits.shape[-1])
        return tf.keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=config.label_smoothing
        )

    # Training-only input augmentation and mixup (fer_dist/augment.py) act on images: the
    # feature cache is ruled out for them (features.config_reason), so net is the full model.
    augmenting = augment.any_image_augmentation(config)
    mixing = config.mixup_alpha > 0
    weights_np = augment.class_weights(dataset.train.labels, config.class_weighting)
    class_weights = tf.constant(weights_np) if weights_np is not None else None
    if rank == 0 and weights_np is not None:
        log.info("class weighting %s: %s", config.class_weighting,
                 ", ".join(f"{name} {w:.2f}" for name, w in zip(EMOTIONS, weights_np)))

    def make_steps(net, trainable: list):
        """(train_step, eval_step) tf.functions of one phase: `net` on its inputs, updating `trainable`."""
        # On cached features the only augmentation is the cached flip, done by the input pipeline.
        in_graph = (augmenting or mixing) and net is model
        if net is not model and features_lib.config_reason(config):  # pragma: no cover - inputs_for checked it
            raise RuntimeError("augmentation or mixup on cached features")

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

        @tf.function(jit_compile=config.jit_compile or None)
        def _compiled_train_step(images, labels):
            return replica_train_step(images, labels)

        @tf.function
        def train_step(iterator):
            loss, correct = strategy.run(
                _compiled_train_step if config.jit_compile else replica_train_step, args=next(iterator)
            )
            return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

        @tf.function
        def eval_step(iterator):
            loss, correct = strategy.run(replica_eval_step, args=next(iterator))
            return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

        return train_step, eval_step

    precise_forward: dict = {}  # one traced training-mode forward pass per net (momentum 0 baked in)

    def precise_batchnorm(net, train_features, epoch: int) -> None:
        """PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): the moving statistics
        of the BatchNorm layers that train are replaced by those of `precise_bn` training examples
        (drawn with (seed, epoch)) under the current weights, in one training-mode forward pass with
        momentum 0. The moving averages otherwise lag the weights by ~100 steps, which made the
        validation accuracy of short runs swing by 10-20 points from one epoch to the next.
        Every replica runs its share; the statistics are averaged across replicas."""
        count = min(config.precise_bn, len(dataset.train))
        count -= count % replicas
        chosen = np.sort(np.random.default_rng([config.seed, 3, epoch]).choice(len(dataset.train), count, replace=False))
        subset = data.Split(dataset.train.images[chosen], dataset.train.labels[chosen])
        fn, _ = pipeline.eval_dataset_fn(
            subset, dataclasses.replace(config, global_batch_size=count),
            None if train_features is None else train_features[chosen],
        )
        batch = next(iter(strategy.distribute_datasets_from_function(fn)))
        with model_lib.batchnorm_statistics_pass(model_lib.batchnorm_layers(net, trainable_only=True)):
            if id(net) not in precise_forward:  # traced on this first call, with momentum 0
                precise_forward[id(net)] = tf.function(lambda images: net(images, training=True))
            strategy.run(precise_forward[id(net)], args=(batch[0],))

    steps = pipeline.steps_per_epoch(len(dataset.train), config)
    outputs = RunOutputs(session.run_dir, config) if rank == 0 else None
    if outputs:
        outputs.start(state)
    budget_s = config.train_minutes * 60.0
    if budget_s and replicas > 1:
        @tf.function
        def _any_replica(flag):  # every worker must stop at the same step: a collective MAX
            value = strategy.run(lambda: tf.cast(flag, tf.float32))
            return strategy.reduce("MAX", value, axis=None) > 0

        def out_of_time(flag: bool) -> bool:
            return bool(_any_replica(tf.constant(flag)))
    else:
        def out_of_time(flag: bool) -> bool:
            return flag

    if first_epoch >= config.epochs or (state.stopped_early and restore) or state.out_of_time:
        if rank == 0:
            log.info(
                "nothing to train: %d of %d epochs already done%s", state.epoch, config.epochs,
                f" and train_minutes={config.train_minutes:g} used up" if state.out_of_time else "",
            )
        if state.metrics:  # a rerun (e.g. a resumed Tune trial) still reports where it stands
            session.report(dict(state.metrics, best_val_accuracy=state.best_val_accuracy, stopped_early=state.stopped_early), None)
    else:
        phase = None
        for epoch in range(first_epoch + 1, config.epochs + 1):
            if phase_of(epoch) != phase:  # the first epoch of this call, or the switch to phase 2
                phase = phase_of(epoch)
                if phase == 2 and state.phase == 1:
                    state.phase = 2
                    state.learning_rate = max(state.learning_rate * config.unfreeze_lr_factor, config.min_learning_rate)
                frozen = model_lib.set_phase(model, config, phase)
                if rank == 0 and config.unfreeze_epoch:
                    log.info(
                        "phase %d from epoch %d: %d trunk layers frozen, %s trainable parameters, lr %.3g",
                        phase, epoch, frozen, f"{sum(int(tf.size(v)) for v in model.trainable_variables):,}",
                        state.learning_rate,
                    )
                net, train_features, val_features, flipped_features = inputs_for(phase)
                phase_end = config.unfreeze_epoch if phase == 1 and config.unfreeze_epoch else config.epochs
                train_iter = iter(strategy.distribute_datasets_from_function(
                    pipeline.train_dataset_fn(
                        dataset.train, config, epoch - 1, phase_end, steps, train_features, flipped_features
                    )
                ))
                val_fn, val_steps = pipeline.eval_dataset_fn(dataset.val, config, val_features)
                val_dist = strategy.distribute_datasets_from_function(val_fn)
                train_step, eval_step = make_steps(net, model.trainable_variables)
            lr = state.learning_rate
            optimizer.learning_rate.assign(lr)
            bar = _progress_bar(steps, epoch, config.epochs) if rank == 0 and session.progress() else None
            start = time.perf_counter()
            loss_sum = correct_sum = 0.0
            done = 0
            for step in range(steps):
                step_lr = scheduled_learning_rate(
                    config, state.learning_rate, (epoch - 1) * steps + step, steps,
                    scale=config.unfreeze_lr_factor if phase == 2 else 1.0,
                )
                if step_lr != lr:  # per step under cosine or warm-up; else once per epoch, as above
                    lr = step_lr
                    optimizer.learning_rate.assign(lr)
                loss, correct = train_step(train_iter)
                done += 1
                loss_sum += float(loss)
                correct_sum += float(correct)
                if bar is not None:
                    seen = (step + 1) * config.global_batch_size
                    bar.update(step + 1, [("loss", loss_sum / (step + 1)), ("accuracy", correct_sum / seen)])
                elif rank == 0 and steps >= 50 and (step + 1) % (steps // 10) == 0 and step + 1 < steps:
                    _log_progress(epoch, step + 1, steps, loss_sum, start, config.global_batch_size)
                if budget_s and step + 1 < steps and out_of_time(
                    state.loop_seconds + time.perf_counter() - start >= budget_s
                ):
                    state.out_of_time = True
                    break
            train_seconds = time.perf_counter() - start
            if config.precise_bn:
                precise_batchnorm(net, train_features, epoch)
            val_iter = iter(val_dist)
            val_loss = val_correct = 0.0
            for _ in range(val_steps):
                vl, vc = eval_step(val_iter)
                val_loss += float(vl)
                val_correct += float(vc)
            row = {
                "epoch": epoch,
                "loss": loss_sum / max(done, 1),
                "accuracy": correct_sum / (max(done, 1) * config.global_batch_size),
                "val_loss": val_loss / len(dataset.val),
                "val_accuracy": val_correct / len(dataset.val),
                "learning_rate": lr,  # of the epoch's last step
                "images_per_second": done * config.global_batch_size / train_seconds,
                "epoch_seconds": time.perf_counter() - start,
                "steps": done,
            }
            state.loop_seconds += row["epoch_seconds"]
            if budget_s and not state.out_of_time and epoch < config.epochs:
                state.out_of_time = out_of_time(state.loop_seconds >= budget_s)
            improved, stop = state.update(row, config)
            if improved:
                best_weights = [np.asarray(v.numpy()) for v in model.variables]
            if rank == 0:
                log.info(
                    "epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.3g %.0f img/s%s",
                    epoch, config.epochs, row["loss"], row["accuracy"], row["val_loss"], row["val_accuracy"],
                    row["learning_rate"], row["images_per_second"], " *" if improved else "",
                )
                outputs.epoch_end(state)
            checkpoint_dir = None
            if rank == 0:
                checkpoint_dir = tempfile.mkdtemp(prefix="fer_dist_ckpt_")
                write_checkpoint(checkpoint_dir, model, optimizer, state, config, best_weights)
            session.report(
                dict(row, best_val_accuracy=state.best_val_accuracy, stopped_early=stop, out_of_time=state.out_of_time),
                checkpoint_dir,
            )
            if checkpoint_dir:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            if stop or state.out_of_time:
                if rank == 0 and state.out_of_time:
                    log.info(
                        "train_minutes=%g used up after %d of epoch %d's %d steps (%.1f min); restoring epoch %d",
                        config.train_minutes, done, epoch, steps, state.loop_seconds / 60, state.best_epoch,
                    )
                elif rank == 0:
                    log.info(
                        "early stop: val_loss has not improved for %d epochs; restoring epoch %d",
                        config.early_stop_patience, state.best_epoch,
                    )
                break

    log.debug("training loop done on rank %d", rank)
    if rank != 0:
        return FitResult(state=state, model=None, rank=rank, dataset=dataset, trained_epochs=state.epoch - first_epoch)
    # A strategy-free copy holding the best weights: for evaluation and export on rank 0 only.
    final = model_lib.build(config)
    values = best_weights if best_weights is not None else [np.asarray(v.numpy()) for v in model.variables]
    for v, a in zip(final.variables, values):
        v.assign(a)
    return FitResult(state=state, model=final, rank=rank, dataset=dataset, trained_epochs=state.epoch - first_epoch)


def _log_progress(epoch: int, done: int, steps: int, loss_sum: float, start: float, global_batch_size: int) -> None:
    """A progress line for logs (no terminal: Ray workers, CI, files): every 10% of an epoch."""
    elapsed = time.perf_counter() - start
    log.info(
        "epoch %d: %d/%d steps (%d%%) loss %.4f, %.0f img/s, ETA %.0f s",
        epoch, done, steps, 100 * done // steps, loss_sum / done, done * global_batch_size / elapsed,
        elapsed / done * (steps - done),
    )


def _progress_bar(steps: int, epoch: int, epochs: int):
    import keras

    print(f"Epoch {epoch}/{epochs}", flush=True)
    return keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"])


class RunOutputs:
    """Rank 0's files in the run directory: config.json, history.csv, TensorBoard scalars."""

    def __init__(self, run_dir: str, config: TrainConfig):
        self.run_dir = run_dir
        self.config = config
        local = storage.local_path(run_dir)
        self._tb_local = os.path.join(local, "tensorboard") if local else tempfile.mkdtemp(prefix="fer_dist_tb_")
        self._writer = None

    def start(self, state: LoopState) -> None:
        storage.write_text(storage.join(self.run_dir, "config.json"), self.config.to_json())
        if state.history:
            self.write_history(state.history)

    def write_history(self, history: list[dict]) -> None:
        import pandas as pd

        buf = io.StringIO()
        pd.DataFrame(history).to_csv(buf, index=False)
        storage.write_text(storage.join(self.run_dir, "history.csv"), buf.getvalue())

    def epoch_end(self, state: LoopState) -> None:
        import tensorflow as tf

        self.write_history(state.history)
        row = state.history[-1]
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self._tb_local, "train"))
        with self._writer.as_default(step=row["epoch"]):
            for key, value in row.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        self._writer.flush()
        if storage.local_path(self.run_dir) is None:
            storage.upload_dir(self._tb_local, storage.join(self.run_dir, "tensorboard"))
