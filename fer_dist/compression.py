"""PowerSGD gradient compression with error feedback (Vogels et al., NeurIPS 2019), as the
PyTorch DDP hook has it, for the step that all-reduces its own gradients (fer_dist/steps.py).

Every gradient with a matrix shape (a Dense kernel [in, out]; a convolution kernel
[kh, kw, in, out] read as [kh*kw*in, out]) whose rank-R factors are smaller than it is sent as
two thin matrices instead of itself. On each replica, per matrix M (this replica's gradient plus
its error buffer E):

    P = M Q                  (Q [m, R] from the last step: a warm start)
    P = all-reduce-sum(P)    (every matrix's P in one collective)
    P = orthonormal(P)       (QR)
    Q = M^T P
    Q = all-reduce-sum(Q)    (every matrix's Q in one collective)
    G = P Q^T                (the summed gradient, projected on P's span)
    E = M - G / replicas     (error feedback: what this replica's share missed)

Sums, not means: the step's gradients are already divided by the global batch
(`tf.nn.compute_average_loss`), so the summed gradient is the global one, as without
compression. At full rank (R >= min(n, m)) P spans M's columns and G equals the uncompressed
sum (tests/test_steps.py). Other tensors (biases, BatchNorm) are all-reduced as they are.

State: Q is the same on every replica after its all-reduce; E is each replica's own. Both are
`ON_READ` variables made in the strategy's scope (one copy per replica, also when one process
holds several). They change only after a step whose summed gradients are all finite (`commit`;
a float16 overflow skipped by the loss scaler leaves them as they were), and they hold gradients
without the loss scale. Neither is checkpointed (a checkpoint read of an `ON_READ` variable would start
a collective on the chief alone): a resumed or resized run starts from Q's seeded
initialisation and empty error buffers (measured: 0.4 points of val accuracy per resume at 300
steps, docs/scaling.md). `powersgd_start_step` steps run uncompressed first.

The pure parts (shapes, the plan, the maths) are here; the collectives come in as a function
from `steps.py`, the one place that touches the strategy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

COMPRESSIONS = ("none", "powersgd")


@dataclass(frozen=True)
class Factor:
    """One compressed gradient: its index among the trainable variables, matrix shape and rank."""

    index: int
    n: int
    m: int
    rank: int


def matrix_shape(shape) -> tuple[int, int] | None:
    """(n, m) of a gradient read as a matrix (all dimensions but the last, the last), None below 2-D."""
    dims = [int(d) for d in shape]
    if len(dims) < 2:
        return None
    return math.prod(dims[:-1]), dims[-1]


def plan(shapes: list, rank: int) -> list[Factor]:
    """The gradients worth compressing at `rank`: a matrix whose factors (n + m) * r hold fewer
    values than it does (n * m)."""
    factors = []
    for index, shape in enumerate(shapes):
        nm = matrix_shape(shape)
        if nm is None:
            continue
        n, m = nm
        r = min(rank, n, m)
        if (n + m) * r < n * m:
            factors.append(Factor(index, n, m, r))
    return factors


def full_rank_plan(shapes: list) -> list[Factor]:
    """Every matrix at full rank (min(n, m)), whether or not it saves bytes: for tests."""
    return [Factor(i, *nm, min(nm)) for i, s in enumerate(shapes) if (nm := matrix_shape(s))]


def initial_q(factor: Factor, seed: int) -> tf.Tensor:
    """A seeded random Q [m, r]: the same on every worker."""
    return tf.random.stateless_normal([factor.m, factor.rank], seed=[seed, factor.index], dtype=tf.float32)


@dataclass
class State:
    """Per compressed gradient: Q (warm start) and E (error feedback); variables made by steps.py."""

    factors: list[Factor]
    q: list  # tf.Variable [m, r] each
    error: list  # tf.Variable [n, m] each


def _concat(tensors: list[tf.Tensor]) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _split(flat: tf.Tensor, shapes: list[tuple[int, int]]) -> list[tf.Tensor]:
    sizes = [a * b for a, b in shapes]
    return [tf.reshape(part, shape) for part, shape in zip(tf.split(flat, sizes), shapes)]


def reduce(
    grads: list, state: State, all_reduce: Callable[[tf.Tensor], tf.Tensor], replicas: int, scale=None
) -> tuple[dict, list, tf.Tensor]:
    """({index: the summed gradient} of the compressed gradients, the new (variable, value) of Q
    and E, whether the summed P's and Q's are all finite), in replica context; `commit` assigns
    the new values. `all_reduce` sums one float32 vector over every replica (one collective).
    `scale`: the loss scale the gradients carry (mixed precision): E and Q are kept without it,
    so that a change of scale leaves them valid, and the summed gradients carry it again, as the
    optimizer expects. A value that is not finite in any replica's matrix reaches its summed P
    (P = M Q, Q random), so the small summed vectors stand for the matrices in the finite check
    (the same on every replica)."""
    factors = state.factors
    unscale = None if scale is None else 1.0 / tf.cast(scale, tf.float32)
    mats = [tf.reshape(tf.cast(grads[f.index], tf.float32), [f.n, f.m]) for f in factors]
    if unscale is not None:  # no pass over the matrices without a loss scale (float32 runs)
        mats = [mat * unscale for mat in mats]
    mats = [mat + e.read_value() for mat, e in zip(mats, state.error)]
    ps = [tf.matmul(mat, q.read_value()) for mat, q in zip(mats, state.q)]
    p_sum = all_reduce(_concat(ps))
    ps = [tf.linalg.qr(p).q for p in _split(p_sum, [(f.n, f.rank) for f in factors])]
    qs = [tf.matmul(mat, p, transpose_a=True) for mat, p in zip(mats, ps)]
    q_sum = all_reduce(_concat(qs))
    qs = _split(q_sum, [(f.m, f.rank) for f in factors])
    out, updates = {}, []
    for f, mat, p, q, q_var, e_var in zip(factors, mats, ps, qs, state.q, state.error):
        summed = tf.matmul(p, q, transpose_b=True)
        updates += [(e_var, mat - summed / float(replicas)), (q_var, q)]
        carried = summed if scale is None else summed * tf.cast(scale, tf.float32)
        out[f.index] = tf.cast(tf.reshape(carried, grads[f.index].shape), grads[f.index].dtype)
    return out, updates, all_finite([p_sum, q_sum])


def all_finite(tensors) -> tf.Tensor:
    """True when every value of every tensor is finite (a boolean scalar; True for none)."""
    return tf.reduce_all(tf.stack([tf.constant(True)] + [tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def commit(updates: list, keep) -> None:
    """Assigns `reduce`'s new Q and E when `keep` (a boolean scalar: the step's summed gradients
    are all finite), else leaves them as they were: a step the loss scaler skips (or a NaN) must
    not poison the error buffers, which would carry it into every later step. A `tf.cond`, not a
    `tf.where`: no pass over the buffers beyond the assignment itself (the variables are each
    replica's own, so no collective runs inside it)."""

    def assign():
        for variable, value in updates:
            variable.assign(value)
        return tf.constant(True)

    tf.cond(keep, assign, lambda: tf.constant(False))


__all__ = [
    "COMPRESSIONS",
    "Factor",
    "State",
    "all_finite",
    "commit",
    "full_rank_plan",
    "initial_q",
    "matrix_shape",
    "plan",
    "reduce",
]
