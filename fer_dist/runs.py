"""Run directories: their names, and creating or resuming one safely.

    python jobs/train.py --name my-run            # ./runs/my-run; --resume continues it

A run (or search) without `--name` is named `<prefix>-YYYYmmdd-HHMMSS`. An existing run is never
overwritten. Creating one is atomic, on local disk and on `gs://`: before anything else is
written, a marker object is created exclusively (`O_EXCL`; `if_generation_match=0` on GCS), so
of two runs started with the same name at the same instant exactly one goes on, and the other
ends with `error:` having written nothing. A run holds its lease (an OS lock locally, a
renewed lease object on GCS) from creation to exit (`held`), and every write into it is
fenced by that lease: a `--resume` of a live run is refused, and a process that lost its
lease writes nothing more. A start that fails before the run's config.json is written
removes what it created, so the name stays free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from fer_dist import exclusive, storage
from fer_dist.errors import UserError

MARKER_FILE = ".fer_dist_run"  # created exclusively when the run is created
CONFIG_FILE = "config.json"


def new_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir(output: str, name: str) -> str:
    """The run directory URI of `name` under `output`, after checking both."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: expected a plain directory name")
    if storage.is_gcs(output):
        storage.check_bucket(output)
    elif os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--storage {output}: is a file, not a directory")
    return storage.join(output, name)


def check_state(run_uri: str, resume: bool, what: str = "run") -> None:
    """A cheap early check: a new run must not exist, a resumed one must."""
    has_config = storage.exists(storage.join(run_uri, CONFIG_FILE))
    if not resume and (has_config or storage.exists(storage.join(run_uri, MARKER_FILE))):
        raise UserError(
            f"{what} directory {run_uri} already exists: pass --resume to continue it, or choose another --name"
        )
    if resume and not has_config:
        raise UserError(f"--resume: no {what} to resume at {run_uri} (no {CONFIG_FILE} there)")


def resume_command(run_uri: str) -> str:
    """The command that continues (or finishes) the run at `run_uri`."""
    parent, _, name = str(run_uri).rstrip("/").rpartition("/")
    return f"python jobs/train.py --storage {parent} --name {name} --resume"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create(run_uri: str, what: str = "run") -> None:
    """Takes the name: creates the marker exclusively, or raises UserError if another run has it."""
    marker = json.dumps({"owner": owner(), "nonce": uuid.uuid4().hex, "created": time.time()}) + "\n"
    if not exclusive.create_exclusive(storage.join(run_uri, MARKER_FILE), marker.encode()):
        raise UserError(
            f"{what} directory {run_uri} already exists (created just now by another job with the same --name): "
            "choose another --name"
        )


@contextlib.contextmanager
def held(run_uri: str, resume: bool, what: str = "run", first_file: tuple[str, str] | None = None):
    """A new run (created exclusively) or a resumed one, with its lease held until exit and
    every write below it fenced by that lease (`storage.fence`). `first_file` (name, text) is
    written first; when creating the run or writing it fails, what was created is removed."""
    created: list[str] = []  # what a failed start removes: only what this process created
    lease, started = None, False
    try:
        if not resume:
            create(run_uri, what)
            created = [MARKER_FILE, exclusive.LEASE_NAME] + ([first_file[0]] if first_file else [])
        lease = exclusive.acquire_lease(run_uri, owner())
        storage.fence(run_uri, lease.check)
        if first_file is not None:
            storage.write_text(storage.join(run_uri, first_file[0]), first_file[1])
        started = True
        yield lease
    finally:
        storage.fence(run_uri, None)
        if lease is not None:
            lease.release()
        if not started:
            _remove_created(run_uri, created)


def _remove_created(run_uri: str, names: list[str]) -> None:
    """Removes the files a failed start created (`names`), and the run directory if that leaves
    it empty; whatever else is there stays. Errors here are not reported over the original one."""
    with contextlib.suppress(Exception):
        for name in names:
            storage.delete_file(storage.join(run_uri, name))
        path = storage.local_path(run_uri)
        if path and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


__all__ = ["new_run_name", "run_dir", "check_state", "create", "held", "resume_command", "MARKER_FILE"]
