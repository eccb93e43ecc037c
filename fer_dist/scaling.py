"""What one more worker costs: the gradient all-reduce against the step's compute.

Under MultiWorkerMirroredStrategy every step all-reduces every trainable gradient (the seed
recipe: 23.6M values, 94 MB in float32) whatever the batch, while each worker's compute shrinks
as workers are added (the global batch is fixed). Two uses:

- every multi-worker run measures its own share (`CommunicationShare`): it times the all-reduce
  of its real gradient buffer alone at the start (`steps.Distributed.time_all_reduce`), compares
  it with its step time, logs one line at the start and one at the end, and writes the figures to
  metrics.json (`communication`);
- a model a user can act on before renting a cluster (`predicted_speedup_per_worker`, README "Scaling"):
  a ring all-reduce of B bytes between N workers sends 2 (N-1)/N B per worker, so with a
  per-step compute C (one worker, the global batch) and a bandwidth W,

      step(N) = C / N + 2 (N-1)/N * B / W          efficiency(N) = C / (N * step(N)).

"Communication dominates" when it is over half of the step: then adding workers slows the run,
and `jobs/tune.py` runs one worker per trial (its default) and packs trials across the cluster.
"""

from __future__ import annotations

import dataclasses

DOMINATES = 0.5  # communication over half of the step time


@dataclasses.dataclass
class CommunicationShare:
    workers: int
    values: int  # gradient values all-reduced per step
    wire_bytes: int  # their size on the wire (allreduce_dtype; PowerSGD's factors in float32)
    dtype: str
    allreduce_s: float  # one all-reduce of the real gradient buffer, alone (median of a few)
    vote_s: float = 0.0  # one cross-worker vote (a one-value all-reduce), alone
    step_s: float = 0.0  # the run's step time (the last epoch's), once known

    @property
    def share(self) -> float:
        return self.allreduce_s / self.step_s if self.step_s > 0 else 0.0

    @property
    def dominates(self) -> bool:
        return self.share > DOMINATES

    def start_line(self) -> str:
        return (
            f"communication: every step all-reduces {self.values / 1e6:.1f}M gradient values "
            f"({self.wire_bytes / 1e6:.0f} MB as {self.dtype}) between {self.workers} workers: "
            f"{self.allreduce_s * 1e3:.0f} ms alone"
        )

    def end_line(self) -> str:
        line = (
            f"communication: the all-reduce took {self.allreduce_s * 1e3:.0f} ms of a "
            f"{self.step_s * 1e3:.0f} ms step ({self.share:.0%}) on {self.workers} workers"
        )
        if self.dominates:
            line += (
                ": communication dominates, so fewer workers would train this recipe about as fast "
                "(or use a larger global_batch_size, gradient_compression=powersgd, allreduce_dtype=bfloat16, "
                "or one worker per Tune trial; README 'Scaling')"
            )
        return line

    @classmethod
    def from_dict(cls, fields: dict) -> CommunicationShare:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})

    def as_metrics(self) -> dict:
        return dict(dataclasses.asdict(self), share=round(self.share, 4), dominates=self.dominates)


LATENCY_S = 100e-6  # one hop of a ring all-reduce between VMs of one zone (an assumption, not a measurement)


def ring_allreduce_seconds(
    wire_bytes: float, workers: int, gbit_per_s: float, collectives: int = 1, latency_s: float = LATENCY_S
) -> float:
    """A ring all-reduce of `wire_bytes` in `collectives` calls: the bandwidth term (each worker
    sends and receives 2 (N-1)/N of the buffer) plus 2 (N-1) hops of latency per call (what makes
    PowerSGD's small all-reduces latency-bound)."""
    if workers <= 1:
        return 0.0
    bandwidth = 2 * (workers - 1) / workers * wire_bytes * 8 / (gbit_per_s * 1e9)
    return bandwidth + collectives * 2 * (workers - 1) * latency_s


def predicted_step_seconds(
    workers: int, compute_s: float, wire_bytes: float, gbit_per_s: float, collectives: int = 1
) -> float:
    """A data-parallel step at a fixed global batch: compute split N ways plus the all-reduce
    (no overlap: the step all-reduces after the backward pass)."""
    return compute_s / workers + ring_allreduce_seconds(wire_bytes, workers, gbit_per_s, collectives)


def predicted_speedup_per_worker(
    workers: int, compute_s: float, wire_bytes: float, gbit_per_s: float, collectives: int = 1
) -> float:
    """The model's speed-up over one worker divided by N (1.0: perfect scaling). Measured runs
    call theirs "efficiency" (images/s of N workers over one process's)."""
    step = predicted_step_seconds(workers, compute_s, wire_bytes, gbit_per_s, collectives)
    return compute_s / (workers * step)


def communication_share(
    workers: int, compute_s: float, wire_bytes: float, gbit_per_s: float, collectives: int = 1
) -> float:
    step = predicted_step_seconds(workers, compute_s, wire_bytes, gbit_per_s, collectives)
    return ring_allreduce_seconds(wire_bytes, workers, gbit_per_s, collectives) / step
