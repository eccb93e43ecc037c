"""Run directories: their names and their creation.

    python jobs/train.py --name my-run            # ./runs/my-run; --resume continues it

A run (or search) without `--name` is named `<prefix>-YYYYmmdd-HHMMSS`. An existing run
directory (one holding `config.json`) is never overwritten: only `--resume` reuses it.
"""

from __future__ import annotations

import time

from fer_dist import storage
from fer_dist.errors import UserError


def new_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(output: str, name: str, resume: bool) -> str:
    """The run directory URI; never overwrites an existing run unless resuming it."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: expected a plain directory name")
    run_dir = storage.join(output, name)
    exists = storage.exists(storage.join(run_dir, "config.json"))
    if exists and not resume:
        raise UserError(
            f"run directory {run_dir} already exists: pass --resume to continue it, or choose another --name"
        )
    if resume and not exists:
        raise UserError(f"--resume: no run to resume at {run_dir} (no config.json there)")
    storage.makedirs(run_dir)
    return run_dir


__all__ = ["new_run_name", "prepare_run_dir"]
