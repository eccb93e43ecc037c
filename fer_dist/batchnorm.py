"""BatchNorm statistics that the loop sets itself: calibration before training, PreciseBN
before each validation.

    python jobs/train.py ... --set calibrate_batchnorm=2048   # data-dependent init / AdaBN
    python jobs/train.py ... --set precise_bn=2048            # PreciseBN (the `best` preset)
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

from fer_dist import data, pipeline
from fer_dist import model as model_lib
from fer_dist.config import TrainConfig
from fer_dist.steps import Distributed

log = logging.getLogger(__name__)


def calibrate(model, images: np.ndarray, config: TrainConfig) -> tuple[int, int]:
    """`model.calibrate_batchnorm` on `config.calibrate_batchnorm` training images drawn with the
    seed (the same on every worker), run on a strategy-free copy whose variables are then assigned
    back, as a checkpoint restore does. Returns (BatchNorm layers, images)."""
    count = min(config.calibrate_batchnorm, len(images))
    chosen = np.sort(np.random.default_rng([config.seed, 2]).choice(len(images), count, replace=False))
    plain = model_lib.build(config)
    for target, source in zip(plain.variables, model.variables):
        target.assign(np.asarray(source.numpy()))
    layers = model_lib.calibrate_batchnorm(plain, images[chosen], config)
    for target, source in zip(model.variables, plain.variables):
        target.assign(np.asarray(source.numpy()))
    return layers, count


@dataclasses.dataclass
class PreciseBN:
    """PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): the moving statistics
    of the BatchNorm layers that train are replaced by those of `precise_bn` training examples
    (drawn with (seed, epoch)) under the current weights, in one training-mode forward pass with
    momentum 0. The moving averages otherwise lag the weights by ~100 steps, which made the
    validation accuracy of short runs swing by 10-20 points from one epoch to the next.
    Every replica runs its share; the statistics are averaged across replicas."""

    config: TrainConfig
    train: data.Split
    dist: Distributed
    _forward: dict = dataclasses.field(default_factory=dict)  # one traced forward pass per net

    def __call__(self, net, train_features: np.ndarray | None, epoch: int) -> None:
        """Progress (the chief): a line before and after the first pass, which traces the
        forward pass; later passes log their seconds at DEBUG (the epoch line follows)."""
        first = id(net) not in self._forward
        count = min(self.config.precise_bn, len(self.train))
        count -= count % self.dist.replicas
        level = logging.INFO if first and self.dist.chief else logging.DEBUG
        log.log(level, "epoch %d: PreciseBN: BatchNorm statistics of %d training images ...", epoch, count)
        start = time.perf_counter()
        self._pass(net, train_features, epoch, count)
        log.log(level, "epoch %d: PreciseBN: done in %.1f s", epoch, time.perf_counter() - start)

    def _pass(self, net, train_features: np.ndarray | None, epoch: int, count: int) -> None:
        rng = np.random.default_rng([self.config.seed, 3, epoch])
        chosen = np.sort(rng.choice(len(self.train), count, replace=False))
        subset = data.Split(self.train.images[chosen], self.train.labels[chosen])
        fn, _ = pipeline.eval_dataset_fn(
            subset,
            dataclasses.replace(self.config, global_batch_size=count),
            None if train_features is None else train_features[chosen],
        )
        batch = next(iter(self.dist.dataset(fn)))
        with model_lib.batchnorm_statistics_pass(model_lib.batchnorm_layers(net, trainable_only=True)):
            if id(net) not in self._forward:  # traced on this first call, with momentum 0
                self._forward[id(net)] = tf.function(lambda images: net(images, training=True))
            self.dist.forward(self._forward[id(net)], batch[0])
