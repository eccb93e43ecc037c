"""fer_dist.exclusive on real files and the real gcp-storage-emulator (no mocks).

The emulator runs through tests/gcs_emulator_main.py, which makes it honour
`ifGenerationMatch`; `test_emulator_honours_if_generation_match` checks that, so the races
below could fail. Lease intervals are shrunk (RENEW_S=1, EXPIRE_S=3) for the gs:// tests.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from gcs_emulator import pid_alive

from fer_dist import exclusive, storage
from fer_dist.errors import UserError

ROUNDS = 10
RENEW_S, EXPIRE_S, POLL_S = 1.0, 3.0, 0.1
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = """
import sys, time
from fer_dist import exclusive
exclusive.RENEW_S, exclusive.EXPIRE_S = float(sys.argv[2]), float(sys.argv[3])
lease = exclusive.acquire_lease(sys.argv[1], owner="holder-process")
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    """A fresh directory URI: a local path, or a gs:// prefix in the emulator."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_prefix")


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setattr(exclusive, "RENEW_S", RENEW_S)
    monkeypatch.setattr(exclusive, "EXPIRE_S", EXPIRE_S)
    monkeypatch.setattr(exclusive, "POLL_S", POLL_S)


def _gcs_client():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    return gcs.Client(project="test", credentials=AnonymousCredentials())


def _blob(uri: str):
    bucket, _, name = uri[len("gs://") :].partition("/")
    return _gcs_client().bucket(bucket).blob(name)


def _start_holder(run_dir: str) -> subprocess.Popen:
    """A process holding the lease of `run_dir`; returns once it says so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir, str(RENEW_S), str(EXPIRE_S)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""
        assert line.strip() == b"held", f"holder did not take the lease (exit status {proc.poll()})"
    except BaseException:
        _kill(proc)
        raise
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
    assert not pid_alive(proc.pid)


# -- create_exclusive ------------------------------------------------------------------


def test_create_exclusive_first_wins(root):
    uri = storage.join(root, "sub", "run.json")
    assert exclusive.create_exclusive(uri, b"first")
    assert not exclusive.create_exclusive(uri, b"second")
    assert storage.read_bytes(uri) == b"first"
    if not storage.is_gcs(root):
        umask = os.umask(0)
        os.umask(umask)
        assert os.stat(uri).st_mode & 0o777 == 0o644 & ~umask


def test_create_exclusive_thread_race(root):
    barrier = threading.Barrier(2)
    results: dict[str, list[bool]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def race(tag: str) -> None:
        try:
            for i in range(ROUNDS):
                barrier.wait(timeout=60)
                results[tag].append(exclusive.create_exclusive(storage.join(root, f"r{i}"), f"{tag}-{i}".encode()))
        except BaseException as e:  # reported below, never left hanging
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=race, args=(tag,)) for tag in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    for i in range(ROUNDS):
        winners = [tag for tag in results if results[tag][i]]
        assert len(winners) == 1, (i, results)
        assert storage.read_bytes(storage.join(root, f"r{i}")) == f"{winners[0]}-{i}".encode()


def _race_worker(root: str, tag: str, barrier, queue) -> None:
    """One of two processes: creates r0..r9 under `root`, in step with the other one."""
    for i in range(ROUNDS):
        barrier.wait(timeout=60)
        queue.put((i, tag, exclusive.create_exclusive(storage.join(root, f"r{i}"), f"{tag}-{i}".encode())))


def test_create_exclusive_process_race(root):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(root, tag, barrier, queue)) for tag in ("a", "b")]
    try:
        for p in procs:
            p.start()
        outcomes = [queue.get(timeout=120) for _ in range(2 * ROUNDS)]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=30)
        queue.close()
    for i in range(ROUNDS):
        winners = [tag for j, tag, won in outcomes if j == i and won]
        assert len(winners) == 1, (i, sorted(outcomes))
        assert storage.read_bytes(storage.join(root, f"r{i}")) == f"{winners[0]}-{i}".encode()


def test_emulator_honours_if_generation_match(gcs_prefix):
    from google.api_core.exceptions import NotFound, PreconditionFailed

    blob = _blob(storage.join(gcs_prefix, "obj"))
    blob.upload_from_string(b"one", if_generation_match=0)
    generation = blob.generation
    with pytest.raises(PreconditionFailed):
        _blob(storage.join(gcs_prefix, "obj")).upload_from_string(b"two", if_generation_match=0)
    with pytest.raises(PreconditionFailed):  # the resumable path (chunked upload)
        big = _blob(storage.join(gcs_prefix, "obj"))
        big.chunk_size = 256 * 1024
        big.upload_from_string(b"x" * (600 * 1024), if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        _blob(storage.join(gcs_prefix, "obj")).upload_from_string(b"two", if_generation_match=generation + 1)
    with pytest.raises(PreconditionFailed):
        _blob(storage.join(gcs_prefix, "obj")).delete(if_generation_match=generation + 1)
    assert storage.read_bytes(storage.join(gcs_prefix, "obj")) == b"one"
    again = _blob(storage.join(gcs_prefix, "obj"))
    again.upload_from_string(b"three", if_generation_match=generation)
    assert storage.read_bytes(storage.join(gcs_prefix, "obj")) == b"three"
    _blob(storage.join(gcs_prefix, "obj")).delete(if_generation_match=again.generation)
    assert not storage.exists(storage.join(gcs_prefix, "obj"))
    with pytest.raises(NotFound):
        _blob(storage.join(gcs_prefix, "obj")).delete(if_generation_match=again.generation)


def test_create_exclusive_own_retried_upload_counts_as_created(gcs_prefix):
    """A 412 on an object holding exactly our data: our own request, retried."""
    uri = storage.join(gcs_prefix, "run.json")
    data = f'{{"nonce": "{uuid.uuid4().hex}"}}'.encode()
    _blob(uri).upload_from_string(data)
    assert exclusive.create_exclusive(uri, data)
    assert not exclusive.create_exclusive(uri, data + b" ")


# -- leases ----------------------------------------------------------------------------


def test_local_lease_held_by_another_process(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = _start_holder(run_dir)
    try:
        with pytest.raises(UserError, match=r"is in use by holder-process"):
            exclusive.acquire_lease(run_dir, owner="second")
        assert holder.poll() is None
    finally:
        _kill(holder)
    t0 = time.monotonic()
    with exclusive.acquire_lease(run_dir, owner="second") as lease:
        assert time.monotonic() - t0 < 1
        with pytest.raises(UserError, match=r"is in use by second"):
            exclusive.acquire_lease(run_dir, owner="third")  # in this process too
    assert lease.released
    with exclusive.acquire_lease(run_dir, owner="third"):
        pass


def test_gcs_lease_renewed_holder_wins_then_released(gcs_prefix, short_lease, caplog):
    run_dir = storage.join(gcs_prefix, "run")
    first = exclusive.acquire_lease(run_dir, owner="first")
    try:
        generation = first.generation
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="fer_dist.exclusive"):
            with pytest.raises(
                UserError, match=r"is in use by first: it is training it now \(lease renewed \d+ s ago\)"
            ):
                exclusive.acquire_lease(run_dir, owner="second")
        waited = time.monotonic() - t0
        assert EXPIRE_S <= waited < EXPIRE_S + 3, waited
        assert first.generation != generation  # it was renewed meanwhile
        assert not first.lost
        waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
        assert len(waits) == 1 and f"run {run_dir} is in use by first (lease until" in waits[0]
    finally:
        first.release()
    assert not storage.exists(storage.join(run_dir, ".lease"))
    t0 = time.monotonic()
    with exclusive.acquire_lease(run_dir, owner="second") as second:
        assert time.monotonic() - t0 < 1
        assert not second.lost
    assert not storage.exists(storage.join(run_dir, ".lease"))


def test_gcs_lease_of_killed_holder_expires(gcs_prefix, short_lease):
    run_dir = storage.join(gcs_prefix, "run")
    holder = _start_holder(run_dir)
    try:
        time.sleep(RENEW_S * 1.5)  # it renews while alive
        assert holder.poll() is None
    finally:
        _kill(holder)  # SIGKILL: no release, no more renewals
    t0 = time.monotonic()
    with exclusive.acquire_lease(run_dir, owner="second") as lease:
        waited = time.monotonic() - t0
        # it waited for the lease renewed just before the kill to expire, no longer
        assert EXPIRE_S - RENEW_S - 0.5 <= waited <= EXPIRE_S + 1, waited
        record = storage.read_text(storage.join(run_dir, ".lease"))
        assert '"owner": "second"' in record and lease.nonce in record


def test_gcs_lease_left_long_ago_is_taken_at_once(gcs_prefix, short_lease):
    run_dir = storage.join(gcs_prefix, "run")
    storage.write_text(
        storage.join(run_dir, ".lease"),
        '{"owner": "old", "nonce": "x", "renewed_at": 1000, "expires_at": 1120}',
    )
    t0 = time.monotonic()
    with exclusive.acquire_lease(run_dir, owner="new"):
        assert time.monotonic() - t0 < 1
