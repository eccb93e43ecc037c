"""In-graph training augmentation, mixup, class weighting and test-time augmentation.

    python jobs/train.py --preset smoke --set augment_flip=true --set augment_rotation=10 --set mixup_alpha=0.2

Everything here is TensorFlow ops on a float batch of model inputs [B, S, S, 3] (already
ResNet-preprocessed by `model.preprocess`), so it runs inside the train step on whatever
device runs the step, under any strategy, and under `jit_compile=true` too (the warp is
written with gathers, which XLA compiles; `ImageProjectiveTransformV3` has no XLA kernel).

Randomness is stateless: every random draw is seeded by `step_seed(config.seed, step)`, where
`step` is the optimizer's iteration counter (restored from checkpoints) folded with the
replica's index. The same config therefore sees the same augmentation at the same step on
the same replica, after a resume too, under the default strategy and under
MultiWorkerMirroredStrategy, and different replicas draw differently. (TensorFlow's
stateless generators give other numbers under XLA than its CPU/GPU kernels, so a
`jit_compile=true` run draws other, equally reproducible, augmentations.)

- `augment_images(x, config, seed)`: random horizontal flip (`augment_flip`), one random
  affine warp per image combining translation (`augment_shift`, a fraction of the side),
  scale (`augment_zoom`) and rotation (`augment_rotation`, degrees) with bilinear sampling,
  then random erasing of one rectangle (`augment_erasing`, a probability). Points outside
  the image and erased pixels get the value 0, roughly the mean pixel after ResNet's mean
  subtraction. Output values therefore stay within [min(x, 0), max(x, 0)]. With every option
  off it returns its input unchanged (no op is added).
- `mixup(x, labels, alpha, seed)`: Zhang et al. 2018; one lam ~ Beta(alpha, alpha) per
  batch, the batch mixed with a random permutation of itself. `train_loss` then forms
  lam * CE(y_a) + (1 - lam) * CE(y_b), so sparse labels keep working.
- `class_weights(labels, mode)`: "balanced" weights w_c = N / (K * n_c) over the K classes
  present in the training labels, so that the mean weight over the training set is 1.
- `tta_views(x, tta)`: the views test-time augmentation averages over: none, flip (the image
  and its mirror) or tencrop (the image resized to ~1.1x, 4 corner crops + the centre crop,
  and their mirrors).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fer_dist import NUM_CLASSES
from fer_dist.config import TTA_MODES, TrainConfig, image_augmentations

FILL_VALUE = 0.0
# Philox explicitly: "auto_select" may pick another generator under XLA or on another device.
RNG_ALG = "philox"
# Random erasing: the rectangle's area as a fraction of the image, and its aspect ratio
# (Zhong et al. 2017 use 0.02-0.4 and 0.3-3.3; faces are small, so a smaller top area).
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 1 / 0.3)
TENCROP_SCALE = 1.1  # tencrop resizes the input to about this multiple of its side


def any_image_augmentation(config: TrainConfig) -> bool:
    return bool(image_augmentations(config))


def step_seed(config_seed: int, step) -> tf.Tensor:
    """A stateless seed [2] (int64) for one train step on this replica."""
    step = tf.cast(step, tf.int64)
    seed = tf.stack([tf.constant(config_seed, tf.int64), step])
    replica = 0
    ctx = tf.distribute.get_replica_context()
    if ctx is not None:
        replica = ctx.replica_id_in_sync_group
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64), alg=RNG_ALG)


def split_seed(seed, n: int) -> list[tf.Tensor]:
    """`n` independent stateless seeds derived from `seed`."""
    split = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n, alg=RNG_ALG)
    return [split[i] for i in range(n)]


# ---------------------------------------------------------------------------------
# Image augmentation.
# ---------------------------------------------------------------------------------
def augment_images(images: tf.Tensor, config: TrainConfig, seed) -> tf.Tensor:
    """Randomly flipped, warped and erased copies of `images` [B, H, W, C] (see the module docstring)."""
    if not any_image_augmentation(config):
        return images
    flip_seed, warp_seed, erase_seed = split_seed(seed, 3)
    x = images
    if config.augment_flip:
        x = random_flip(x, flip_seed)
    if config.augment_shift > 0 or config.augment_zoom > 0 or config.augment_rotation > 0:
        x = random_affine(x, warp_seed, config.augment_shift, config.augment_zoom, config.augment_rotation)
    if config.augment_erasing > 0:
        x = random_erasing(x, erase_seed, config.augment_erasing)
    return x


def random_flip(images: tf.Tensor, seed) -> tf.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    batch = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([batch], seed, alg=RNG_ALG) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def random_affine(images: tf.Tensor, seed, shift: float, zoom: float, rotation: float) -> tf.Tensor:
    """One random translation + scale + rotation about the centre per image, bilinear, fill 0."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    s_shift, s_zoom, s_rot = split_seed(seed, 3)
    shifts = tf.random.stateless_uniform([batch, 2], s_shift, -shift, shift, alg=RNG_ALG)
    shifts *= tf.constant([width, height], tf.float32)
    scale = tf.random.stateless_uniform([batch], s_zoom, 1.0 - zoom, 1.0 + zoom, alg=RNG_ALG)
    theta = tf.random.stateless_uniform([batch], s_rot, -rotation, rotation, alg=RNG_ALG) * (math.pi / 180.0)
    return affine_warp(images, affine_matrices(theta, scale, shifts, height, width))


def affine_matrices(theta, scale, shifts, height: int, width: int) -> tf.Tensor:
    """[B, 6] maps (a0, a1, a2, b0, b1, b2) from output pixel (x, y) to input point
    (a0 x + a1 y + a2, b0 x + b1 y + b2), for the forward map
    out = c + scale * R(theta) (in - c) + shift about the image centre c."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    # The inverse: in = c + R(-theta) / scale (out - c - shift).
    m00, m01, m10, m11 = cos, sin, -sin, cos
    ox, oy = cx + shifts[:, 0], cy + shifts[:, 1]
    return tf.stack([m00, m01, cx - m00 * ox - m01 * oy, m10, m11, cy - m10 * ox - m11 * oy], axis=1)


def affine_warp(images: tf.Tensor, matrices: tf.Tensor, fill: float = FILL_VALUE) -> tf.Tensor:
    """Bilinear sampling of `images` [B, H, W, C] at the points `matrices` [B, 6] maps each
    output pixel to; samples outside the image read `fill`. Gathers only (XLA-compatible)."""
    dtype = images.dtype
    batch = tf.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    m = tf.cast(matrices, tf.float32)[:, :, None, None]
    x_in = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # [B, H, W]
    y_in = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    x0, y0 = tf.floor(x_in), tf.floor(y_in)
    dx, dy = x_in - x0, y_in - y0
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    flat = tf.reshape(tf.cast(images, tf.float32), [batch, height * width, channels])
    fill = tf.constant(fill, tf.float32)

    def corner(yi, xi):
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        index = tf.clip_by_value(yi, 0, height - 1) * width + tf.clip_by_value(xi, 0, width - 1)
        values = tf.gather(flat, tf.reshape(index, [batch, -1]), batch_dims=1)
        values = tf.reshape(values, [batch, height, width, channels])
        return tf.where(inside[..., None], values, fill)

    dx, dy = dx[..., None], dy[..., None]
    out = (
        (1 - dx) * (1 - dy) * corner(y0, x0)
        + dx * (1 - dy) * corner(y0, x0 + 1)
        + (1 - dx) * dy * corner(y0 + 1, x0)
        + dx * dy * corner(y0 + 1, x0 + 1)
    )
    return tf.cast(out, dtype)


def random_erasing(images: tf.Tensor, seed, probability: float, fill: float = FILL_VALUE) -> tf.Tensor:
    """With `probability` per image, one random rectangle (area ERASE_AREA of the image,
    aspect ratio ERASE_ASPECT) set to `fill`."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    s_apply, s_area, s_aspect, s_y, s_x = split_seed(seed, 5)
    apply = tf.random.stateless_uniform([batch], s_apply, alg=RNG_ALG) < probability
    area = tf.random.stateless_uniform([batch], s_area, *ERASE_AREA, alg=RNG_ALG) * float(height * width)
    log_aspect = tf.random.stateless_uniform(
        [batch], s_aspect, math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), alg=RNG_ALG
    )
    aspect = tf.exp(log_aspect)
    h = tf.minimum(tf.sqrt(area * aspect), float(height))
    w = tf.minimum(tf.sqrt(area / aspect), float(width))
    top = tf.random.stateless_uniform([batch], s_y, alg=RNG_ALG) * (float(height) - h)
    left = tf.random.stateless_uniform([batch], s_x, alg=RNG_ALG) * (float(width) - w)
    rows = tf.range(height, dtype=tf.float32)[None, :, None]
    cols = tf.range(width, dtype=tf.float32)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + w)[:, None, None])
    )
    erase = inside & apply[:, None, None]
    return tf.where(erase[..., None], tf.cast(fill, images.dtype), images)


# ---------------------------------------------------------------------------------
# Mixup, class weights and the training loss.
# ---------------------------------------------------------------------------------
def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed):
    """(mixed images, labels_b, lam): lam * x + (1 - lam) * x[perm], labels_b = labels[perm],
    with lam ~ Beta(alpha, alpha) (one per batch) and perm a random permutation."""
    s_lam, s_perm = split_seed(seed, 2)
    gammas = tf.random.stateless_gamma([2], s_lam, alpha=alpha, dtype=tf.float32)
    lam = gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], s_perm, alg=RNG_ALG))
    lam_x = tf.cast(lam, images.dtype)
    mixed = lam_x * images + (1 - lam_x) * tf.gather(images, perm)
    return mixed, tf.gather(labels, perm), lam


def class_weights(labels: np.ndarray, mode: str, num_classes: int = NUM_CLASSES) -> np.ndarray | None:
    """Per-class loss weights [num_classes] (float32) for `mode` "balanced", None for "none".

    w_c = N / (K * n_c) for the K classes present in `labels` (N of them): the mean of
    w[labels] is exactly 1. Classes absent from `labels` get weight 1 (never used in training).
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weighting={mode!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def hard_labels(y: tf.Tensor) -> tf.Tensor:
    """Class indices [B] (int32) of labels [B], or of soft targets [B, K] (their argmax)."""
    if y.shape.rank == 2:
        return tf.argmax(y, -1, output_type=tf.int32)
    return tf.cast(y, tf.int32)


def train_loss(per_example_loss, labels, logits, mix=None, weights=None) -> tf.Tensor:
    """Per-example training loss [B]: per_example_loss(labels, logits), times the class weight
    of each label when `weights` [classes] is given; with `mix` = (labels_b, lam) the
    mixup loss lam * L(y_a) + (1 - lam) * L(y_b), each term with its own label's weight.
    Labels are class indices [B], or soft targets [B, K] (FER+ votes), weighted by their argmax."""

    def term(y):
        loss = per_example_loss(y, logits)
        if weights is not None:
            loss = loss * tf.gather(tf.cast(weights, loss.dtype), hard_labels(y))
        return loss

    loss_a = term(labels)
    if mix is None:
        return loss_a
    labels_b, lam = mix
    lam = tf.cast(lam, loss_a.dtype)
    return lam * loss_a + (1 - lam) * term(labels_b)


def train_hits(labels, logits, mix=None) -> tf.Tensor:
    """Correct predictions [B] (float32); under mixup lam * hit(y_a) + (1 - lam) * hit(y_b)."""
    pred = tf.argmax(logits, -1, output_type=tf.int32)
    hit_a = tf.cast(tf.equal(pred, hard_labels(labels)), tf.float32)
    if mix is None:
        return hit_a
    labels_b, lam = mix
    hit_b = tf.cast(tf.equal(pred, hard_labels(labels_b)), tf.float32)
    lam = tf.cast(lam, tf.float32)
    return lam * hit_a + (1 - lam) * hit_b


# ---------------------------------------------------------------------------------
# Test-time augmentation.
# ---------------------------------------------------------------------------------
def tencrop_size(side: int) -> int:
    """The side tencrop resizes to: about TENCROP_SCALE x `side`, with an even margin so that
    the centre crop is exactly centred."""
    return side + 2 * max(1, round((TENCROP_SCALE - 1) * side / 2))


def tta_views(images: tf.Tensor, tta: str) -> list[tf.Tensor]:
    """The batches [B, S, S, C] whose predicted probabilities TTA averages."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(TTA_MODES)}")
    if tta == "none":
        return [images]
    if tta == "flip":
        return [images, tf.reverse(images, axis=[2])]
    height, width = images.shape[1], images.shape[2]
    big_h, big_w = tencrop_size(height), tencrop_size(width)
    big = tf.cast(tf.image.resize(tf.cast(images, tf.float32), (big_h, big_w), method="bilinear"), images.dtype)
    dy, dx = big_h - height, big_w - width
    crops = [
        big[:, top : top + height, left : left + width, :]
        for top, left in ((0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2))
    ]
    return crops + [tf.reverse(c, axis=[2]) for c in crops]


__all__ = [
    "augment_images",
    "any_image_augmentation",
    "step_seed",
    "split_seed",
    "random_flip",
    "random_affine",
    "affine_matrices",
    "affine_warp",
    "random_erasing",
    "mixup",
    "class_weights",
    "train_loss",
    "train_hits",
    "tta_views",
    "tencrop_size",
]
