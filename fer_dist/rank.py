"""Which worker this process is, read in one place, and the one decision of who is chief.

Ray Train sets TF_CONFIG on every worker (`ray_backend`), its task index being the worker's
world rank; a plain process has none and is rank 0. Light on purpose (no TensorFlow,
no Ray): logging reads it before either is imported.
"""

from __future__ import annotations

import json
import os


def worker_rank() -> int:
    """This worker's index in TF_CONFIG (0: the chief, or the only process)."""
    try:
        return int(json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def is_chief(rank: int | None = None) -> bool:
    """The one decision of which process writes outputs: worker 0 (or the only process)."""
    return (worker_rank() if rank is None else rank) == 0


__all__ = ["is_chief", "worker_rank"]
