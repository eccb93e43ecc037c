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

The run's advice (`CommunicationShare.advice`, logged after its first epoch and at its end) puts
the run's own figures into that model: the link's latency per ring hop from the timed vote (a
one-value all-reduce is latency alone), its bandwidth from the timed float32 gradient buffer, the
compute from the step time less its all-reduce; then, for every wire mode (`ADVISED_MODES`), the
predicted speed-up per worker at 2, 4 and 8 workers, and the mode that still reaches `PAYS` at the
most workers, with that count. It assumes every worker has a device of its own (a cluster; not several
workers sharing one machine's cores, where the measured efficiency is the figure to read).
"""

from __future__ import annotations

import dataclasses

DOMINATES = 0.5  # communication over half of the step time
PAYS = 0.75  # predicted speed-up per worker at which one more worker is still worth its price
ADVISED_MODES = ("float32", "bfloat16", "powersgd1", "powersgd4")  # the wire modes the advice compares
ADVISED_WORKERS = (2, 4, 8)


def wire_settings(mode: str) -> dict:
    """A wire mode's config settings: an all-reduce dtype (`float32`, `bfloat16`, `float16`),
    or `powersgdR` (PowerSGD at rank R >= 1, the other gradients in float32). ValueError names
    what a mode may be."""
    from fer_dist.config import ALLREDUCE_DTYPES

    rank = mode.removeprefix("powersgd")
    if mode.startswith("powersgd") and rank.isdigit() and int(rank) >= 1:
        return {"gradient_compression": "powersgd", "powersgd_rank": int(rank), "allreduce_dtype": "float32"}
    if mode in ALLREDUCE_DTYPES:
        return {"gradient_compression": "none", "allreduce_dtype": mode}
    raise ValueError(f"unknown wire mode {mode!r} (one of {', '.join(ALLREDUCE_DTYPES)}, or powersgdR: rank R >= 1)")


def optimizer_note(optimizer: str, gradient_compression: str, adam_variance: str = "running") -> str | None:
    """What was measured of this optimizer under gradient compression, where it costs accuracy
    (docs/scaling.md, `benchmarks/compression_accuracy_adam_rank4.json`, `..._adam_frozen.json`);
    None where it does not, or where the run already holds Adam's variance."""
    if gradient_compression == "powersgd" and optimizer == "adam" and adam_variance == "running":
        return (
            "gradient_compression=powersgd with optimizer=adam: over 3 seeds of 300 steps, PowerSGD cost Adam "
            "3.9 points of val accuracy at rank 4 (every seed lower), where SGD with momentum kept its accuracy "
            "(+0.8 at rank 4); --set optimizer=sgd suits it; --set adam_variance=frozen (Adam's second moment "
            "held after the warm-up) cut the cost to 2.5 points (docs/scaling.md)"
        )
    return None


def wire_flags(mode: str) -> str:
    """The `--set` flags of a wire mode, as a user types them (every setting: a run of another
    mode that adds them gets exactly this one)."""
    return " ".join(f"--set {key}={value}" for key, value in wire_settings(mode).items())


@dataclasses.dataclass
class Advice:
    mode: str  # the wire mode that pays at the most workers (ties: the fastest at the run's count)
    workers: int  # the most workers (of ADVISED_WORKERS) at which it still reaches PAYS; 1: none
    predicted: dict  # mode -> {workers: predicted speed-up per worker}
    compute_s: float  # one worker's compute per step at the global batch (step less all-reduce, times N)
    gbit_per_s: float  # the link's bandwidth, read off the timed float32 all-reduce
    latency_s: float  # one ring hop, read off the timed vote

    def line(self) -> str:
        counts = sorted({n for table in self.predicted.values() for n in table})
        table = ", ".join(f"{mode} {' / '.join(f'{by[n]:.2f}' for n in counts)}" for mode, by in self.predicted.items())
        head = (
            f"advice: predicted speed-up per worker at {' / '.join(map(str, counts))} workers, each with a device "
            f"of its own ({self.compute_s * 1e3:.0f} ms of compute a step split N ways; the measured link: "
            f"{self.gbit_per_s:.1f} Gbit/s, {self.latency_s * 1e6:.0f} us a hop): {table}"
        )
        if self.workers < 2:
            return head + f"; no mode reaches {PAYS} with 2 workers: train on one, or raise global_batch_size"
        return head + f"; pays (>= {PAYS}) up to {self.workers} workers: {self.mode} ({wire_flags(self.mode)})"

    def as_metrics(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CommunicationShare:
    workers: int
    values: int  # gradient values all-reduced per step
    wire_bytes: int  # their size on the wire (allreduce_dtype; PowerSGD's factors in float32)
    dtype: str
    allreduce_s: float  # one all-reduce of the real gradient buffer, alone (median of a few)
    vote_s: float = 0.0  # one cross-worker vote (a one-value all-reduce), alone
    step_s: float = 0.0  # the run's step time (the last epoch's), once known
    collectives: int = 1  # the run's gradient collectives per step (PowerSGD: 3)
    float32_s: float = 0.0  # the whole gradient buffer in float32, one all-reduce, alone (the link's bandwidth)
    float32_bytes: int = 0
    modes: dict = dataclasses.field(default_factory=dict)  # ADVISED_MODES -> [wire bytes, collectives]

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

    def advice(self) -> Advice | None:
        """The model's prediction for every advised mode at 2, 4, 8 workers and the run's own
        count, from this run's measured figures; None until the step time is known."""
        if self.step_s <= 0 or not self.modes or self.workers < 2 or self.float32_s <= self.vote_s:
            return None  # no step time yet, or the float32 buffer's time is all latency: no bandwidth to read
        hops = 2 * (self.workers - 1)
        latency = self.vote_s / hops
        gbit = 2 * (self.workers - 1) / self.workers * self.float32_bytes * 8 / (self.float32_s - hops * latency) / 1e9
        compute = self.workers * max(self.step_s - self.allreduce_s, 0.1 * self.step_s)
        counts = sorted({*ADVISED_WORKERS, self.workers})
        predicted = {
            mode: {n: round(predicted_speedup_per_worker(n, compute, sent, gbit, calls, latency), 3) for n in counts}
            for mode, (sent, calls) in self.modes.items()
        }

        def paying(mode: str) -> int:
            return max((n for n in counts if predicted[mode][n] >= PAYS), default=1)

        best = max(predicted, key=lambda mode: (paying(mode), predicted[mode][self.workers]))
        return Advice(best, paying(best), predicted, compute, gbit, latency)

    @classmethod
    def from_dict(cls, fields: dict) -> CommunicationShare:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})

    def as_metrics(self) -> dict:
        advice = self.advice()
        metrics = dict(dataclasses.asdict(self), share=round(self.share, 4), dominates=self.dominates)
        return dict(metrics, advice=advice.as_metrics()) if advice else metrics


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
    workers: int,
    compute_s: float,
    wire_bytes: float,
    gbit_per_s: float,
    collectives: int = 1,
    latency_s: float = LATENCY_S,
) -> float:
    """A data-parallel step at a fixed global batch: compute split N ways plus the all-reduce
    (no overlap: the step all-reduces after the backward pass)."""
    return compute_s / workers + ring_allreduce_seconds(wire_bytes, workers, gbit_per_s, collectives, latency_s)


def predicted_speedup_per_worker(workers: int, compute_s: float, *wire, **link) -> float:
    """The model's speed-up over one worker divided by N (1.0: perfect scaling); `wire` and `link`
    as `predicted_step_seconds` takes them. Measured runs call theirs "efficiency" (images/s of
    N workers over one process's)."""
    return compute_s / (workers * predicted_step_seconds(workers, compute_s, *wire, **link))


def communication_share(
    workers: int, compute_s: float, wire_bytes: float, gbit_per_s: float, collectives: int = 1
) -> float:
    step = predicted_step_seconds(workers, compute_s, wire_bytes, gbit_per_s, collectives)
    return ring_allreduce_seconds(wire_bytes, workers, gbit_per_s, collectives) / step
