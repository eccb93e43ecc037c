"""The compiled step's own gradient all-reduce (steps.all_reduce_gradients, optim.pre_reduced):
2 replicas equal 1 at the same global batch, in float32 and within a stated tolerance in
bfloat16/float16; without `pre_reduced` Keras would sum the gradients a second time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_replicas_equal_one_and_gradients_are_summed_once():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "steps_replicas_main.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = json.loads(proc.stdout.strip().splitlines()[-1])
    assert diff["float32"] < 1e-6 and diff["sgd"] < 1e-6, diff  # exact up to float rounding
    # 4 Adam steps at lr 1e-3 move weights by ~4e-3; a 16-bit all-reduce stays within 1e-3 of float32.
    assert diff["bfloat16"] < 1e-3 and diff["float16"] < 1e-3, diff
    assert diff["sgd_keras_sums_again"] > 1e-2, diff  # what pre_reduced prevents: a double sum
    # PowerSGD at full rank: P spans each gradient's columns, so the compressed sum is the sum
    assert diff["powersgd_full_sgd"] < 1e-5 and diff["powersgd_full_adam"] < 1e-5, diff
    assert diff["powersgd_rank1_sgd"] > 1e-4 and diff["powersgd_rank1_finite"], diff  # rank 1 is lossy


def test_the_keras_hook_that_pre_reduced_replaces_still_exists():
    import keras

    from fer_dist import optim

    assert callable(getattr(keras.optimizers.Adam, "_all_reduce_sum_gradients", None))
    opt = optim.pre_reduced(keras.optimizers.SGD)(0.1)
    # its class and name stay Keras's (a name gets a suffix when the process made SGDs before)
    assert re.fullmatch(r"sgd(_\d+)?", opt.name) and type(opt).__name__ == "SGD", opt.name
    pairs = [(1.0, "v")]
    assert opt._all_reduce_sum_gradients(pairs) == pairs
