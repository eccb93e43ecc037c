"""Runs the real gcp-storage-emulator (PyPI) as a subprocess for tests.

    with running_emulator() as emu:           # emu.host == "http://127.0.0.1:PORT"
        os.environ["STORAGE_EMULATOR_HOST"] = emu.host
        ...                                   # gs://fer-test/... now goes to the emulator

The emulator keeps everything in memory and listens on a free loopback port. It runs
through `gcs_emulator_main.py`, which makes it honour generation preconditions
(`ifGenerationMatch`, 412 when they fail) like Cloud Storage. It is
stopped by its own PID (SIGTERM, then SIGKILL), so nothing is left running, and no broad
process matching is ever used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Emulator:
    host: str  # "http://127.0.0.1:PORT", the value for STORAGE_EMULATOR_HOST
    port: int
    pid: int
    bucket: str

    @property
    def root(self) -> str:
        """`gs://<bucket>`."""
        return f"gs://{self.bucket}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:  # it answers HTTP, even if with an error
        return e.code < 500
    except (OSError, ValueError):
        return False


def _bucket_exists(host: str, bucket: str) -> bool:
    try:
        with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}", timeout=1) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_main.py")


def _command() -> list[str]:
    # This interpreter's gcp_storage_emulator (the console script on PATH may belong to
    # another environment), through a launcher that makes it honour `ifGenerationMatch`,
    # which the emulator ignores; it takes the CLI's arguments (`start --host ...`).
    return [sys.executable, LAUNCHER]


@contextlib.contextmanager
def running_emulator(bucket: str = "fer-test", timeout: float = START_TIMEOUT_S) -> Iterator[Emulator]:
    """Starts the emulator with `bucket` created; yields an Emulator; stops it on exit."""
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    # stderr/stdout go to a temporary file (not a pipe: a pipe nobody reads can fill up
    # and block the server); it is read back for the error message if the start fails.
    log = tempfile.TemporaryFile(prefix="gcs-emulator-")
    env = dict(os.environ)
    env.pop("STORAGE_EMULATOR_HOST", None)
    proc = subprocess.Popen(
        [
            *_command(),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--default-bucket",
            bucket,
            "--in-memory",
            "--quiet",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (_answers(host + "/") and _bucket_exists(host, bucket)):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {proc.returncode}"
                    if proc.poll() is not None
                    else f"did not answer HTTP on {host} within {timeout:.0f} s"
                )
                _stop(proc)
                log.seek(0)
                output = log.read().decode("utf-8", "replace")[-4000:]
                raise RuntimeError(f"gcp-storage-emulator {why}; its output:\n{output}")
            time.sleep(0.05)
        yield Emulator(host=host, port=port, pid=proc.pid, bucket=bucket)
    finally:
        _stop(proc)
        log.close()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
