"""Storage URIs -> filesystems: local paths, `gs://bucket/prefix`, and the GCS emulator.

    python jobs/train.py --storage gs://BUCKET/fer/runs     # checkpoints and results to GCS

A URI is either a local path (relative or absolute, or `file://...`) or `gs://bucket/key`.
`gs://` goes through `pyarrow.fs.GcsFileSystem`: Application Default Credentials in the
cloud, or, when `STORAGE_EMULATOR_HOST` is set (`http://127.0.0.1:9023`), anonymous HTTP
to gcp-storage-emulator, so the same code runs in tests and in production. Ray gets the
very same filesystem object (`filesystem(uri)`) for `RunConfig(storage_filesystem=...)`.

Writes are atomic from a reader's point of view: a local file is written to a temporary
name and renamed; a GCS object appears whole when its upload finishes.
"""

from __future__ import annotations

import datetime
import functools
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator

import pyarrow.fs as pafs

GCS_SCHEME = "gs://"


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
def _gcs(emulator_host: str | None) -> pafs.GcsFileSystem:
    if emulator_host:
        scheme, endpoint = _emulator_endpoint(emulator_host)
        return pafs.GcsFileSystem(
            anonymous=True,
            scheme=scheme,
            endpoint_override=endpoint,
            retry_time_limit=datetime.timedelta(seconds=10),
        )
    return pafs.GcsFileSystem()


def uri_of(fs_path: str, like: str) -> str:
    """The URI of a path inside the filesystem of `like` (e.g. a Ray checkpoint's `.path`)."""
    return GCS_SCHEME + fs_path.lstrip("/") if is_gcs(like) else fs_path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI. The path has no scheme."""
    uri = str(uri)
    if is_gcs(uri):
        return _gcs(os.environ.get("STORAGE_EMULATOR_HOST") or None), uri[len(GCS_SCHEME) :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(uri: str) -> list[str]:
    """Names (not paths) of the entries directly under `uri`, sorted; [] if it does not exist.

    On GCS, directories are virtual: a "directory" exists because objects are below it,
    with or without a `name/` marker object. pyarrow's non-recursive listing only shows
    marker objects (and gcp-storage-emulator not even those), so the GCS listing is
    recursive and keeps the first path component of every entry.
    """
    fs, path = filesystem(uri)
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
    """Relative paths of every file below `uri`."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            yield posixpath.relpath(info.path, path) if is_gcs(uri) else os.path.relpath(info.path, path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def open_read(uri: str):
    """A binary file object. Raises FileNotFoundError if absent."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return open(path, "rb")
    return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Writes a whole file atomically (temp + rename locally; one upload on GCS)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_dir(local_dir: str, uri: str) -> None:
    """Copies a local directory's files to `uri` (created if needed)."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(uri, rel), f.read())


def download_dir(uri: str, local_dir: str) -> str:
    """Copies every file below `uri` into `local_dir`; returns `local_dir`."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.copytree(path, local_dir, dirs_exist_ok=True)
        return local_dir
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such directory: {uri}")
    os.makedirs(local_dir, exist_ok=True)
    for rel in walk_files(uri):
        dst = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(read_bytes(join(uri, rel)))
    return local_dir


def delete_dir(uri: str) -> None:
    """Deletes a directory and everything below it; nothing happens if it is absent.

    On GCS this works whether or not the directory has `name/` marker objects
    (pyarrow's `delete_dir` alone fails with 404 on a marker-less, virtual directory).
    """
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    if not is_gcs(uri):
        fs.delete_dir(path)
        return
    if "/" not in path:  # a bucket root: empty it entry by entry, never delete the bucket
        for name in listdir(uri):
            child = join(uri, name)
            if is_dir(child):
                delete_dir(child)
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
