"""gs:// storage when the bucket is unreachable for a while, or missing: real emulator, no mocks.

A TCP proxy (`tcp_proxy.ProxyProcess`: a threaded forwarder in a child process) stands between
the code and the gcp-storage-emulator; stopping it refuses new connections and cuts open ones,
as a network outage would. The emulator itself is always
read directly (not through the proxy) to check what arrived.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from tcp_proxy import ProxyProcess

from fer_dist import storage
from fer_dist.errors import UserError

MISSING_BUCKET = "no-such-bucket-xyz"


# -- helpers ---------------------------------------------------------------------------------


def emulator_get(emu, uri: str) -> bytes | None:
    """An object's bytes read straight from the emulator (not through the proxy); None if absent."""
    bucket, key = uri[len("gs://") :].split("/", 1)
    url = f"{emu.host}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def emulator_buckets(emu) -> set[str]:
    with urllib.request.urlopen(f"{emu.host}/storage/v1/b?project=test", timeout=5) as r:
        return {b["name"] for b in json.loads(r.read()).get("items", [])}


@pytest.fixture
def proxy(gcs_emulator, monkeypatch):
    """A running proxy to the emulator, STORAGE_EMULATOR_HOST pointing at it; always closed."""
    with ProxyProcess(gcs_emulator.port) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.host)
        yield p


@pytest.fixture
def retry_seconds():
    """Sets this process's retry total for a test; the previous setting is restored after."""
    previous = storage.set_retry_seconds(None)
    try:
        yield storage.set_retry_seconds
    finally:
        storage.set_retry_seconds(previous)


def restart_later(proxy: ProxyProcess, after_s: float) -> threading.Timer:
    timer = threading.Timer(after_s, proxy.start)
    timer.start()
    return timer


# -- (a) retries -----------------------------------------------------------------------------


def test_write_blocks_while_unreachable_then_succeeds(
    gcs_emulator, gcs_prefix, proxy, retry_seconds, monkeypatch, caplog
):
    retry_seconds(30)
    monkeypatch.setattr(storage, "LOG_EVERY_S", 3.0)  # the once-a-minute line, every 3 s here
    uri = storage.join(gcs_prefix, "hist", "history.csv")
    storage.write_text(uri, "epoch\n1\n")  # the proxy works: a pooled connection now exists
    proxy.stop()
    timer = restart_later(proxy, 8.0)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fer_dist.storage"):
            storage.write_text(uri, "epoch\n1\n2\n")
        elapsed = time.monotonic() - start
    finally:
        timer.cancel()
        timer.join()
    assert 7.0 <= elapsed < 30.0, elapsed
    assert emulator_get(gcs_emulator, uri) == b"epoch\n1\n2\n"
    assert storage.read_text(uri) == "epoch\n1\n2\n"
    lines = [r.getMessage() for r in caplog.records if r.name == "fer_dist.storage"]
    assert 1 <= len(lines) <= elapsed / 3.0 + 1, lines
    assert all(
        line.startswith(f"storage: {uri} unreachable for ") and line.endswith("; retrying until 30 s") for line in lines
    ), lines
    assert all("\n" not in line for line in lines)


def test_gives_up_with_a_user_error_naming_the_uri(gcs_prefix, proxy, retry_seconds):
    retry_seconds(3)
    uri = storage.join(gcs_prefix, "never", "written.txt")
    proxy.stop()
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        storage.write_text(uri, "x")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(f"storage {uri}: unreachable for "), message
    assert "OSError" in message and "resumable with --resume" in message and "\n" not in message
    assert 3.0 <= elapsed < 15.0, elapsed
    # Reads and listings give up the same way.
    with pytest.raises(UserError, match=r"^storage gs://.*: unreachable for \d+ s"):
        storage.listdir(gcs_prefix)


def test_missing_object_and_directory_are_not_retried(gcs_prefix, proxy, retry_seconds):
    retry_seconds(30)
    storage.write_text(storage.join(gcs_prefix, "d", "f.txt"), "x")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(gcs_prefix, "missing.txt"))
    with pytest.raises(IsADirectoryError):
        storage.open_read(storage.join(gcs_prefix, "d"))
    with pytest.raises(FileNotFoundError):
        storage.download_dir(storage.join(gcs_prefix, "nope"), "/nonexistent-never-created")
    assert time.monotonic() - start < 1.0


def test_retry_settings_and_transient_errors(monkeypatch, retry_seconds):
    monkeypatch.delenv(storage.RETRY_ENV, raising=False)
    assert storage.retry_seconds() == storage.DEFAULT_RETRY_S == 300
    monkeypatch.setenv(storage.RETRY_ENV, "42.5")
    assert storage.retry_seconds() == 42.5
    assert retry_seconds(7) is None and storage.retry_seconds() == 7
    assert retry_seconds(None) == 7 and storage.retry_seconds() == 42.5
    monkeypatch.setenv(storage.RETRY_ENV, "soon")
    with pytest.raises(UserError, match=storage.RETRY_ENV):
        storage.retry_seconds()
    with pytest.raises(ValueError):
        retry_seconds(-1)

    exhausted = OSError(
        "google::cloud::Status(UNAVAILABLE: Retry policy exhausted, with a last message of PerformWork() - "
        "CURL error [7]=Could not connect to server error_info={reason=, domain=, metadata={}})"
    )
    assert storage.is_transient(exhausted)
    assert (
        storage._cause(exhausted) == "OSError: UNAVAILABLE: PerformWork() - CURL error [7]=Could not connect to server"
    )
    for transient in (
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError("google::cloud::Status(INTERNAL: Received HTTP status code: 500)"),
        OSError("google::cloud::Status(DEADLINE_EXCEEDED: ...)"),
        OSError("Received HTTP status code: 503"),
    ):
        assert storage.is_transient(transient), transient
    for permanent in (
        FileNotFoundError(2, "google::cloud::Status(NOT_FOUND: Permanent error ...)"),
        IsADirectoryError("gs://b/d"),
        PermissionError(13, "denied"),
        OSError("google::cloud::Status(PERMISSION_DENIED: Permanent error, with a last message of 403)"),
        OSError("google::cloud::Status(UNAUTHENTICATED: ...)"),
        ValueError("bad"),
        UserError("bucket gs://x does not exist"),
    ):
        assert not storage.is_transient(permanent), permanent


def test_local_paths_are_not_wrapped(tmp_path, retry_seconds):
    retry_seconds(30)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing"))
    storage.write_text(str(tmp_path / "a" / "b.txt"), "x")
    assert storage.read_text(str(tmp_path / "a" / "b.txt")) == "x"
    assert list(storage.walk_files(str(tmp_path / "a"))) == ["b.txt"]
    storage.check_bucket(str(tmp_path / "anything"))  # local: nothing to check
    assert time.monotonic() - start < 1.0


# -- (c) missing bucket ----------------------------------------------------------------------


def test_missing_bucket_is_a_user_error_and_never_created(gcs_emulator, monkeypatch):
    # A fresh proxy port gives a fresh pyarrow filesystem, built while a project is known: with
    # one, pyarrow's create_dir(recursive=True) would create the missing bucket.
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    expected = f"bucket gs://{MISSING_BUCKET} does not exist (or is not visible to this account)"
    with ProxyProcess(gcs_emulator.port) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.host)
        with pytest.raises(UserError) as info:
            storage.check_bucket(f"gs://{MISSING_BUCKET}/a")
        assert str(info.value) == expected
        with pytest.raises(UserError) as info:
            storage.makedirs(f"gs://{MISSING_BUCKET}/a")
        assert str(info.value) == expected
        with pytest.raises(UserError, match="does not exist"):
            storage.makedirs(f"gs://{MISSING_BUCKET}")
        storage.check_bucket(f"{gcs_emulator.root}/some/prefix")  # the existing bucket passes
        storage.check_bucket(gcs_emulator.root)
    assert MISSING_BUCKET not in emulator_buckets(gcs_emulator)
    assert gcs_emulator.bucket in emulator_buckets(gcs_emulator)


# -- (b) end to end ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_survives_a_30_s_outage(gcs_emulator, repo_root, tmp_path):
    """A single-process run on gs:// keeps going through a 30 s outage after its first epoch."""
    outage_s = 30.0
    prefix = f"gs://{gcs_emulator.bucket}/{uuid.uuid4().hex}"
    history_uri = f"{prefix}/r/history.csv"
    log_path = tmp_path / "train.log"
    with ProxyProcess(gcs_emulator.port) as proxy, open(log_path, "w+") as log:
        env = dict(os.environ, STORAGE_EMULATOR_HOST=proxy.host, FER_DIST_STORAGE_RETRY_S="120")
        cmd = [sys.executable, "jobs/train.py", "--preset", "smoke", "--storage", prefix, "--name", "r", "--quiet"]
        proc = subprocess.Popen(
            [*cmd, "--set", "epochs=4"], cwd=repo_root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 600
            while emulator_get(gcs_emulator, history_uri) is None:
                assert proc.poll() is None, f"exited {proc.returncode} before writing history.csv"
                assert time.monotonic() < deadline, "no history.csv after 600 s"
                time.sleep(0.1)
            first = emulator_get(gcs_emulator, history_uri)
            proxy.stop()
            stopped = time.monotonic()
            time.sleep(outage_s)
            alive_through_outage = proc.poll() is None
            during = emulator_get(gcs_emulator, history_uri)  # nothing got through meanwhile
            before = proxy.connections
            proxy.start()
            rc = proc.wait(timeout=600)
            finished = time.monotonic()
            after = proxy.connections
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
    print(f"outage after epoch 1; run finished {finished - stopped - outage_s:.1f} s after the restart")
    assert rc == 0, output[-6000:]
    assert alive_through_outage, output[-6000:]  # it waited instead of dying
    assert after > before  # and talked to the bucket again afterwards
    assert finished - stopped >= outage_s
    assert "Traceback" not in output, output[-6000:]
    rows = list(csv.DictReader(io.StringIO(emulator_get(gcs_emulator, history_uri).decode())))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4], rows
    assert during == first
