"""Sessions: where a training loop runs and where its checkpoints and reports go.

`LocalSession` is a plain process, `ray_worker.RaySession` a Ray Train worker. Either way the chief
publishes checkpoints itself (`checkpoint.publish`: `<run_dir>/checkpoints/epoch_NNNN/`) and
applies the one retention policy (`checkpoint.prune_run`); Ray hears metrics only.
"""

from __future__ import annotations

import sys
from typing import Protocol

from fer_dist import checkpoint, preemption, storage


class Session(Protocol):
    run_dir: str  # URI where the chief writes config.json, history.csv, metrics.json, ...
    show_progress: bool  # progress bars (a terminal), else progress lines in the log

    def restore_dir(self) -> str | None:
        """A fresh local copy of the checkpoint to resume from (the loop deletes it), or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Called by every worker every epoch (and at a preemption's step checkpoint, where
        `metrics["step"]` > 0); only the chief passes a checkpoint_dir."""

    def watcher(self) -> preemption.NoWatcher:
        """What tells the loop to checkpoint at a step (and maybe exit): signals, Ray's notices."""


class LocalSession:
    """A plain process: checkpoints in `<run_dir>/checkpoints/`, best `keep` plus the latest."""

    def __init__(self, run_dir: str, keep_checkpoints: int = 2, show_progress: bool = True, monitor: str = "val_loss"):
        self.run_dir = run_dir
        self.keep = keep_checkpoints
        self.monitor = monitor  # config.monitor: what retention keeps the best of
        self.show_progress = show_progress and sys.stdout.isatty()  # a bar in a log file is noise

    @property
    def checkpoints_uri(self) -> str:
        return storage.join(self.run_dir, checkpoint.LOCAL_PARENT)

    def restore_dir(self) -> str | None:
        fetched = checkpoint.fetch_to_resume(checkpoint.of_run(self.run_dir), self.checkpoints_uri)
        return fetched[1] if fetched else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        checkpoint.publish(checkpoint_dir, self.run_dir, metrics["epoch"], metrics.get("step", 0))
        checkpoint.prune_run(self.run_dir, self.keep, self.monitor)

    def watcher(self) -> preemption.NoWatcher:
        return preemption.SignalWatcher()
