"""The wall-clock budget of the training loop (`train_minutes`).

    python jobs/train.py ... --set train_minutes=30 --epochs 1000

When the budget runs out the epoch ends at that step, is validated and checkpointed, and
training stops; a resumed run gets what is left. Every worker must stop at the same step, so
the decision is a cross-worker vote (`Distributed.any_worker`), taken every `every` steps
(`vote_every_steps` with several workers; every step in one process, where it is free).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class TimeBudget:
    seconds: float  # 0: no budget
    vote: Callable[[bool], bool]  # True on every worker when any worker passes True
    every: int = 1  # global steps between mid-epoch votes

    def __bool__(self) -> bool:
        return self.seconds > 0

    def used_up_mid_epoch(self, spent_before: float, epoch_start: float, global_step: int) -> bool:
        """After a step: whether the time spent in earlier epochs plus this one's is over budget
        (asked every `every` steps)."""
        if not self or global_step % self.every:
            return False
        return self.vote(spent_before + time.perf_counter() - epoch_start >= self.seconds)

    def used_up(self, spent: float) -> bool:
        """After an epoch."""
        return bool(self) and self.vote(spent >= self.seconds)
