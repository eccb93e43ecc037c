"""Exclusive creation and run leases, on local paths and `gs://` alike.

    if not create_exclusive(storage.join(run_dir, "run.json"), payload_with_nonce):
        raise UserError("run ... already exists")           # someone else created it first

    with acquire_lease(run_dir, owner="host:pid"):           # only one `--resume` at a time
        train(...)

`create_exclusive` creates a file or object only if it does not exist yet, atomically:
locally `O_CREAT|O_EXCL`, on Cloud Storage an upload with `ifGenerationMatch=0`. Two
runs started together with the same name thus never both "create" it.

`acquire_lease` makes sure that at most one live process resumes a run:

- locally an OS lock (`flock`) on `<run_dir>/.lease`, which the kernel drops when its
  process dies, even when killed;
- on `gs://` an object `<run_dir>/.lease` holding `{owner, nonce, expires_at}`, created
  with `ifGenerationMatch=0` (or replacing an expired lease with `ifGenerationMatch=<its
  generation>`), renewed every `RENEW_S` seconds by a daemon thread and expiring
  `EXPIRE_S` seconds after its last renewal: a process killed with SIGKILL stops renewing
  and its lease expires. A second process finding a live lease waits (one log line) for
  it to expire, then takes it; it fails with `UserError` only if the lease is still being
  renewed after that wait.

Expiry is judged two ways, either sufficing: by the holder's `expires_at` on the local
clock (a lease left long ago is taken at once), and by the waiter's own monotonic clock,
a lease whose generation has not changed for `EXPIRE_S` seconds being dead (so a holder
whose clock runs ahead cannot keep a lease alive forever).

The intervals are module constants, read at each call, so tests can shrink them.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from fer_dist import storage
from fer_dist.errors import UserError

log = logging.getLogger(__name__)

RETRY_DEADLINE_S = 120.0  # transient Cloud Storage errors are retried for this long
RENEW_S = 30.0  # a gs:// lease is renewed this often...
EXPIRE_S = 120.0  # ...and expires this long after its last renewal
POLL_S = 2.0  # how often a waiter looks at a live lease again
LEASE_NAME = ".lease"
FILE_MODE = 0o644


# -- Cloud Storage ---------------------------------------------------------------------

_clients = threading.local()


def _client():
    """A google-cloud-storage client of this process and thread (the emulator's when set).

    One per thread and process: a client's HTTP session is not to be shared across a fork,
    and threads (the lease renewer, racing callers) get their own.
    """
    from google.cloud import storage as gcs

    host = os.environ.get("STORAGE_EMULATOR_HOST") or None
    key = (os.getpid(), host)
    cached = getattr(_clients, "value", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    if host:
        from google.auth.credentials import AnonymousCredentials

        client = gcs.Client(project="test", credentials=AnonymousCredentials())
    else:
        client = gcs.Client()
    _clients.value = (key, client)
    return client


def _retry(deadline: float | None = None):
    """Retries transient errors (429, 5xx, connection errors) for `deadline` seconds."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S if deadline is None else deadline)


def _blob(uri: str):
    bucket, _, name = uri[len(storage.GCS_SCHEME) :].partition("/")
    name = name.rstrip("/")
    if not bucket or not name:
        raise ValueError(f"not an object URI: {uri}")
    return _client().bucket(bucket).blob(name)


def _read(uri: str, retry) -> tuple[bytes, int] | None:
    """(content, generation) of an object, None if it does not exist."""
    from google.api_core import exceptions

    blob = _blob(uri)
    for _ in range(10):
        meta = blob.bucket.get_blob(blob.name, retry=retry)
        if meta is None:
            return None
        generation = int(meta.generation)  # the download may reset it from its headers
        try:
            data = meta.download_as_bytes(if_generation_match=generation, retry=retry)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            continue  # replaced or deleted between the two requests: look again
        return data, generation
    raise RuntimeError(f"{uri} keeps changing while being read")


def _put(uri: str, data: bytes, if_generation_match: int, retry) -> int | None:
    """Uploads `data` if the object's generation is `if_generation_match` (0: absent).

    Returns the new generation, or None when the precondition failed. A 412 on an
    object holding exactly `data` is our own upload, retried after a lost response.
    """
    from google.api_core import exceptions

    blob = _blob(uri)
    try:
        blob.upload_from_string(data, if_generation_match=if_generation_match, retry=retry)
        return int(blob.generation)
    except exceptions.PreconditionFailed:
        current = _read(uri, retry)
        if current is not None and current[0] == data:
            return current[1]
        return None


def _create_exclusive_gcs(uri: str, data: bytes) -> bool:
    retry = _retry()
    deadline = time.monotonic() + RETRY_DEADLINE_S
    while True:
        if _put(uri, data, 0, retry) is not None:
            return True
        if _read(uri, retry) is not None or time.monotonic() > deadline:
            return False
        # it existed at the upload but was deleted since: try again


# -- local files -----------------------------------------------------------------------


def _create_exclusive_local(path: str, data: bytes) -> bool:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # never leave a half-written file behind
        raise
    return True


def create_exclusive(uri: str, data: bytes) -> bool:
    """Creates `uri` holding `data` only if it does not exist yet.

    True if this call created it, False if it already existed (its content is unchanged).
    Put a random nonce in `data`: on `gs://`, a request retried after a lost response
    finds the object already there, and it is recognised as ours by its content.
    """
    uri = str(uri)
    if storage.is_gcs(uri):
        return _create_exclusive_gcs(uri, bytes(data))
    return _create_exclusive_local(storage.filesystem(uri)[1], bytes(data))


# -- leases ----------------------------------------------------------------------------


def default_owner() -> str:
    """`host:pid`, to name the holder of a lease in messages."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Lease:
    """A held lease on a run; `release()` it, or use it as a context manager."""

    def __init__(self, run_dir: str, uri: str, owner: str):
        self.run_dir = run_dir
        self.uri = uri  # the lease file / object
        self.owner = owner
        self._released = False

    @property
    def lost(self) -> bool:
        """True once another process has taken the lease (gs://: renewals came too late)."""
        return False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Gives the lease up. Idempotent."""
        self._released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, owner={self.owner!r})"


class _LocalLease(Lease):
    def __init__(self, run_dir: str, path: str, owner: str, fd: int):
        super().__init__(run_dir, path, owner)
        self._fd = fd

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            # Unlink while still locked: a waiter that opened this file re-checks, after
            # locking it, that the path is still this very file (see `_acquire_local`).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uri)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)


def _holder_of(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return str(json.load(f).get("owner") or "another process")
    except (OSError, ValueError, AttributeError):
        return "another process"


def _acquire_local(run_dir: str, owner: str) -> Lease:
    run_path = storage.filesystem(run_dir)[1]
    path = os.path.join(run_path, LEASE_NAME)
    os.makedirs(run_path, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise UserError(f"--resume: run {run_dir} is already being resumed by {_holder_of(path)}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and unlinked) it meanwhile: lock the new one
            os.close(fd)
            continue
        record = {"owner": owner, "pid": os.getpid(), "acquired_at": _utc(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        return _LocalLease(run_dir, path, owner, fd)


class _GcsLease(Lease):
    def __init__(self, run_dir: str, uri: str, owner: str, nonce: str, data: bytes, generation: int):
        super().__init__(run_dir, uri, owner)
        self.nonce = nonce
        self._data = data
        self._generation = generation
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-renewer {uri}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def generation(self) -> int:
        return self._generation

    def renew(self) -> bool:
        """Pushes the expiry `EXPIRE_S` seconds ahead; False if the lease was lost."""
        with self._lock:
            if self._stop.is_set() or self._lost.is_set():
                return not self._lost.is_set()
            data = _lease_record(self.owner, self.nonce)
            generation = _put(self.uri, data, self._generation, _retry(max(RENEW_S, 1.0)))
            if generation is None:
                self._lost.set()
                log.error("lease %s was taken by another process; this run is no longer exclusive", self.uri)
                return False
            self._data, self._generation = data, generation
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if not self.renew():
                    return
            except Exception as e:  # transient errors past their retries: try again later
                log.warning("could not renew lease %s: %s", self.uri, e)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop.set()
        from google.api_core import exceptions

        try:
            with self._lock:  # waits for a renewal in progress
                if not self._lost.is_set():
                    _blob(self.uri).delete(if_generation_match=self._generation, retry=_retry())
        except exceptions.NotFound:
            pass  # deleted by a retried request of ours
        except exceptions.PreconditionFailed:
            log.warning("lease %s was taken by another process before its release", self.uri)
        finally:
            self._thread.join(timeout=5)


def _lease_record(owner: str, nonce: str) -> bytes:
    now = time.time()
    record = {"owner": owner, "nonce": nonce, "renewed_at": now, "expires_at": now + EXPIRE_S}
    return json.dumps(record).encode("utf-8")


def _parse_lease(data: bytes) -> dict:
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _number(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _acquire_gcs(run_dir: str, owner: str) -> Lease:
    uri = storage.join(run_dir, LEASE_NAME)
    nonce = uuid.uuid4().hex
    retry = _retry()
    expire_s = EXPIRE_S
    deadline = time.monotonic() + expire_s + POLL_S  # long enough for any dead lease to expire
    seen: tuple[int, float] | None = None  # (generation, monotonic time it was first seen)
    waiting = False
    while True:
        current = _read(uri, retry)
        if current is None:
            data = _lease_record(owner, nonce)
            generation = _put(uri, data, 0, retry)
            if generation is not None:
                return _GcsLease(run_dir, uri, owner, nonce, data, generation)
            continue  # someone created it first: look at theirs
        content, generation = current
        record = _parse_lease(content)
        now, mono = time.time(), time.monotonic()
        if seen is None or seen[0] != generation:
            seen = (generation, mono)
        expires_at = _number(record.get("expires_at"), 0.0)
        if now >= expires_at or mono - seen[1] >= expire_s:
            data = _lease_record(owner, nonce)
            taken = _put(uri, data, generation, retry)
            if taken is not None:
                if record:
                    log.info("took over the expired lease of run %s from %s", run_dir, record.get("owner", "?"))
                return _GcsLease(run_dir, uri, owner, nonce, data, taken)
            continue  # renewed or taken meanwhile
        holder = str(record.get("owner") or "another process")
        if mono >= deadline:
            renewed = max(0.0, now - _number(record.get("renewed_at"), expires_at - expire_s))
            raise UserError(
                f"--resume: run {run_dir} is already being resumed by {holder} (lease renewed {renewed:.0f} s ago)"
            )
        if not waiting:
            waiting = True
            log.warning(
                "run %s is being resumed by %s (lease until %s); waiting up to %.0f s for it to expire",
                run_dir,
                holder,
                _utc(expires_at),
                deadline - mono,
            )
        time.sleep(max(0.01, min(POLL_S, deadline - mono, expires_at - now + 0.01)))


def acquire_lease(run_dir_uri: str, owner: str | None = None) -> Lease:
    """The lease of a run directory, for resuming it; raises UserError if someone holds it.

    Locally a held lease fails at once (an OS lock dies with its process). On `gs://` a
    live lease is waited for, up to `EXPIRE_S` seconds (plus one poll), since its holder
    may be dead: it is taken as soon as it expires.
    """
    run_dir = str(run_dir_uri).rstrip("/") or str(run_dir_uri)
    owner = owner or default_owner()
    if storage.is_gcs(run_dir):
        return _acquire_gcs(run_dir, owner)
    return _acquire_local(run_dir, owner)


__all__ = [
    "EXPIRE_S",
    "FILE_MODE",
    "LEASE_NAME",
    "POLL_S",
    "RENEW_S",
    "RETRY_DEADLINE_S",
    "Lease",
    "acquire_lease",
    "create_exclusive",
    "default_owner",
]
