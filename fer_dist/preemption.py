"""Preemption: stop at a step, checkpoint at that step, and continue from it.

    kill -TERM <pid of python jobs/train.py>      # GCP's spot notice; Ctrl-C is SIGINT
    python jobs/train.py --name NAME --resume     # continues at the step it stopped after

A plain process (`SignalWatcher`): on SIGTERM or SIGINT the loop finishes the step in
progress, writes a checkpoint at that step (`checkpoint.name(epoch, step)`), logs one line and
exits with the signal's usual status (128 + signal: 143, 130) by raising `Interrupted`. A
second Ctrl-C interrupts at once. A signal that arrives outside a training step (validation,
the epoch checkpoint) ends the run right after the epoch's checkpoint.

On Ray, signals never reach the loop (Train V2 runs it in a thread; Ray's handlers end the
worker), so a Ray session watches Ray's own preemption notices instead (`ray_worker.RaySession`).

Either way, storage retries stop waiting at the notice's deadline (`storage.retry_not_after`):
GCP gives a spot VM 30 s after SIGTERM (`SIGNAL_DEADLINE_S`); Ray's notice carries its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time

from fer_dist import storage

SIGNAL_DEADLINE_S = 25.0  # GCP: a spot VM goes 30 s after its SIGTERM; 5 s for the rest
log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Ends the process with the signal's status after the step checkpoint is written; a
    SystemExit, so leases, temporary directories and progress bars are released on the way."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Notice:
    """What a watcher saw: `exit_signal` set means checkpoint and exit; None means checkpoint
    and keep training (a Ray preemption notice: Ray restarts the run from that checkpoint)."""

    why: str
    exit_signal: int | None = None
    deadline: float | None = None  # time.monotonic() by which the checkpoint must be written

    def timing(self, seconds: float) -> str:
        """'written in 1.2 s of the 24 s left': the just-in-time checkpoint against the deadline."""
        if self.deadline is None:
            return f"written in {seconds:.1f} s"
        left = self.deadline - time.monotonic() + seconds
        verdict = "" if seconds <= left else " (LATE: past the notice's deadline; the step before stays resumable)"
        return f"written in {seconds:.1f} s of the {left:.0f} s the notice left{verdict}"


class NoWatcher:
    """Nothing to watch (a process that is not the main thread, a test)."""

    def poll(self, global_step: int, every_worker_here: bool = False) -> Notice | None:
        """A notice, if one came. `every_worker_here`: every worker polls at this very point (an
        epoch's end), whatever the step."""
        return None

    def pace(self, dist, seconds_per_step: float) -> str | None:
        """At an epoch's end, on every worker: adapt how often notices are asked for to the
        measured step time; a line to log when that changed."""
        return None

    def close(self) -> None:
        pass


class SignalWatcher(NoWatcher):
    """SIGTERM/SIGINT in a plain process. The handler only records the signal; the loop polls."""

    def __init__(self):
        self.signum: int | None = None
        self.deadline: float | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            log.info("SIGINT again: stopping now, without a checkpoint at this step (the last one stays resumable)")
            raise Interrupted(signum)  # a second Ctrl-C: now
        self.signum = signum
        self.deadline = time.monotonic() + SIGNAL_DEADLINE_S
        storage.retry_not_after(SIGNAL_DEADLINE_S)
        log.info("%s received: finishing the step in progress, then checkpointing", signal.Signals(signum).name)

    def poll(self, global_step: int, every_worker_here: bool = False) -> Notice | None:
        if self.signum is None:
            return None
        return Notice(signal.Signals(self.signum).name, exit_signal=self.signum, deadline=self.deadline)

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


@contextlib.contextmanager
def stop_at_once(what_then: str):
    """Where there is nothing to checkpoint (the final export and evaluation, whose inputs are
    checkpointed already): SIGTERM or SIGINT ends the process at once, with one line saying
    `what_then`, and the signal's exit status. Only in the main thread (elsewhere: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        log.info("%s received: stopping now; %s", signal.Signals(signum).name, what_then)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class RayNoticeWatcher(NoWatcher):
    """Ray Train's preemption notices (a spot VM's shutdown script runs `ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION`). `ray.train.get_preemption_info()` is a barrier across the
    workers, so it is asked at the same global steps on every worker: every `every_steps` steps,
    set at each epoch's end (`pace`, one collective) so that it is about every `poll_seconds` of
    training, and at every epoch's end. The first notice asks for a checkpoint at that step;
    training goes on, and when the node goes Ray restarts the worker group from the newest
    checkpoint (`ray_worker.RaySession`)."""

    def __init__(self, every_steps: int, poll_seconds: float = 10.0):
        self.every_steps = every_steps
        self.poll_seconds = poll_seconds
        self.noticed = False

    def poll(self, global_step: int, every_worker_here: bool = False) -> Notice | None:
        if global_step % self.every_steps and not every_worker_here:
            return None
        import ray.train

        info = ray.train.get_preemption_info()
        if info is None or self.noticed:
            return None
        self.noticed = True
        seconds = info.deadline_ms / 1000 - time.time() if info.deadline_ms else None
        storage.retry_not_after(seconds)
        left = f", {seconds:.0f} s left" if seconds is not None else ""
        deadline = time.monotonic() + seconds if seconds is not None else None
        return Notice(f"preemption notice (ranks {info.preempted_ranks}{left})", deadline=deadline)

    def pace(self, dist, seconds_per_step: float) -> str | None:
        workers = dist.replicas // dist.local_replicas
        mean = float(dist.sum_over_workers([seconds_per_step])[0]) / max(1, workers)  # the same on every worker
        every = max(1, round(self.poll_seconds / mean)) if mean > 0 else self.every_steps
        if every == self.every_steps:
            return None
        self.every_steps = every
        return f"preemption notices: asked every {every} steps (~{every * mean:.1f} s at {mean:.3f} s a step)"


__all__ = ["Interrupted", "Notice", "NoWatcher", "RayNoticeWatcher", "SignalWatcher", "SIGNALS"]
