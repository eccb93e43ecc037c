"""Models: the ResNet50 transfer-learning trunk (or a compact CNN) behind one head.

    python jobs/train.py --preset seed --set weights=/path/to/resnet50_notop.weights.h5

`build(config)` returns a Keras 3 model that takes preprocessed float images
[B, image_size, image_size, 3] (see `preprocess`) and returns float32 logits [B, 7].

- backbone `resnet50`: `keras.applications.ResNet50(include_top=False)` with weights
  `imagenet` (Keras downloads them), `none`, or a path to a weights file. The first
  `freeze_layers` layers are frozen; a frozen BatchNormalization layer runs in inference
  mode in Keras 3 (it uses its moving statistics whenever `trainable` is False). BatchNorm
  layers past the frozen block train as in the seed recipe, unless `train_batchnorm=false`
  keeps every BatchNorm frozen (the usual rule when unfreezing a pretrained trunk).
- backbone `compact`: a ~100k-parameter CNN for CPU demos and fast tests.
- head: pooling (flatten or global average), then per `head_units` entry
  Dense(he_uniform) -> BatchNorm -> ReLU -> Dropout, then Dense(7) logits in float32.
"""

from __future__ import annotations

import contextlib
import logging
import os

import keras
import tensorflow as tf

from fer_dist.config import TrainConfig
from fer_dist.errors import UserError
from fer_dist.weights import NO_IMAGENET_HINT

log = logging.getLogger(__name__)

TRUNK_NAME = "trunk"
HEAD_NAME = "head"
# The compact CNN trains for few steps on CPU: faster-moving BatchNorm statistics.
BN_MOMENTUM = 0.9


def preprocess(images: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """uint8 faces, gray [B, H, W] (or [B, H, W, 1]) or RGB [B, H, W, 3] -> float32 model
    input [B, S, S, 3].

    Gray is repeated to 3 channels; the faces are resized to `image_size` and put through the
    ResNet50 ImageNet preprocessing (`caffe` mode: RGB -> BGR, mean subtraction on 0-255
    values). The compact backbone uses the same input so that both share one pipeline.
    """
    x = tf.cast(images, tf.float32)
    if x.shape.rank == 3:
        x = x[..., tf.newaxis]
    if x.shape[1] != config.image_size or x.shape[2] != config.image_size:
        x = tf.image.resize(x, (config.image_size, config.image_size), method="bilinear")
    if x.shape[-1] == 1:
        x = tf.repeat(x, 3, axis=-1)
    return keras.applications.resnet50.preprocess_input(x)


def _resnet50_trunk(config: TrainConfig) -> keras.Model:
    weights = config.weights
    if weights.lower() == "none":
        weights = None
    elif weights.lower() != "imagenet" and not os.path.exists(weights):
        raise UserError(f"weights={config.weights!r}: no such weights file (use imagenet, none or a path)")
    try:
        trunk = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(config.image_size, config.image_size, 3)
        )
    except Exception as e:  # Keras raises a bare Exception when the ImageNet download fails
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights == "imagenet" and "fetch failure" in first:
            raise UserError(
                f"weights=imagenet: the ImageNet weights cannot be downloaded ({first}); {NO_IMAGENET_HINT}"
            ) from None
        if weights not in (None, "imagenet") and isinstance(e, (ValueError, OSError)):
            raise UserError(f"weights={config.weights!r}: cannot load into ResNet50 ({first})") from None
        raise
    trunk.name = TRUNK_NAME
    return trunk


def _compact_trunk(config: TrainConfig) -> keras.Model:
    """A ~100k-parameter CNN for CPU demos and fast tests.

    A stride-2 stem, then conv-BN-ReLU + max-pool stages of 32/64/128 filters. Measured on
    the 2-core CPU (batch 128, training step): 730 img/s, against 196 img/s for a
    mini-Xception (Arriaga et al. 2017) of half the parameters, whose full-resolution
    BatchNorm and depthwise-convolution gradients are slow on TensorFlow's CPU kernels.
    """
    if config.weights.lower() not in ("none", "imagenet") and not os.path.exists(config.weights):
        raise UserError(f"weights={config.weights!r}: no such weights file")
    inputs = keras.Input((config.image_size, config.image_size, 3), name="trunk_input")
    # Inputs are ResNet-preprocessed (roughly centred 0-255 values): bring them to ~unit scale.
    x = keras.layers.Rescaling(1.0 / 64.0, name="rescale")(inputs)
    x = _conv_bn_relu(x, 32, strides=2, name="stem")
    for filters in (32, 64, 128):
        x = _conv_bn_relu(x, filters, strides=1, name=f"stage{filters}")
        x = keras.layers.MaxPooling2D(2, name=f"stage{filters}_pool")(x)
    trunk = keras.Model(inputs, x, name=TRUNK_NAME)
    if config.weights.lower() not in ("none", "imagenet"):
        trunk.load_weights(config.weights)
    return trunk


def _conv_bn_relu(x, filters: int, strides: int, name: str):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _freeze(trunk: keras.Model, config: TrainConfig) -> int:
    """Freezes the first `freeze_layers` layers (and BatchNorm unless train_batchnorm); returns the count."""
    n = min(config.freeze_layers, len(trunk.layers))
    if config.freeze_layers > len(trunk.layers):
        log.warning(
            "freeze_layers=%d but the %s trunk has %d layers: freezing all", config.freeze_layers, config.backbone, n
        )
    for i, layer in enumerate(trunk.layers):
        frozen = i < n
        if isinstance(layer, keras.layers.BatchNormalization) and not config.train_batchnorm:
            frozen = True  # pretrained statistics stay in inference mode in unfrozen blocks too
        layer.trainable = not frozen
    return n


def set_phase(model: keras.Model, config: TrainConfig, phase: int) -> int:
    """Trainable flags of the trunk for training phase 1 or 2 (`unfreeze_epoch`); returns the
    number of trunk layers frozen. Phase 1 is `build`'s state. Phase 2 unfreezes layers
    `unfreeze_to`..`freeze_layers` except BatchNorm, whose statistics stay frozen (inference mode)."""
    trunk = trunk_of(model)
    frozen = _freeze(trunk, config)
    if phase == 2:
        for layer in trunk.layers[config.unfreeze_to : frozen]:
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
        frozen = min(config.unfreeze_to, len(trunk.layers))
    return frozen


def build_head(features: keras.KerasTensor, config: TrainConfig) -> keras.KerasTensor:
    if config.head_pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    else:
        x = keras.layers.Flatten(name="head_flatten")(features)
    for i, units in enumerate(config.head_units, start=1):
        x = keras.layers.Dense(units, kernel_initializer="he_uniform", name=f"head_dense{i}")(x)
        x = keras.layers.BatchNormalization(name=f"head_bn{i}")(x)
        x = keras.layers.ReLU(name=f"head_relu{i}")(x)
        x = keras.layers.Dropout(config.dropout, seed=config.seed + i, name=f"head_dropout{i}")(x)
    return keras.layers.Dense(len(config.classes), dtype="float32", name="logits")(x)


def build(config: TrainConfig) -> keras.Model:
    """The full model: trunk (partly frozen) + head. Logs layer and parameter counts."""
    trunk = _resnet50_trunk(config) if config.backbone == "resnet50" else _compact_trunk(config)
    frozen = _freeze(trunk, config)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    logits = build_head(trunk(inputs), config)
    model = keras.Model(inputs, logits, name=f"fer_{config.backbone}")
    trainable, total = count_params(model)
    log.info(
        "model %s: %d of %d trunk layers frozen; %s trainable of %s parameters",
        model.name,
        frozen,
        len(trunk.layers),
        f"{trainable:,}",
        f"{total:,}",
    )
    return model


@contextlib.contextmanager
def batchnorm_statistics_pass(batchnorms: list):
    """Within it, a training-mode forward pass sets the moving mean and variance of `batchnorms`
    to its batch's statistics (momentum 0). Keras reads `momentum` when a call is traced, so a
    tf.function must be traced inside. Momenta are restored on exit."""
    momenta = [bn.momentum for bn in batchnorms]
    try:
        for bn in batchnorms:
            bn.momentum = 0.0
        yield
    finally:
        for bn, momentum in zip(batchnorms, momenta):
            bn.momentum = momentum


def batchnorm_layers(model: keras.Model, trainable_only: bool = False) -> list:
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and (layer.trainable or not trainable_only)
    ]


def calibrate_batchnorm(model: keras.Model, images, config: TrainConfig) -> int:
    """Sets every BatchNorm layer's moving mean and variance to the statistics of its input over
    `images` (uint8 faces), computed in one training-mode forward pass with momentum 0, frozen
    layers included; returns how many layers were set. Trainable flags and momenta are restored.

    For `weights=none` this is a data-dependent initialisation (Kraehenbuehl et al. 2016,
    "Data-dependent initializations of convolutional neural networks"; Mishkin & Matas 2016,
    LSUV): a random trunk whose BatchNorm layers hold their initial statistics (mean 0,
    variance 1) passes activations through unnormalised, so its frozen features are badly
    scaled; calibrated, each layer's outputs are standardised as in a trained network. With
    pretrained weights it re-estimates the statistics on the target data (AdaBN, Li et al. 2016).
    """
    layers = list(model._flatten_layers(include_self=False))
    batchnorms = batchnorm_layers(model)
    flags = [layer.trainable for layer in layers]
    try:
        for layer in layers:  # a frozen Keras 3 BatchNorm runs in inference mode and would not update
            layer.trainable = True
        with batchnorm_statistics_pass(batchnorms):
            model(preprocess(tf.constant(images), config), training=True)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag
    return len(batchnorms)


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, total) parameter counts (seed-generator state excluded)."""
    trainable = sum(int(tf.size(v)) for v in model.trainable_weights)
    total = sum(int(tf.size(v)) for v in model.weights)
    return trainable, total


def trunk_of(model: keras.Model) -> keras.Model:
    return model.get_layer(TRUNK_NAME)
