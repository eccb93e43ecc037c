"""python benchmarks/powersgd_cost.py [--preset seed] [--ranks 1,4] [--out benchmarks/powersgd_cost.json]

What PowerSGD's own arithmetic costs a worker per step, without any communication: the
preset's trainable gradients (random values of the real shapes, weights none) go through
`compression.reduce` (error feedback, P = M Q, QR, Q = M^T P, P Q^T, the new error) with the
all-reduce replaced by the identity, in a tf.function on one thread (as each worker of
`benchmarks/scaling.py` has one). For scale it also times one pass over the gradient buffer
(`g * 0.5`, read once and written once). Median of 10 calls after a warm-up one; ~1 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def median_ms(fn, args, repeats: int = 10) -> float:
    import tensorflow as tf

    tf.nest.flatten(fn(*args))[0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.flatten(fn(*args))[0].numpy()
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 1)


def reducer(compression, state):
    """One replica's PowerSGD step of 2 replicas, the all-reduce an identity."""

    def reduce(grads):
        done, updates, finite = compression.reduce(grads, state, lambda x: x, 2)
        compression.commit(updates, finite)
        return done

    return reduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--ranks", default="1,4")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "powersgd_cost.json"))
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from benchmarks.presets import machine
    from fer_dist import compression
    from fer_dist import config as C
    from fer_dist import model as M

    net = M.build(C.resolve(args.preset, {"weights": "none"}))
    shapes = [tuple(v.shape) for v in net.trainable_variables]
    grads = [tf.random.normal(s) for s in shapes]
    values = sum(int(tf.size(g)) for g in grads)
    one_pass = median_ms(tf.function(lambda gs: [g * 0.5 for g in gs]), (grads,))
    rows = []
    for rank in [int(r) for r in args.ranks.split(",")]:
        factors = compression.plan(shapes, rank)
        q = [tf.Variable(compression.initial_q(f, 0)) for f in factors]
        error = [tf.Variable(tf.zeros([f.n, f.m])) for f in factors]
        state = compression.State(factors, q, error)
        step = tf.function(reducer(compression, state))
        ms = median_ms(step, (grads,))
        rows.append({"rank": rank, "matrices": len(factors), "ms_per_step": ms, "passes": round(ms / one_pass, 1)})
        print(f"rank {rank}: {ms} ms a step on one thread ({ms / one_pass:.1f} passes over the gradients)")
    result = {
        "command": "python benchmarks/powersgd_cost.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset,
        "trainable_values": values,
        "one_pass_ms": one_pass,
        "rows": rows,
    }
    print(f"one pass over {values / 1e6:.1f}M gradient values: {one_pass} ms")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
