"""tf.data input pipelines over uint8 face arrays, sharded for any number of workers.

    python jobs/train.py --workers 2      # each worker reads its own shard of every batch

Images stay uint8 [N, 48, 48] (or RGB [N, 48, 48, 3]) where they are, in memory or
memory-mapped from the decoded-data cache (`fer_dist/decoded.py`); each batch is gathered from
them (`gather_fn`), converted to float, repeated to 3 channels, resized and ImageNet-preprocessed
on the fly (`model.preprocess`), so no copy of the data set, float or not, ever exists, and the
order of an epoch is computed when the epoch is reached.

Training order is decided in NumPy: epoch e shuffles with the seed (seed, e), keeps
`steps * global_batch_size` examples, and cuts every global batch into one slice per
input pipeline (worker): equal slices when the worker count divides the global batch, else the
first `global_batch_size % workers` workers take one example more (`pipeline_slice`; the loss is
averaged over the global batch, so every size of an elastic run trains the same objective). Every example is seen at most once per epoch across workers,
every worker runs the same number of steps (collectives never hang), and a run resumed
at epoch e sees exactly the batches an uninterrupted run would.
Evaluation pads the split to whole global batches with zero-weight examples.

With the feature cache (`fer_dist/features.py`) the same functions take `features`: rows
aligned with `split.images` (float16 or float32, e.g. [N, 3, 3, 1024]); batches are then
gathered from them and cast to float32 instead of preprocessed, in exactly the same order.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fer_dist.config import TrainConfig
from fer_dist.data import Split
from fer_dist.model import preprocess

AUTOTUNE = tf.data.AUTOTUNE


def steps_per_epoch(num_examples: int, config: TrainConfig) -> int:
    steps = num_examples // config.global_batch_size
    if steps == 0:
        from fer_dist.errors import UserError

        raise UserError(
            f"global_batch_size={config.global_batch_size} is larger than the {num_examples} training examples"
        )
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def epoch_order(num_examples: int, epoch: int, steps: int, config: TrainConfig) -> np.ndarray:
    """Example indices of one epoch as [steps, global_batch_size]."""
    rng = np.random.default_rng([config.seed, epoch])
    return rng.permutation(num_examples)[: steps * config.global_batch_size].reshape(steps, -1).astype(np.int32)


def flip_coins(num_examples: int, epoch: int, steps: int, config: TrainConfig) -> np.ndarray:
    """1 where an example of `epoch_order` is read from the flipped-image features, as [steps, global_batch_size]."""
    rng = np.random.default_rng([config.seed, epoch, 1])
    return rng.integers(0, 2, size=(steps, config.global_batch_size), dtype=np.int32)


def pipeline_slice(global_batch: int, pipelines: int, pipeline_id: int) -> slice:
    """The columns of a global batch that input pipeline `pipeline_id` of `pipelines` reads."""
    base, extra = divmod(global_batch, pipelines)
    start = pipeline_id * base + min(pipeline_id, extra)
    return slice(start, start + base + (pipeline_id < extra))


def _my_batches(a: np.ndarray, ctx: tf.distribute.InputContext) -> np.ndarray:
    """[steps, global batch] -> this pipeline's slice of every global batch, as per-replica batches
    (a pipeline with several replicas splits its slice evenly)."""
    mine = a[:, pipeline_slice(a.shape[1], ctx.num_input_pipelines, ctx.input_pipeline_id)]
    local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    if mine.shape[1] % local:
        from fer_dist.errors import UserError

        raise UserError(
            f"global_batch_size={a.shape[1]}: a worker's {mine.shape[1]} examples do not split over its {local} replicas"
        )
    return mine.reshape(-1, mine.shape[1] // local)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Sharding is done by hand (see module docstring); tf.data must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


def _inputs_fn(split: Split, config: TrainConfig, features: np.ndarray | None):
    """(source array, batch transform): uint8 images -> preprocess, or cached features -> float32."""
    if features is None:
        return split.images, lambda x: preprocess(x, config)
    if len(features) != len(split):
        raise ValueError(f"{len(features)} feature rows for {len(split)} examples")
    return features, lambda x: tf.cast(x, tf.float32)


def gather_fn(source: np.ndarray):
    """idx int32 [B] -> source[idx] as a tensor, read from `source` (a NumPy array, possibly
    memory-mapped) batch by batch: the pipeline never holds a copy of the whole array."""
    dtype = tf.as_dtype(source.dtype)
    shape = source.shape[1:]

    def gather(idx):
        rows = tf.numpy_function(lambda i: np.asarray(source[np.asarray(i)]), [idx], dtype, stateful=False)
        rows.set_shape([None, *shape])
        return rows

    return gather


def _epoch_rows(n: int, epochs: range, steps: int, config: TrainConfig, skip_steps: int, ctx, coins: bool, width: int):
    """This pipeline's per-replica index rows [width] (with `coins`: and flip-coin rows) of
    `epochs`, less the first `skip_steps` global batches, as a dataset. Each epoch's order is
    computed in NumPy when the pipeline reaches it (no index array of every epoch is held), once
    per epoch: a Python generator per step (`from_generator`) made the seed recipe's steps 27%
    slower on 2 cores."""
    _my_batches(np.zeros((1, config.global_batch_size), np.int32), ctx)  # an uneven split: its error now

    def rows_of(epoch):
        e = int(epoch)
        cut = min(max(skip_steps - (e - epochs.start) * steps, 0), steps)
        arrays = [epoch_order(n, e, steps, config)] + ([flip_coins(n, e, steps, config)] if coins else [])
        return [_my_batches(a[cut:], ctx) for a in arrays]

    def epoch_dataset(epoch):
        out = tf.numpy_function(rows_of, [epoch], [tf.int32] * (2 if coins else 1), stateful=False)
        for rows in out:
            rows.set_shape([None, width])
        return tf.data.Dataset.from_tensor_slices(tuple(out))  # elements (idx,) or (idx, coin)

    return tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_dataset)


def train_dataset_fn(
    split: Split,
    config: TrainConfig,
    first_epoch: int,
    last_epoch: int,
    steps: int,
    features: np.ndarray | None = None,
    flipped_features: np.ndarray | None = None,
    skip_steps: int = 0,
):
    """A `distribute_datasets_from_function` callable yielding per-replica batches for epochs
    [first_epoch, last_epoch), less the first `skip_steps` global batches (a run resumed from a
    step checkpoint); of cached `features` rows instead of images when given, and with
    `flipped_features` (the flipped images' rows) each example comes from one of the two by
    `flip_coins`. Images and features are gathered batch by batch (`gather_fn`)."""
    images, transform = _inputs_fn(split, config, features)
    labels = split.targets.astype(np.float32) if split.targets is not None else split.labels.astype(np.int32)
    if flipped_features is not None and (features is None or flipped_features.shape != features.shape):
        raise ValueError("flipped_features needs features of the same shape")
    gather = gather_fn(images)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        epochs = range(first_epoch, last_epoch)
        width = pipeline_slice(config.global_batch_size, ctx.num_input_pipelines, ctx.input_pipeline_id)
        per_replica = (width.stop - width.start) // (ctx.num_replicas_in_sync // ctx.num_input_pipelines)
        labels_t = tf.constant(labels)
        coins = flipped_features is not None
        ds = _epoch_rows(len(images), epochs, steps, config, skip_steps, ctx, coins, per_replica)
        if not coins:
            ds = ds.map(lambda idx: (transform(gather(idx)), tf.gather(labels_t, idx)), num_parallel_calls=AUTOTUNE)
        else:
            gather_flipped = gather_fn(flipped_features)

            def pick(idx, coin):
                flip = tf.reshape(coin > 0, [-1] + [1] * (len(images.shape) - 1))
                return tf.where(flip, transform(gather_flipped(idx)), transform(gather(idx)))

            ds = ds.map(lambda idx, coin: (pick(idx, coin), tf.gather(labels_t, idx)), num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE).with_options(_options())

    return dataset_fn


def eval_dataset_fn(split: Split, config: TrainConfig, features: np.ndarray | None = None):
    """(dataset_fn, steps): per-replica batches of (images, labels, weights); padding has weight 0.
    Cached `features` rows replace the images when given."""
    n = len(split)
    steps = max(1, math.ceil(n / config.global_batch_size))
    padded = steps * config.global_batch_size
    index = np.concatenate([np.arange(n), np.zeros(padded - n, dtype=np.int64)]).astype(np.int32)
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(padded - n, np.float32)])
    images, transform = _inputs_fn(split, config, features)
    labels = split.labels.astype(np.int32)

    gather = gather_fn(images)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        mine_idx = _my_batches(index.reshape(steps, -1), ctx)
        mine_w = _my_batches(weights.reshape(steps, -1), ctx)
        labels_t = tf.constant(labels)
        ds = tf.data.Dataset.from_tensor_slices((mine_idx, mine_w))
        ds = ds.map(
            lambda idx, w: (transform(gather(idx)), tf.gather(labels_t, idx), w),
            num_parallel_calls=AUTOTUNE,
        )
        return ds.prefetch(AUTOTUNE).with_options(_options())

    return dataset_fn, steps


def predict_dataset(images: np.ndarray, config: TrainConfig, batch_size: int = 256) -> tf.data.Dataset:
    """Plain (undistributed) batches of preprocessed images, in order, read batch by batch."""
    n = len(images)
    starts = np.arange(0, n, batch_size, dtype=np.int64)
    gather = gather_fn(images)

    def batch(start):
        return gather(tf.range(tf.cast(start, tf.int32), tf.minimum(tf.cast(start, tf.int32) + batch_size, n)))

    ds = tf.data.Dataset.from_tensor_slices(starts).map(batch, num_parallel_calls=AUTOTUNE)
    return ds.map(lambda x: preprocess(x, config), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
