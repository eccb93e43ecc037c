"""What every job adapter in `jobs/` shares: logging, the `error:` contract, run directories.

    python jobs/train.py --name my-run            # ./runs/my-run; --resume continues it

A `UserError` anywhere below a job becomes one line `error: <message>` on stderr and exit
status 2, never a traceback. Everything else is a bug and tracebacks.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Callable

from fer_dist import storage
from fer_dist.errors import UserError

EXIT_USER_ERROR = 2


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors_exit(fn: Callable) -> Callable:
    """Wraps a job's main: UserError -> `error: ...` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


def new_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(output: str, name: str, resume: bool) -> str:
    """The run directory URI; never overwrites an existing run unless resuming it."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: expected a plain directory name")
    run_dir = storage.join(output, name)
    exists = storage.exists(storage.join(run_dir, "config.json"))
    if exists and not resume:
        raise UserError(f"run directory {run_dir} already exists: pass --resume to continue it, or choose another --name")
    if resume and not exists:
        raise UserError(f"--resume: no run to resume at {run_dir} (no config.json there)")
    storage.makedirs(run_dir)
    return run_dir
