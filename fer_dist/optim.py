"""Optimizers and learning-rate schedules.

`make_optimizer(config)` builds the run's optimizer (Adam, AdamW, SGD with Nesterov momentum;
the fused Adam for the resnet50 backbone), one that applies gradients as given: the train step
all-reduces them itself (`steps.all_reduce_gradients`), so the optimizer must not sum them over
the replicas a second time (`pre_reduced`); with `mixed_precision`, wrapped in a dynamic loss
scaler (`loss_scaled`). `scheduled_learning_rate` is the learning rate of
any training step: plateau (the loop's decayed rate), cosine, and linear warm-up.
"""

from __future__ import annotations

import math

from fer_dist.config import TrainConfig

LOSS_SCALE_NAME = "loss_scale"  # the dynamic loss scaler's name: its variables' prefix in checkpoints


def make_optimizer(config: TrainConfig):
    """The run's optimizer; with `mixed_precision`, inside Keras's dynamic `LossScaleOptimizer`
    (`loss_scaled`)."""
    optimizer = _base_optimizer(config)
    return loss_scaled(optimizer) if config.mixed_precision else optimizer


def loss_scaled(optimizer):
    """`optimizer` with dynamic loss scaling for float16 compute (Keras 3's `LossScaleOptimizer`:
    the loss times a scale, 2^15 at first, before the gradients; they are divided by it before
    the update; a step whose gradients are not all finite is skipped and halves the scale; 2000
    finite steps double it). The train step scales the loss (`optimizer.scale_loss`) and hands the
    optimizer gradients already summed over the replicas: finite on one replica means finite on
    all, so every replica skips the same steps. Its variables (the scale, the finite steps since
    it last changed, and Keras's unused `iteration` and `learning_rate` of the wrapper) are
    checkpointed under `loss_scale/`; the inner optimizer's keep a plain run's names. A skipped
    step leaves `iterations` (the inner optimizer's) where it was."""
    import keras

    return keras.optimizers.LossScaleOptimizer(optimizer, name=LOSS_SCALE_NAME)


def inner(optimizer):
    """The optimizer that updates the weights: `optimizer` itself, or the one a loss scaler wraps."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def loss_scale(optimizer):
    """The dynamic loss scale's variable, or None without loss scaling."""
    return getattr(optimizer, "dynamic_scale", None)


def _base_optimizer(config: TrainConfig):
    import keras

    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return pre_reduced(keras.optimizers.SGD)(
            config.learning_rate, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay
        )
    if decay:
        return pre_reduced(keras.optimizers.AdamW)(config.learning_rate, weight_decay=decay)
    if config.adam_variance == "frozen":
        return pre_reduced(_fused_adam_class())(config.learning_rate, variance_frozen_after=config.powersgd_start_step)
    if config.backbone == "resnet50":  # 24M trainable parameters in the seed recipe: the update matters
        return pre_reduced(_fused_adam_class())(config.learning_rate)
    return pre_reduced(keras.optimizers.Adam)(config.learning_rate)


_PRE_REDUCED: dict = {}


def pre_reduced(cls):
    """`cls` (a Keras 3 optimizer) applying gradients that are already summed over the replicas.

    Keras 3.15's TF optimizer all-reduces gradients inside `apply_gradients` in a replica
    context, with default options, through `_all_reduce_sum_gradients`; this subclass makes that
    the identity. The class keeps its name, so its variables' names (and checkpoints) do not
    change. tests/test_steps.py checks that 2 replicas equal 1 (no double sum) and that the hook
    still exists in the installed Keras."""
    if cls not in _PRE_REDUCED:

        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

        _PRE_REDUCED[cls] = type(cls.__name__, (cls,), {"_all_reduce_sum_gradients": _all_reduce_sum_gradients})
    return _PRE_REDUCED[cls]


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

    `variance_frozen_after=F` (`adam_variance=frozen`): from optimizer step F + 1 on, the second
    moment v stays as step F left it, bias-corrected as at step F (1-bit Adam's frozen variance,
    Tang et al. 2021: PowerSGD's low-rank gradients with fed-back errors are not the true
    gradients' per-coordinate variance); the first moment runs on. It needs the fused kernel.
    """
    global _FUSED_ADAM
    if _FUSED_ADAM is not None:
        return _FUSED_ADAM
    import keras
    import tensorflow as tf

    class FusedAdam(keras.optimizers.Adam):
        def __init__(self, *args, variance_frozen_after: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.variance_frozen_after = variance_frozen_after

        def update_step(self, gradient, variable, learning_rate):
            frozen_after = self.variance_frozen_after
            handles = self._fusable(gradient, variable)
            if handles is None:
                if frozen_after is not None:
                    raise ValueError(f"adam_variance=frozen: no fused Adam update for {variable.path}")
                return super().update_step(gradient, variable, learning_rate)
            dtype = variable.dtype
            local_step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            beta_2_step, beta_2_now = local_step, beta_2
            if frozen_after is not None:  # v *= 1, + 0 * g^2; its bias correction as at step F
                beta_2_step = tf.minimum(local_step, tf.cast(frozen_after, dtype))
                beta_2_now = tf.where(local_step > tf.cast(frozen_after, dtype), tf.ones_like(beta_2), beta_2)
            tf.raw_ops.ResourceApplyAdam(
                var=handles[0],
                m=handles[1],
                v=handles[2],
                beta1_power=tf.pow(beta_1, local_step),
                beta2_power=tf.pow(beta_2, beta_2_step),
                lr=tf.cast(learning_rate, dtype),
                beta1=beta_1,
                beta2=beta_2_now,
                epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype),
                use_locking=False,
            )

        def _fusable(self, gradient, variable):
            """(variable, m, v) resource handles for the fused kernel, or None where it cannot run."""
            if self.amsgrad or not isinstance(gradient, tf.Tensor):
                return None
            index = self._get_variable_index(variable)
            try:
                return variable.handle, self._momentums[index].handle, self._velocities[index].handle
            except (AttributeError, ValueError):
                return None

    _FUSED_ADAM = FusedAdam
    return FusedAdam
