"""Finding the Ray Train worker processes of a job, to SIGKILL one of them in fault tests.

Test-only (needs psutil from the `test` extra). benchmarks/workers.py keeps its own copy of
`train_workers` so that neither tests nor benchmarks import the other.
"""

from __future__ import annotations

import os

import psutil


def train_workers(session_id: int) -> list[psutil.Process]:
    """The Ray Train worker processes of a job started in its own session."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == session_id:
                found.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return found
