"""Exclusive creation and run leases, on local paths and `gs://` alike.

    if not create_exclusive(storage.join(run_dir, "run.json"), payload_with_nonce):
        raise UserError("run ... already exists")           # someone else created it first

    with acquire_lease(run_dir, owner="host:pid"):           # only one `--resume` at a time
        train(...)

`create_exclusive` creates a file or object only if it does not exist yet, atomically:
locally `O_CREAT|O_EXCL`, on Cloud Storage an upload with `ifGenerationMatch=0`. Two
runs started together with the same name thus never both "create" it.

`acquire_lease` makes sure that at most one live process trains a run: a run holds its lease
from creation to exit (and a search likewise), so a `--resume` of a live run is refused:

- locally an OS lock (`flock`) on `<run_dir>/.lease`, which the kernel drops when its
  process dies, even when killed;
- on `gs://` an object `<run_dir>/.lease` holding `{owner, nonce, expires_at}`, created
  with `ifGenerationMatch=0` (or replacing an expired lease with `ifGenerationMatch=<its
  generation>`), renewed every `RENEW_S` seconds by a daemon thread and expiring
  `expire_seconds()` after its last renewal (longer than the storage retry budget, so a run
  that rides out an outage as designed keeps it): a process killed with SIGKILL stops
  renewing and its lease expires. A second process finding a live lease waits (one log line) for
  it to expire, then takes it; it fails with `UserError` only if the lease is still being
  renewed after that wait.

Expiry is judged two ways, either sufficing: by the holder's `expires_at` on the local
clock (a lease left long ago is taken at once), and by the waiter's own monotonic clock,
a lease whose generation has not changed for `expire_seconds()` being dead (so a holder
whose clock runs ahead cannot keep a lease alive forever).

A lease fences its writers (`Lease.fence()`, `Fence`): before each write into the run,
`storage` asks the fence, which reads the lease record and raises `LeaseLost` (a UserError:
one `error:` line, exit 2) once the record holds another holder's nonce, or once the holder's
own renewals found it taken. Ray workers, which write for the driver that holds the lease,
get a `Fence` of the same record and nonce.

The intervals are module constants, read at each call, so tests can shrink them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid

from fer_dist import storage
from fer_dist.errors import UserError

log = logging.getLogger(__name__)

RENEW_S = 30.0  # a gs:// lease is renewed this often...
EXPIRE_S: float | None = None  # ...and expires this long after its last renewal (None: `expire_seconds()`)
MIN_EXPIRE_S = 120.0
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
    """Retries transient errors (429, 5xx, connection errors) for `deadline` seconds: by default
    the storage retry budget, cut at a pending preemption's deadline (`storage`'s, the same)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(storage.effective_retry_seconds() if deadline is None else deadline)


@contextlib.contextmanager
def _gcs_errors(uri: str):
    """A Cloud Storage failure past its retries (an outage, a denied bucket) as one UserError
    naming `uri`, like `storage`'s."""
    from google.api_core import exceptions

    try:
        yield
    except (exceptions.GoogleAPICallError, exceptions.RetryError) as e:
        text = " ".join(str(e).split())[:200]
        raise UserError(
            f"storage {uri}: {type(e).__name__}: {text}; the run's last complete checkpoint stays resumable"
        ) from None


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
    deadline = time.monotonic() + storage.effective_retry_seconds()
    while True:
        if _put(uri, data, 0, retry) is not None:
            return True
        if _read(uri, retry) is not None or time.monotonic() > deadline:
            return False
        # it existed at the upload but was deleted since: try again


# -- local files -----------------------------------------------------------------------


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _create_excl(path: str, data: bytes) -> bool:
    """`O_CREAT|O_EXCL` (where hard links are not to be had): exclusive, written in place."""
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


def _create_exclusive_local(path: str, data: bytes) -> bool:
    """Written whole under a temporary name, then linked to `path` (`link` fails if it exists):
    readers never see it half-written, and of two creators exactly one wins."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if os.path.lexists(path):
        return False
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            return _create_excl(path, data)  # gcsfuse, SMB, exFAT: no hard links
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Creates `uri` holding `data` only if it does not exist yet.

    True if this call created it, False if it already existed (its content is unchanged).
    Put a random nonce in `data`: on `gs://`, a request retried after a lost response
    finds the object already there, and it is recognised as ours by its content.
    """
    uri = str(uri)
    if storage.is_gcs(uri):
        with _gcs_errors(uri):
            return _create_exclusive_gcs(uri, bytes(data))
    path = storage.filesystem(uri)[1]
    with storage.os_errors(path):
        return _create_exclusive_local(path, bytes(data))


# -- leases ----------------------------------------------------------------------------


def default_owner() -> str:
    """`host:pid`, to name the holder of a lease in messages."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


LEASE_ENV = "FER_DIST_LEASE_S"


def expire_seconds() -> float:
    """How long a gs:// lease lives after its last renewal: `EXPIRE_S` when set, else
    `$FER_DIST_LEASE_S`, else the storage retry budget plus two renewals (at least `MIN_EXPIRE_S`)."""
    if EXPIRE_S is not None:
        return float(EXPIRE_S)
    text = os.environ.get(LEASE_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise UserError(f"{LEASE_ENV}={text!r}: expected a number of seconds > 0")
        return value
    return max(MIN_EXPIRE_S, storage.retry_seconds() + 2 * RENEW_S)


def renew_seconds() -> float:
    """How often a held gs:// lease is renewed: `RENEW_S`, at most a quarter of its life."""
    return RENEW_S if EXPIRE_S is not None else min(RENEW_S, expire_seconds() / 4)


class LeaseLost(UserError):
    """This process may no longer write into the run: another process holds its lease."""


@dataclasses.dataclass(frozen=True)
class Fence:
    """What a writer of a run checks before each write: that the run's lease record (`uri`)
    still holds the lease's `nonce`. Picklable: Ray workers get the driver's."""

    run_dir: str
    uri: str
    nonce: str

    def check(self) -> None:
        """Raises LeaseLost when the lease is no longer this one. On gs:// the record is read
        with `_read` (a generation and its content in one consistent pair, looked up again when
        the holder's renewal replaced it between the two requests): a plain read racing a
        renewal could see no record and fence a healthy run (once in CI, under load, with a
        4 s lease renewed every second)."""
        try:
            record = _parse_lease(_current_record(self.uri))
        except FileNotFoundError:
            record = {}
        if record.get("nonce") != self.nonce:
            holder = record.get("owner") or "no process (its lease was released or removed)"
            raise LeaseLost(
                f"run {self.run_dir}: this process lost the run's lease to {holder}; it stops without writing "
                "more (the run's last complete checkpoint stays resumable)"
            )


class Lease:
    """A held lease on a run; `release()` it, or use it as a context manager."""

    def __init__(self, run_dir: str, uri: str, owner: str, nonce: str = ""):
        self.run_dir = run_dir
        self.uri = uri  # the lease file / object
        self.owner = owner
        self.nonce = nonce
        self._released = False

    def fence(self) -> Fence:
        return Fence(self.run_dir, self.uri, self.nonce)

    def check(self) -> None:
        """Raises LeaseLost when this lease was lost (the fence of this process's own writes)."""
        if self.lost:
            raise LeaseLost(
                f"run {self.run_dir}: this process lost the run's lease (its renewals came too late); it stops "
                "without writing more (the run's last complete checkpoint stays resumable)"
            )
        self.fence().check()

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
    def __init__(self, run_dir: str, path: str, owner: str, fd: int, nonce: str):
        super().__init__(run_dir, path, owner, nonce)
        self._fd = fd

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            # Unlink while still locked: a waiter that opened this file re-checks, after
            # locking it, that the path is still this very file (see `_acquire_local`).
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.uri).st_ino == os.fstat(self._fd).st_ino:  # not a file another holder made since
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
    with storage.os_errors(os.path.join(run_path, LEASE_NAME)):
        return _lock_local(run_dir, run_path, owner)


def _lock_local(run_dir: str, run_path: str, owner: str) -> Lease:
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
            raise UserError(f"run {run_dir} is in use by {_holder_of(path)}: it is training it now") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and unlinked) it meanwhile: lock the new one
            os.close(fd)
            continue
        nonce = uuid.uuid4().hex
        record = {"owner": owner, "pid": os.getpid(), "nonce": nonce, "acquired_at": _utc(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        return _LocalLease(run_dir, path, owner, fd, nonce)


class _GcsLease(Lease):
    def __init__(self, run_dir: str, uri: str, owner: str, nonce: str, data: bytes, generation: int):
        super().__init__(run_dir, uri, owner, nonce)
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
        """Pushes the expiry `expire_seconds()` ahead; False if the lease was lost."""
        with self._lock:
            if self._stop.is_set() or self._lost.is_set():
                return not self._lost.is_set()
            data = _lease_record(self.owner, self.nonce)
            generation = _put(self.uri, data, self._generation, _retry(max(renew_seconds(), 1.0)))
            if generation is None:
                self._lost.set()
                log.error("lease %s was taken by another process; this run is no longer exclusive", self.uri)
                return False
            self._data, self._generation = data, generation
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(renew_seconds()):
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
        except Exception as e:  # an outage past its retries: the lease expires by itself
            log.warning("could not release lease %s (%s); it expires by itself", self.uri, type(e).__name__)
        finally:
            self._thread.join(timeout=5)


def _lease_record(owner: str, nonce: str) -> bytes:
    now = time.time()
    record = {"owner": owner, "nonce": nonce, "renewed_at": now, "expires_at": now + expire_seconds()}
    return json.dumps(record).encode("utf-8")


def _current_record(uri: str) -> bytes:
    """The lease record's bytes as they are now; FileNotFoundError when there is none."""
    if not storage.is_gcs(uri):
        return storage.read_bytes(uri)
    found = _read(uri, _retry())
    if found is None:
        raise FileNotFoundError(uri)
    return found[0]


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
    expire_s = expire_seconds()
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
                f"run {run_dir} is in use by {holder}: it is training it now (lease renewed {renewed:.0f} s ago)"
            )
        if not waiting:
            waiting = True
            log.warning(
                "run %s is in use by %s (lease until %s); waiting up to %.0f s for it to expire",
                run_dir,
                holder,
                _utc(expires_at),
                deadline - mono,
            )
        time.sleep(max(0.01, min(POLL_S, deadline - mono, expires_at - now + 0.01)))


def acquire_lease(run_dir_uri: str, owner: str | None = None) -> Lease:
    """The lease of a run directory, held while it trains; raises UserError if someone holds it.

    Locally a held lease fails at once (an OS lock dies with its process). On `gs://` a
    live lease is waited for, up to `expire_seconds()` (plus one poll), since its holder
    may be dead: it is taken as soon as it expires.
    """
    run_dir = str(run_dir_uri).rstrip("/") or str(run_dir_uri)
    owner = owner or default_owner()
    if storage.is_gcs(run_dir):
        with _gcs_errors(storage.join(run_dir, LEASE_NAME)):
            return _acquire_gcs(run_dir, owner)
    return _acquire_local(run_dir, owner)


__all__ = [
    "EXPIRE_S",
    "FILE_MODE",
    "Fence",
    "LeaseLost",
    "expire_seconds",
    "LEASE_NAME",
    "POLL_S",
    "RENEW_S",
    "Lease",
    "acquire_lease",
    "create_exclusive",
    "default_owner",
]
