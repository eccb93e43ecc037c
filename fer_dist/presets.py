"""The named training recipes, as data: `--preset NAME` of `jobs/train.py` and `jobs/tune.py`.

    python jobs/train.py --data data/fer2013.csv --preset seed

Each `Preset` holds the config fields that differ from `TrainConfig`'s defaults
(`fer_dist/config.py`, whose `resolve` applies them), where the recipe comes from
(`source`; the citation of each choice is a comment beside it), and the command that
runs it. No logic lives here, and nothing from the rest of the package is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One named recipe: the fields it sets, where it comes from, the command that runs it."""

    name: str
    fields: Mapping[str, Any]
    source: str
    command: str


def _preset(name: str, fields: Mapping[str, Any], source: str, command: str) -> Preset:
    return Preset(name=name, fields=MappingProxyType(dict(fields)), source=source, command=command)


# The seed recipe, faithfully: ResNet50 with ImageNet weights, first 143 layers
# frozen, Dense(he_uniform)+BatchNorm+Dropout(0.5) head, Adam, LR x0.9 on
# val_loss plateau, early stopping, small batches. It reached 53.2% test accuracy.
SEED = _preset(
    "seed",
    dict(
        backbone="resnet50",
        weights="imagenet",
        freeze_layers=143,
        head_pooling="flatten",
        head_units=(1024, 512),
        dropout=0.5,
        optimizer="adam",
        learning_rate=1e-3,
        decay_factor=0.9,
        decay_patience=2,
        early_stop_patience=6,
        global_batch_size=32,
        epochs=30,
    ),
    source=(
        "The seed recipe, faithfully: ResNet50 with ImageNet weights, first 143 layers frozen, "
        "Dense(he_uniform)+BatchNorm+Dropout(0.5) head, Adam, LR x0.9 on val_loss plateau, early stopping, "
        "small batches. It reached 53.2% test accuracy."
    ),
    command="python jobs/train.py --data data/fer2013.csv --preset seed",
)

# Seconds on a CPU: the compact backbone, a few hundred built-in images.
SMOKE = _preset(
    "smoke",
    dict(
        backbone="compact",
        weights="none",
        freeze_layers=0,
        head_pooling="avg",
        head_units=(32,),
        dropout=0.2,
        builtin_size=600,
        epochs=2,
        global_batch_size=32,
        early_stop_patience=0,
    ),
    source="Seconds on a CPU: the compact backbone, a few hundred built-in images.",
    command="python jobs/train.py --preset smoke",
)

# The embedded default run: the compact backbone on the built-in dataset,
# >= 90% test accuracy in a few minutes on a 2-core CPU.
DEMO = _preset(
    "demo",
    dict(
        backbone="compact",
        weights="none",
        freeze_layers=0,
        head_pooling="avg",
        head_units=(64,),
        dropout=0.3,
        learning_rate=3e-3,
        decay_factor=0.5,
        decay_patience=1,
        early_stop_patience=3,
        builtin_size=12000,
        global_batch_size=64,
        epochs=12,
    ),
    source=(
        "The embedded default run: the compact backbone on the built-in dataset, "
        ">= 90% test accuracy in a few minutes on a 2-core CPU."
    ),
    command="python jobs/train.py",
)

# The default search's trials (`python jobs/tune.py`): the demo recipe on fewer images and
# epochs, so that >= 6 trials fit in a few minutes on a 2-core CPU.
QUICK = _preset(
    "quick",
    dict(DEMO.fields, builtin_size=6000, epochs=8, global_batch_size=32, early_stop_patience=0),
    source=(
        "The default search's trials: the demo recipe on fewer images and epochs, "
        "so that >= 6 trials fit in a few minutes on a 2-core CPU."
    ),
    command="python jobs/tune.py",
)

# `finetune`: the long GPU recipe: ResNet50 from ImageNet (or VGGFace2) weights at 96 px, fine-tuned
# end to end with the training choices of the best single networks published on FER-2013. Its
# accuracy has not been measured here (no ImageNet weights, no GPU on the machines the README's
# figures come from); at 17 img/s in phase 2 on the 2-core CPU it is a GPU recipe.
#   [K&C] Khaireddin & Chen 2021, "Facial Emotion Recognition: State of the Art Performance on
#         FER2013" (arXiv 2105.03588): VGG variant, 73.28% test; SGD + Nesterov best of the
#         optimisers they compared, reduce-on-plateau best of the schedules, augmentation by
#         rescaling / shifting (up to 20%) and rotation (up to 10 degrees), random erasing,
#         ten-crop at test time, batch 64.
#   [P&K] Pramerdorfer & Kampel 2016, "Facial Expression Recognition using Convolutional Neural
#         Networks: State of the Art" (arXiv 1612.02903): random crops + horizontal flips in
#         training, ten-crop averaging at test time; deeper nets (ResNet, Inception) on FER-2013.
#   [S16] Szegedy et al. 2016, "Rethinking the Inception Architecture" (label smoothing 0.1).
#   [KTL] the Keras transfer-learning guide: train the new head on the frozen trunk first, then
#         unfreeze and fine-tune with a low learning rate, keeping BatchNorm in inference mode.
FINETUNE = _preset(
    "finetune",
    dict(
        backbone="resnet50",
        weights="imagenet",  # transfer from ImageNet, as the seed recipe
        image_size=96,  # 48-px faces upsampled in the input pipeline: ResNet50's stride 32 leaves 3x3 maps instead of 2x2 (own choice; larger costs 4x per doubling)
        # Two phases [KTL]: 2 epochs train the head on the frozen trunk (a random head's large
        # gradients would otherwise wreck the pretrained features), then the whole trunk is
        # fine-tuned (FER-2013's 28k faces differ from ImageNet; [K&C]/[P&K] train every layer)
        # at a tenth of the learning rate.
        freeze_layers=175,  # every ResNet50 trunk layer (include_top=False has 175)
        unfreeze_epoch=2,
        unfreeze_to=0,
        unfreeze_lr_factor=0.1,
        train_batchnorm=False,  # [KTL]: pretrained BatchNorm statistics stay in inference mode
        head_pooling="avg",  # the standard ResNet head: global average pooling (own choice)
        head_units=(512,),  # one hidden layer (own choice)
        dropout=0.5,  # as the seed recipe
        optimizer="sgd",  # [K&C]: SGD with Nesterov momentum was the best optimiser
        nesterov=True,  # [K&C]
        momentum=0.9,  # [K&C]
        learning_rate=0.01,  # [K&C]
        weight_decay=1e-4,  # [K&C] (decoupled in Keras: variable -= lr * wd * variable)
        lr_schedule="plateau",  # [K&C]: reduce-on-plateau beat cosine annealing and step decay
        decay_factor=0.75,  # [K&C]
        decay_patience=5,  # [K&C]
        early_stop_patience=12,  # own choice (K&C train a fixed 300 epochs from scratch; a pretrained trunk needs fewer)
        epochs=80,  # own choice, see above
        label_smoothing=0.1,  # [S16]
        global_batch_size=64,  # [K&C]
        augment_flip=True,  # [P&K], [K&C]
        augment_shift=0.2,  # [K&C]: shifts up to 20% (with the zoom below: [P&K]'s random crops)
        augment_zoom=0.2,  # [K&C]: rescaling up to 20%
        augment_rotation=10.0,  # [K&C]: up to 10 degrees
        augment_erasing=0.5,  # [K&C]: random erasing with probability 0.5
        eval_tta="tencrop",  # [P&K], [K&C]: ten-crop averaging at test time
        feature_cache=False,  # the input is augmented: the frozen-trunk cache would not be exact
    ),
    source=(
        "The long GPU recipe: ResNet50 from ImageNet (or VGGFace2) weights at 96 px, fine-tuned end to end "
        "with the training choices of the best single networks published on FER-2013 (Khaireddin & Chen 2021, "
        "arXiv 2105.03588; Pramerdorfer & Kampel 2016, arXiv 1612.02903; Szegedy et al. 2016; the Keras "
        "transfer-learning guide). Its accuracy has not been measured here."
    ),
    command="python jobs/train.py --data data/fer2013.csv --preset finetune",
)

# `best`: the strongest recipe measured here: 44.33% PublicTest against the seed's 41.24% on equal
# CPU time from random weights (README "Results", `python benchmarks/compare.py`). The seed's
# model, optimiser and feature cache, plus four choices that cost no training step. Tried and
# dropped on the way (README): freezing 81 layers so that conv4 trains too (no gain in the budget,
# 1.6x slower per image) and calibrate_batchnorm (worse random features).
BEST = _preset(
    "best",
    dict(
        SEED.fields,
        # [WJ21] Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm" (PreciseBN): BatchNorm statistics
        # recomputed under the current weights before each validation. Measured on the seed's own
        # checkpoints: +1.8 and +2.5 points of PublicTest accuracy, and a stable validation curve
        # (the lagging moving averages made it swing by 10-20 points), so the best epoch is chosen on
        # what the model can do, and plateau decay reacts to real plateaus.
        precise_bn=2048,
        label_smoothing=0.1,  # [S16]
        augment_flip=True,  # [P&K]: horizontal flips; exact on the feature cache (both outcomes cached)
        eval_tta="flip",  # [P&K]: averaging the flipped view at test time
    ),
    source=(
        "The strongest recipe measured here: 44.33% PublicTest against the seed's 41.24% on equal CPU time "
        'from random weights (README "Results", python benchmarks/compare.py): the seed recipe plus '
        "PreciseBN (Wu & Johnson 2021), label smoothing 0.1, horizontal flips and flip TTA "
        "(Pramerdorfer & Kampel 2016)."
    ),
    command="python jobs/train.py --data data/fer2013.csv --preset best",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SEED, SMOKE, DEMO, QUICK, FINETUNE, BEST)}
DEFAULT_PRESET = "demo"

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET"]
