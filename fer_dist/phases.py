"""Training phases: one, or a head warm-up on a frozen trunk followed by unfreezing.

    python jobs/train.py ... --preset finetune      # unfreeze_epoch=2, unfreeze_to=0

Epochs 1..unfreeze_epoch train with `freeze_layers` frozen, then only the first `unfreeze_to`
layers stay frozen and the learning rate is multiplied by `unfreeze_lr_factor`. BatchNorm
layers that phase 1 froze stay frozen (inference mode).
"""

from __future__ import annotations

from fer_dist import model as model_lib
from fer_dist.config import TrainConfig


def phase_of(config: TrainConfig, epoch: int) -> int:
    """The phase that trains `epoch` (1-based)."""
    return 2 if config.unfreeze_epoch and epoch > config.unfreeze_epoch else 1


def last_epoch(config: TrainConfig, phase: int) -> int:
    return config.unfreeze_epoch if phase == 1 and config.unfreeze_epoch else config.epochs


def enter(config: TrainConfig, model, state, phase: int, epoch: int, reporter) -> None:
    """Freezes the layers of `phase` and, on the switch to phase 2, scales the learning rate."""
    if phase == 2 and state.phase == 1:
        state.phase = 2
        state.learning_rate = max(state.learning_rate * config.unfreeze_lr_factor, config.min_learning_rate)
    frozen = model_lib.set_phase(model, config, phase)
    if config.unfreeze_epoch:
        reporter.info(
            "phase %d from epoch %d: %d trunk layers frozen, %s trainable parameters, lr %.3g",
            phase,
            epoch,
            frozen,
            f"{model_lib.count_params(model)[0]:,}",
            state.learning_rate,
        )
