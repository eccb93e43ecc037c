"""The compiled step's own gradient all-reduce (steps.all_reduce_gradients, optim.pre_reduced):
2 replicas equal 1 at the same global batch, in float32 and within a stated tolerance in
bfloat16/float16; without `pre_reduced` Keras would sum the gradients a second time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _helper_json(script: str) -> dict:
    """Runs tests/<script> in a process of its own (it sets logical devices and a dtype policy)
    and returns the JSON of its last line."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_equal_one_and_gradients_are_summed_once():
    diff = _helper_json("steps_replicas_main.py")
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


def test_adam_with_a_frozen_variance_holds_it_from_powersgd_start_step_on():
    """adam_variance=frozen: Adam's formula for steps 1..F, then v (and its bias correction) as
    step F left them while the first moment runs on; `running` is plain Adam throughout."""
    import numpy as np
    import tensorflow as tf

    from fer_dist import optim
    from fer_dist.config import TrainConfig, validate

    grads = [[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [0.1, 0.1, 0.1], [-5.0, 2.0, 4.0]]
    lr, b1, b2 = 0.1, 0.9, 0.999

    def expected(frozen_after):
        m, v, w, out = 0.0, 0.0, np.zeros(3), []
        for t, g in enumerate(np.array(grads), 1):
            m = b1 * m + (1 - b1) * g
            if frozen_after is None or t <= frozen_after:
                v = b2 * v + (1 - b2) * g * g
            t2 = t if frozen_after is None else min(t, frozen_after)
            w = w - lr * np.sqrt(1 - b2**t2) / (1 - b1**t) * m / (np.sqrt(v) + 1e-7)
            out.append(w.copy())
        return out

    for variance, frozen_after in (("frozen", 2), ("running", None)):
        config = validate(TrainConfig(adam_variance=variance, powersgd_start_step=2, learning_rate=lr))
        opt = optim.make_optimizer(config)
        var = tf.Variable(np.zeros(3, np.float32))
        for g, want in zip(grads, expected(frozen_after)):
            opt.apply_gradients([(tf.constant(g), var)])
            np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, err_msg=variance)
    assert np.abs(expected(2)[-1] - expected(None)[-1]).max() > 1e-2  # the two differ after step 2


@pytest.mark.slow  # about 25 s on a 2-core CPU
def test_mixed_precision_scales_the_loss_and_skips_a_step_that_overflows_on_every_replica():
    """float16 compute with Keras's dynamic loss scaler (optim.loss_scaled) in fer_dist's own step
    (tests/mixed_precision_main.py): gradients below float16's range survive, an overflowing step
    is skipped on both replicas and halves the scale, PowerSGD's state is not poisoned by it."""
    out = _helper_json("mixed_precision_main.py")
    under, over = out["underflow"], out["overflow"]
    # gradients of ~1e-8: float16 without a loss scale flushes some to 0 and is 13% off float32
    assert under["reference_moved"] > 0.9 and under["scaled_lost"] == 0 and under["scaled_error"] < 0.05, under
    assert under["unscaled_lost"] > 0.01 and under["unscaled_error"] > 0.08, under
    # at a scale of 2^100 the float16 gradients are inf: no weight moves, no step counted, scale / 2
    assert over["skipped_moved"] == 0 and over["skipped_iterations"] == 0, over
    assert over["scale_after"] == 2.0**99, over
    assert over["powersgd_variables"] == 4 and over["state_kept"] and over["state_finite"], over
    # and at 2^15 the next 3 steps train (SGD, lr 0.5: ~0.2), updating PowerSGD's state
    assert over["then_iterations"] == 3 and over["then_moved"] > 0.05 and over["then_finite"], over
    assert over["then_state_moved"], over
    # 4 SGD steps (the update is the gradient: a scale applied twice or not at all, or a double
    # sum, would be off by the move itself): 2 replicas equal 1 within float16's rounding
    # (measured 4e-4 of the move), uncompressed and with PowerSGD at full rank
    rep = out["replicas"]
    assert rep["moved"] > 0.05 and rep["two"] < 0.01 and rep["two_powersgd_full"] < 0.01, rep


def _compression_state(shapes, rank):
    import tensorflow as tf

    from fer_dist import compression

    factors = compression.plan(shapes, rank)
    q = [tf.Variable(compression.initial_q(f, 0)) for f in factors]
    error = [tf.Variable(tf.zeros([f.n, f.m])) for f in factors]
    return compression.State(factors, q, error)


def test_powersgd_units_plan_scale_and_the_finite_check():
    """compression.reduce on one replica (the all-reduce an identity): what it compresses, the
    loss scale carried through with the state kept without it, a NaN anywhere seen by the small
    summed vectors, and `commit` keeping the old state when told to."""
    import numpy as np
    import tensorflow as tf

    from fer_dist import compression

    shapes = [(3, 3, 8, 16), (16,), (4, 2)]  # a conv kernel, a bias, a matrix too small to gain
    assert [(f.index, f.n, f.m, f.rank) for f in compression.plan(shapes, 2)] == [(0, 72, 16, 2)]
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]

    def run(grads, scale=None):
        state = _compression_state(shapes, 2)
        done, updates, finite = compression.reduce(grads, state, tf.identity, 1, scale)
        compression.commit(updates, finite)
        return done, state, bool(finite)

    plain, plain_state, finite = run(grads)
    assert finite and set(plain) == {0}
    scaled, scaled_state, _ = run([g * 1024.0 for g in grads], scale=tf.constant(1024.0))
    np.testing.assert_allclose(scaled[0].numpy(), 1024.0 * plain[0].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scaled_state.error[0].numpy(), plain_state.error[0].numpy(), atol=1e-5)
    assert float(tf.norm(plain_state.error[0])) > 0.1  # rank 2 of a 72 x 16 matrix: a residual kept
    poisoned = grads[0].numpy().copy()
    poisoned[1, 2, 3, 4] = np.nan
    _, kept, finite = run([tf.constant(poisoned)] + grads[1:])
    assert not finite
    assert not np.any(kept.error[0].numpy()) and np.array_equal(
        kept.q[0].numpy(), compression.initial_q(kept.factors[0], 0)
    )
