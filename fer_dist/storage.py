"""Storage URIs -> filesystems: local paths, `gs://bucket/prefix`, and the GCS emulator.

    python jobs/train.py --storage gs://BUCKET/fer/runs     # checkpoints and results to GCS

A URI is either a local path (relative or absolute, or `file://...`) or `gs://bucket/key`.
`gs://` goes through `pyarrow.fs.GcsFileSystem`: Application Default Credentials in the
cloud, or, when `STORAGE_EMULATOR_HOST` is set (`http://127.0.0.1:9023`), anonymous HTTP
to gcp-storage-emulator, so the same code runs in tests and in production. Ray gets the
very same filesystem object (`filesystem(uri)`) for `RunConfig(storage_filesystem=...)`.

Writes are atomic from a reader's point of view: a local file is written to a temporary
name and renamed; a GCS object appears whole when its upload finishes.

Every `gs://` call here retries transient failures (connection refused/reset, timeouts,
5xx, pyarrow's "Retry policy exhausted") with exponential backoff and jitter (1 s doubling
to 30 s) for `retry_seconds()` in all: 300 s, or `FER_DIST_STORAGE_RETRY_S`, or
`set_retry_seconds(s)`. While waiting it logs one line a minute; past the limit it raises
a one-line `UserError` naming the URI. Missing objects, directories-for-files and
permission errors are raised at once. Local paths are never retried. The project never
creates a bucket: `check_bucket(uri)` says clearly when one is missing, and `makedirs`
calls it first.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import io
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pyarrow.fs as pafs

from fer_dist.errors import UserError

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
RETRY_ENV = "FER_DIST_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAXIMUM_S = 30.0
LOG_EVERY_S = 60.0
# pyarrow's own (backoff-less) retry limit, set on every GcsFileSystem (google-cloud-cpp's default
# is 15 minutes). On the one this module's calls use: short, so that the loop here,
# `FER_DIST_STORAGE_RETRY_S` and a preemption deadline stay in control. On the one Ray and Tune
# get for their own records (no loop of ours around their calls): the retry budget itself.
INNER_RETRY_S = 3

_T = TypeVar("_T")


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers run in other directories); gs:// unchanged."""
    uri = str(uri)
    if is_gcs(uri):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Joins path parts, keeping a `gs://` scheme intact."""
    uri = str(uri)
    if is_gcs(uri):
        return GCS_SCHEME + posixpath.join(uri[len(GCS_SCHEME) :], *parts)
    return os.path.join(uri, *parts)


def _emulator_endpoint(emulator_host: str) -> tuple[str, str]:
    """(scheme, "host:port") of `STORAGE_EMULATOR_HOST`, given with or without a scheme."""
    host = emulator_host.strip()
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
    return (scheme or "http"), rest.split("/", 1)[0]


@functools.cache
def _gcs(emulator_host: str | None, retry_limit_s: float) -> pafs.GcsFileSystem:
    """A GCS filesystem (the emulator's when `emulator_host` is set) whose own retries stop
    after `retry_limit_s`, in production as under the emulator."""
    limit = datetime.timedelta(seconds=retry_limit_s)
    if emulator_host:
        scheme, endpoint = _emulator_endpoint(emulator_host)
        return pafs.GcsFileSystem(anonymous=True, scheme=scheme, endpoint_override=endpoint, retry_time_limit=limit)
    return pafs.GcsFileSystem(retry_time_limit=limit)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI, for callers that use pyarrow directly: Ray's
    `storage_filesystem`, where Ray and Tune keep their own records (checkpoints never go there).
    On gs:// pyarrow itself retries for the retry budget (`retry_seconds()`), since no loop of
    ours wraps those calls. The path has no scheme."""
    return retried_filesystem(uri, inner_retry_s=max(float(INNER_RETRY_S), retry_seconds()))


def retried_filesystem(uri: str, inner_retry_s: float = INNER_RETRY_S) -> tuple[pafs.FileSystem, str]:
    """The filesystem behind the functions of this module, which wrap every gs:// call in their
    retry loop (`_retrying`): pyarrow's own retry is short (`INNER_RETRY_S`)."""
    uri = str(uri)
    if is_gcs(uri):
        host = os.environ.get("STORAGE_EMULATOR_HOST") or None
        return _gcs(host, float(inner_retry_s)), uri[len(GCS_SCHEME) :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


# -- the fence: a run's writes stop once its lease is another process's -------------------

_fences: dict[str, Callable[[], None]] = {}


def fence(prefix: str, check: Callable[[], None] | None) -> None:
    """Every write or delete below `prefix` calls `check()` first (it raises to refuse:
    `exclusive.LeaseLost`); None removes the fence."""
    prefix = str(prefix).rstrip("/")
    if check is None:
        _fences.pop(prefix, None)
    else:
        _fences[prefix] = check


def check_fence(uri: str) -> None:
    """Calls the fence of every prefix that `uri` lies below (see `fence`)."""
    uri = str(uri)
    for prefix, check in list(_fences.items()):
        if uri == prefix or uri.startswith(prefix + "/"):
            check()


# -- retries -----------------------------------------------------------------------------

_retry_s_override: float | None = None
_state = threading.local()  # .active: inside a retried call (nested calls do not retry again)

# google-cloud-cpp status codes (as pyarrow reports them) worth another try.
_TRANSIENT_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED"}
_STATUS_CODE = re.compile(r"Status\(([A-Z_]+)\b")
_TRANSIENT_TEXT = re.compile(
    r"Retry policy exhausted|could not connect|connection (refused|reset|aborted)|timed? ?out"
    r"|HTTP status code:? (5\d\d|429)",
    re.IGNORECASE,
)
_NOT_RETRIED = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError)


def retry_seconds() -> float:
    """How long a gs:// call retries transient failures: `set_retry_seconds`, else
    `$FER_DIST_STORAGE_RETRY_S`, else 300 s."""
    if _retry_s_override is not None:
        return _retry_s_override
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise UserError(f"{RETRY_ENV}={text!r}: expected a number of seconds >= 0")
    return value


_not_after: list = [None]  # time.monotonic() past which no retry waits: a pending preemption's deadline


def retry_not_after(seconds_from_now: float | None) -> None:
    """Never retry past `seconds_from_now` (a preemption notice: a checkpoint that cannot be
    written before the VM goes is not worth waiting for); None lifts the cap."""
    _not_after[0] = None if seconds_from_now is None else time.monotonic() + max(0.0, seconds_from_now)


def effective_retry_seconds() -> float:
    """`retry_seconds()`, cut to what is left before a pending preemption deadline."""
    total = retry_seconds()
    if _not_after[0] is not None:
        total = min(total, max(0.0, _not_after[0] - time.monotonic()))
    return total


def set_retry_seconds(seconds: float | None) -> float | None:
    """Sets this process's retry total (None: back to the environment/default); returns the
    previous setting, for restoring it."""
    global _retry_s_override
    if seconds is not None and not float(seconds) >= 0:
        raise ValueError(f"retry seconds must be >= 0, got {seconds!r}")
    previous, _retry_s_override = _retry_s_override, (None if seconds is None else float(seconds))
    return previous


def is_transient(exc: BaseException) -> bool:
    """Whether a storage failure may go away by itself (network, timeouts, 5xx)."""
    if isinstance(exc, _NOT_RETRIED) or not isinstance(exc, OSError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    if "Retry policy exhausted" in text:  # google-cloud-cpp gave up on an error it retries
        return True
    code = _STATUS_CODE.search(text)
    if code:
        return code.group(1) in _TRANSIENT_CODES
    return bool(_TRANSIENT_TEXT.search(text))


def _cause(exc: BaseException) -> str:
    """`Type: message` on one short line (google-cloud-cpp's status reduced to its gist)."""
    text = re.sub(r"^\[Errno \d+\] ", "", str(exc))
    status = re.search(r"Status\(([A-Z_]+): (.*?)(?: error_info=\{|\)\.? Detail:|\)$|$)", text, re.DOTALL)
    if status:
        code, message = status.groups()
        last = re.search(r"with a last message of (.*)", message, re.DOTALL)
        text = f"{code}: {last.group(1) if last else message}"
    text = " ".join(text.split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retrying(uri: str, call: Callable[[], _T]) -> _T:
    """`call()`, retried on transient failures with exponential backoff and jitter
    (google.api_core.retry) for `retry_seconds()` in all. Local URIs and calls nested in a
    retried call run once."""
    if not is_gcs(uri) or getattr(_state, "active", False):
        return call()
    from google.api_core import retry as gretry  # lazy: ~0.3 s of imports, only for gs://

    total = effective_retry_seconds()
    start = time.monotonic()
    deadline = start + total
    next_log = [start + LOG_EVERY_S]

    def sleeps() -> Iterator[float]:
        # Full jitter, 1 s doubling to 30 s; never past the deadline, so that the last
        # attempt comes at the deadline rather than up to 30 s before it.
        for delay in gretry.exponential_sleep_generator(BACKOFF_INITIAL_S, BACKOFF_MAXIMUM_S, multiplier=2.0):
            yield max(0.0, min(delay, deadline - time.monotonic()))

    def on_error(exc: Exception) -> None:
        now = time.monotonic()
        if now >= next_log[0]:
            log.warning(
                "storage: %s unreachable for %d s (%s); retrying until %d s",
                uri,
                round(now - start),
                _cause(exc),
                round(total),
            )
            while next_log[0] <= now:
                next_log[0] += LOG_EVERY_S

    def give_up(errors: list[Exception], reason, timeout: float | None) -> tuple[Exception, Exception | None]:
        last = errors[-1]
        if reason != gretry.RetryFailureReason.TIMEOUT:
            return last, last.__cause__
        waited = round(time.monotonic() - start)
        return (
            UserError(
                f"storage {uri}: unreachable for {waited} s ({_cause(last)}); "
                "the run's last complete checkpoint stays resumable with --resume"
            ),
            last,
        )

    def attempt() -> _T:
        _state.active = True
        try:
            return call()
        finally:
            _state.active = False

    return gretry.retry_target(
        attempt, is_transient, sleeps(), timeout=total, on_error=on_error, exception_factory=give_up
    )


def check_bucket(uri: str) -> None:
    """UserError if the bucket of a gs:// URI does not exist; nothing for local paths.

    A bucket whose metadata this account may not read (403) is taken as present: objects
    may still be writable (roles/storage.objectAdmin has no storage.buckets.get).
    """
    uri = str(uri)
    if not is_gcs(uri):
        return
    bucket = uri[len(GCS_SCHEME) :].split("/", 1)[0]
    if not bucket:
        raise UserError(f"{uri}: no bucket name (expected gs://BUCKET/prefix)")
    fs, _ = retried_filesystem(uri)
    try:
        found = _retrying(uri, lambda: fs.get_file_info(bucket).type != pafs.FileType.NotFound)
    except PermissionError:
        return
    except OSError as e:
        if "PERMISSION_DENIED" in str(e):
            return
        raise
    if not found:
        raise UserError(f"bucket gs://{bucket} does not exist (or is not visible to this account)")


def exists(uri: str) -> bool:
    fs, path = retried_filesystem(uri)
    return _retrying(uri, lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def is_dir(uri: str) -> bool:
    fs, path = retried_filesystem(uri)
    return _retrying(uri, lambda: fs.get_file_info(path).type == pafs.FileType.Directory)


def listdir(uri: str) -> list[str]:
    """Names (not paths) of the entries directly under `uri`, sorted; [] if it does not exist.

    On GCS, directories are virtual: a "directory" exists because objects are below it,
    with or without a `name/` marker object. pyarrow's non-recursive listing only shows
    marker objects (and gcp-storage-emulator not even those), so the GCS listing is
    recursive and keeps the first path component of every entry.
    """
    return _retrying(uri, lambda: _listdir(uri))


def _listdir(uri: str) -> list[str]:
    fs, path = retried_filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    if not is_gcs(uri):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return sorted(os.path.basename(i.path.rstrip("/")) for i in infos)
    base = path.rstrip("/") + "/"
    names = set()
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.path.startswith(base):
            name = info.path[len(base) :].strip("/").split("/", 1)[0]
            if name:
                names.add(name)
    return sorted(names)


def walk_files(uri: str) -> Iterator[str]:
    """Relative paths of every file below `uri` (on GCS listed whole, inside the retry)."""
    if not is_gcs(uri):
        return _walk_files(uri)
    return iter(_retrying(uri, lambda: list(_walk_files(uri))))


def _walk_files(uri: str) -> Iterator[str]:
    fs, path = retried_filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            yield posixpath.relpath(info.path, path) if is_gcs(uri) else os.path.relpath(info.path, path)


def file_stats(uri: str) -> tuple:
    """((relative path, size, modification time ns), ...) of every file below `uri`, sorted: one
    listing, to tell whether files changed since they were last read."""

    def stats() -> tuple:
        fs, path = retried_filesystem(uri)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return ()
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        return tuple(sorted((i.path[len(path) :], i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File))

    return _retrying(uri, stats)


def makedirs(uri: str) -> None:
    """Creates a directory and its parents. On GCS the bucket must exist (`check_bucket`):
    it is never created; below it, pyarrow's `name/` marker objects are."""
    fs, path = retried_filesystem(uri)
    if not is_gcs(uri):
        fs.create_dir(path, recursive=True)
        return
    check_bucket(uri)
    if "/" in path:  # never `create_dir(bucket)`: that would create a missing bucket
        _retrying(uri, lambda: fs.create_dir(path, recursive=True))


def open_read(uri: str):
    """A binary file object. Raises FileNotFoundError if absent.

    On GCS the object is read whole inside the retry and returned as `io.BytesIO`, so an
    outage in the middle of a read is retried too.
    """
    fs, path = retried_filesystem(uri)
    if is_gcs(uri):
        return io.BytesIO(_retrying(uri, lambda: _read_object(fs, path, uri)))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(uri)
    return open(path, "rb")


def _read_object(fs: pafs.FileSystem, path: str, uri: str) -> bytes:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(uri)
    with fs.open_input_file(path) as f:
        try:
            return f.read()
        except ValueError as e:  # pyarrow, mid-outage: "I/O operation on closed file" from a failed open
            raise ConnectionError(f"{uri}: read failed ({e})") from e


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    """Writes a whole file atomically (temp + rename locally; one upload on GCS), after the
    fence of its run (`fence`). A full disk or a denied write is a UserError naming the path."""
    check_fence(uri)
    fs, path = retried_filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        with os_errors(path):
            _write_local(path, data)
        return

    def upload() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    _retrying(uri, upload)


def _write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: others (a server) could not read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


@contextlib.contextmanager
def os_errors(path: str):
    """An OS failure a user can act on (a full disk, a quota, a read-only or denied path) becomes
    one UserError naming `path`; others propagate."""
    try:
        yield
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise
        raise UserError(
            f"{e.filename or path}: {_USER_ERRNOS[e.errno]} (nothing already written was changed)"
        ) from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_dir(local_dir: str, uri: str) -> None:
    """Copies a local directory's files to `uri` (created if needed); each file retried."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(uri, rel), f.read())


def download_dir(uri: str, local_dir: str) -> str:
    """Copies every file below `uri` into `local_dir`; returns `local_dir`. Each file retried; a
    full local disk is a UserError naming the file."""
    fs, path = retried_filesystem(uri)
    with os_errors(local_dir):
        if isinstance(fs, pafs.LocalFileSystem):
            shutil.copytree(path, local_dir, dirs_exist_ok=True)
            return local_dir
        if not is_dir(uri):
            raise FileNotFoundError(f"no such directory: {uri}")
        os.makedirs(local_dir, exist_ok=True)
        for rel in walk_files(uri):
            dst = os.path.join(local_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            data = read_bytes(join(uri, rel))
            with open(dst, "wb") as f:
                f.write(data)
    return local_dir


def delete_file(uri: str) -> None:
    """Deletes one file or object (fenced); nothing happens if it is absent."""
    check_fence(uri)
    fs, path = retried_filesystem(uri)

    def delete() -> None:
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)

    _retrying(uri, delete)


def delete_dir(uri: str) -> None:
    """Deletes a directory and everything below it; nothing happens if it is absent.

    On GCS this works whether or not the directory has `name/` marker objects
    (pyarrow's `delete_dir` alone fails with 404 on a marker-less, virtual directory).
    A retry starts over: what is already deleted is simply not listed again.
    """
    check_fence(uri)
    _retrying(uri, lambda: _delete_dir(uri))


def _delete_dir(uri: str) -> None:
    fs, path = retried_filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    if not is_gcs(uri):
        fs.delete_dir(path)
        return
    if "/" not in path:  # a bucket root: empty it entry by entry, never delete the bucket
        for name in _listdir(uri):
            child = join(uri, name)
            if fs.get_file_info(f"{path}/{name}").type == pafs.FileType.Directory:
                _delete_dir(child)
            else:
                fs.delete_file(f"{path}/{name}")
        return
    fs.delete_dir_contents(path, missing_dir_ok=True)
    if fs.get_file_info(path).type == pafs.FileType.Directory:  # only its marker is left
        fs.delete_dir(path)


def local_path(uri: str) -> str | None:
    """The local path of a local URI, None for remote ones."""
    if is_gcs(uri):
        return None
    return filesystem(uri)[1]
