"""The inputs of a training phase: images for the full model, or the frozen prefix's cached
features for the trainable remainder (fer_dist/features.py), as distributed datasets.

The remainder shares the full model's layers and variables, so checkpoints, the optimizer
state, early-stopping restores and the returned model are those of the full model, whichever
path trained it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fer_dist import features as features_lib
from fer_dist import pipeline
from fer_dist.config import TrainConfig
from fer_dist.steps import Distributed


@dataclasses.dataclass
class Inputs:
    net: object  # the model the steps run: the full model, or the remainder on cached features
    train_features: np.ndarray | None = None
    val_features: np.ndarray | None = None
    flipped_features: np.ndarray | None = None  # the flipped train images' features (augment_flip)


def phase_config(config: TrainConfig, phase: int) -> TrainConfig:
    """The config whose frozen layers are those of `phase` (2: `unfreeze_to`)."""
    if phase == 1:
        return config
    return dataclasses.replace(config, freeze_layers=config.unfreeze_to, unfreeze_epoch=0)


def for_phase(config: TrainConfig, phase: int, model, dataset, dist: Distributed, reporter) -> Inputs:
    """The remainder on cached features of the frozen prefix when that is exact, else the full
    model on images. Called after a restore: the cache key hashes the frozen prefix's weights."""
    with dist.scope():
        cached, why_not = features_lib.prepare(phase_config(config, phase), model, dataset)
    if cached is None:
        reporter.info("feature cache: not used (%s); training the full model on images", why_not)
        return Inputs(model)
    split = cached.split
    reporter.info(
        "feature cache: training the last %d layers on cached %s features "
        "(exact: frozen layers in inference mode); cut after %s (trunk layer %d)%s, %s %s in %.1f s from %s",
        split.trained_layers,
        split.cut_name.split("_")[0],
        split.cut_name,
        split.cut - 1,
        f", {split.frozen_in_remainder} frozen layer(s) run in the remainder" if split.frozen_in_remainder else "",
        cached.train.dtype,
        "loaded" if cached.hit else "computed",
        cached.seconds,
        cached.uri,
    )
    if cached.train_flipped is not None:
        reporter.info(
            "feature cache: augment_flip reads each example's flipped-image features (%s) with probability 1/2",
            "loaded" if cached.flipped_hit else "computed now",
        )
    return Inputs(split.remainder, cached.train, cached.val, cached.train_flipped)


def train_batches(
    dist: Distributed, dataset, config: TrainConfig, inputs: Inputs, epochs: range, steps: int, skip_steps: int = 0
):
    """An iterator over the distributed training batches of `epochs` (0-based), in the
    deterministic order of `pipeline.epoch_order`, from step `skip_steps` of the first."""
    fn = pipeline.train_dataset_fn(
        dataset.train,
        config,
        epochs.start,
        epochs.stop,
        steps,
        inputs.train_features,
        inputs.flipped_features,
        skip_steps=skip_steps,
    )
    return iter(dist.dataset(fn))


def val_batches(dist: Distributed, dataset, config: TrainConfig, inputs: Inputs):
    """(distributed validation dataset, steps per pass)."""
    fn, steps = pipeline.eval_dataset_fn(dataset.val, config, inputs.val_features)
    return dist.dataset(fn), steps
