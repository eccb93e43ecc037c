"""python benchmarks/step_profile.py [--batch 32]

Where one training step of the seed recipe's cached remainder (conv5 + head on cached conv4
features, 23.9M trainable values, ResNet50 weights=none) spends its time on this machine: the
whole compiled step, the forward pass, forward + backward, and the optimizer update, each the mean
of 10 after 3 warm-up steps. Run it with TF_ENABLE_ONEDNN_OPTS=0 and =1 to see what oneDNN's CPU
kernels change (fer_dist turns them on by default: `fer_dist/__init__.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from fer_dist import config as C  # noqa: E402  (fer_dist first: it sets TensorFlow's environment)
from fer_dist import features as F  # noqa: E402
from fer_dist import model as M  # noqa: E402
from fer_dist import optim  # noqa: E402


def timed(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    import numpy as np
    import tensorflow as tf

    from fer_dist.steps import Distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    cfg = C.resolve("seed", {"weights": "none", "global_batch_size": str(args.batch)})
    dist = Distributed.create(cfg)
    with dist.scope():
        model = M.build(cfg)
        opt = optim.make_optimizer(cfg)
        opt.build(model.trainable_variables)
    split, _ = F.split_model(model, cfg)
    net, variables, b = split.remainder, model.trainable_variables, args.batch
    rng = np.random.default_rng(0)
    x = rng.random((b * 30, *split.feature_shape), dtype=np.float32)
    y = rng.integers(0, 7, b * 30).astype(np.int32)
    steps = dist.build_steps(net, variables, opt, cfg, class_weights=None, in_graph=False)
    batches = iter(dist.dataset(lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(b).repeat()))
    xb, yb = tf.constant(x[:b]), tf.constant(y[:b])

    @tf.function
    def forward():
        return net(xb, training=True)

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            logits = net(xb, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(yb, logits, from_logits=True))
        return tape.gradient(loss, variables)

    grads = gradients()

    @tf.function
    def update():
        opt.apply_gradients(zip(grads, variables))

    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, batch {b}, 23.9M trainable")
    print(f"train step        {timed(lambda: float(steps.train(batches)[0])) * 1e3:7.1f} ms")
    print(f"forward           {timed(lambda: forward().numpy()) * 1e3:7.1f} ms")
    print(f"forward+backward  {timed(lambda: gradients()[0].numpy()) * 1e3:7.1f} ms")
    print(f"optimizer update  {timed(lambda: (update(), variables[0].numpy())) * 1e3:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
