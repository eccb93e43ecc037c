"""python benchmarks/malloc_pad.py [--model seed|dense] [--steps 15] [--strategies mwms,none] [--output benchmarks/malloc_pad.json]

What glibc malloc's heap pad (`fer_dist._pad_the_heap`: M_TOP_PAD 64 MB, set when fer_dist is
imported; FER_DIST_HEAP_PAD=0 leaves glibc's default) does to a training step, on one thread (one Ray worker's share of a 2-core machine):
the step under MultiWorkerMirroredStrategy (one worker, no collective) and without a strategy,
each with the pad and without (glibc's default), in a fresh process each. Per case: ms per
step (the mean of `--steps` after 3 warm-up steps) and page faults per step (the process's
minor faults over those steps).

Under MWMS, once the distributed input iterator exists, glibc maps and unmaps each step's
multi-MB tensors afresh (strace: 9.4 MB munmaps per step), and each 4 KB of them is a page fault.
`--model seed` is the seed recipe's cached remainder (conv5 + head, 23.9M trainable, batch 32);
`--model dense` a stack of 9.4 MB dense layers, seconds to build (it shows the faults, 688 against
178 a step under MWMS, but not the time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CASES = [("mwms", True), ("mwms", False), ("none", True), ("none", False)]  # (strategy, the pad)


def child(strategy: str, pad: bool, model_name: str, steps: int) -> dict:
    """One case, in this (fresh) process: fer_dist padded the heap unless FER_DIST_HEAP_PAD=0."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from fer_dist import config as C
    from fer_dist.steps import Distributed

    s = tf.distribute.MultiWorkerMirroredStrategy() if strategy == "mwms" else tf.distribute.get_strategy()
    dist = Distributed(s, 0, 1, 1)
    cfg = C.resolve("seed", {"weights": "none", "global_batch_size": "32"})
    times, faults = timed_steps(dist, cfg, model_name, 32, steps)
    return {
        "strategy": strategy,
        "heap_pad": pad,
        "ms_per_step": round(sum(times) / steps * 1e3, 1),
        "page_faults_per_step": round(faults / steps),
    }


def timed_steps(dist, cfg, model_name: str, batch: int, steps: int, warmup: int = 3) -> tuple[list[float], int]:
    """`model_name` built in `dist`'s scope, its compiled train step (`Distributed.build_steps`)
    run on random inputs: `warmup` steps, then `steps` timed one by one (each ends in a host
    sync). (seconds of each timed step, the process's minor page faults over them)."""
    import resource

    import numpy as np
    import tensorflow as tf

    with dist.scope():
        net, trainable, shape, opt = build(model_name, cfg)
    rng = np.random.default_rng(dist.rank)
    x = rng.random((batch * 8, *shape), dtype=np.float32)
    y = rng.integers(0, 7, batch * 8).astype(np.int32)
    batches = iter(dist.dataset(lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()))
    train = dist.build_steps(net, trainable, opt, cfg, class_weights=None, in_graph=False).train
    for _ in range(warmup):
        float(train(batches)[0])
    faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(steps):
        start = time.perf_counter()
        float(train(batches)[0])
        times.append(time.perf_counter() - start)
    return times, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def build(model_name: str, cfg):
    """(net, trainable variables, input shape, optimizer), made in the current scope: `seed` the
    seed recipe's cached remainder (what its step trains on cached features), `finetune` the
    whole model in its second phase (every layer trainable), `dense` a quick stand-in."""
    import keras

    from fer_dist import features as F
    from fer_dist import model as M
    from fer_dist import optim

    if model_name == "seed":
        split, _ = F.split_model(M.build(cfg), cfg)
        net, shape = split.remainder, tuple(split.feature_shape)
    elif model_name == "finetune":
        net, shape = M.build(cfg), (cfg.image_size, cfg.image_size, 3)
        M.set_phase(net, cfg, 2)
    else:
        inputs = keras.Input((2048,))
        h = inputs
        for _ in range(3):
            h = keras.layers.Dense(1152, activation="relu")(h)
            h = keras.layers.Dense(2048, activation="relu")(h)
        net = keras.Model(inputs, keras.layers.Dense(7)(h))
        shape = (2048,)
    opt = optim.make_optimizer(cfg)
    opt.build(net.trainable_variables)
    return net, net.trainable_variables, shape, opt


def report_header(script: str, argv, model_name: str) -> dict:
    """What a benchmark JSON of this folder starts with: its command line, model and machine."""
    args = argv if argv is not None else sys.argv[1:]
    return {
        "command": f"python benchmarks/{script}" + "".join(f" {a}" for a in args),
        "model": model_name,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["seed", "dense"], default="seed")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--strategies", default="mwms,none", help="mwms, none or both")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "malloc_pad.json"))
    parser.add_argument("--child", nargs=2, metavar=("STRATEGY", "PAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1", args.model, args.steps)))
        return 0
    rows = []
    for strategy, pad in [c for c in CASES if c[0] in args.strategies.split(",")]:
        cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps)]
        env = dict(os.environ, FER_DIST_HEAP_PAD="1" if pad else "0")
        proc = subprocess.run(
            [*cmd, "--child", strategy, str(int(pad))], capture_output=True, text=True, cwd=REPO, env=env
        )
        if proc.returncode:
            raise SystemExit(f"error: the case {strategy} pad {pad} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    report = dict(report_header("malloc_pad.py", argv, args.model), rows=rows)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
