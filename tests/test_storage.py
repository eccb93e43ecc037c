"""fer_dist.storage against local directories and the real gcp-storage-emulator (no mocks).

Every behaviour is checked on both backends through the `root` fixture: a local tmp_path
and a fresh `gs://fer-test/<uuid>` prefix in the emulator.
"""

from __future__ import annotations

import os
import sys
import uuid

import pyarrow.fs as pafs
import pytest
from gcs_emulator import pid_alive, running_emulator

from fer_dist import storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    """A fresh, empty directory URI: a local path, or a gs:// prefix in the emulator."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_prefix")


def make_tree(base) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha",
        "sub/b.bin": bytes(range(256)) * 10,
        "sub/deeper/c.json": b'{"c": 1}',
        "sub/deeper/empty": b"",
        "other/d.txt": "é ü 😀".encode(),
    }
    for rel, data in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return files


# -- pure functions ------------------------------------------------------------------


def test_is_gcs_and_join():
    assert storage.is_gcs("gs://b/k")
    assert not storage.is_gcs("/tmp/x") and not storage.is_gcs("runs") and not storage.is_gcs("file:///x")
    assert storage.join("gs://b", "x", "y.txt") == "gs://b/x/y.txt"
    assert storage.join("gs://b/p/", "x") == "gs://b/p/x"
    assert storage.join("/tmp/a", "b", "c") == os.path.join("/tmp/a", "b", "c")
    from pathlib import Path

    assert storage.join(Path("/tmp/a"), "b") == "/tmp/a/b"


def test_filesystem_and_local_path(tmp_path, monkeypatch):
    fs, path = storage.filesystem(str(tmp_path / "x"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    assert storage.filesystem(f"file://{tmp_path}/y")[1] == str(tmp_path / "y")
    monkeypatch.chdir(tmp_path)
    assert storage.filesystem("rel/dir")[1] == str(tmp_path / "rel" / "dir")
    assert storage.local_path("rel/dir") == str(tmp_path / "rel" / "dir")
    assert storage.local_path(f"file://{tmp_path}/z") == str(tmp_path / "z")
    assert storage.local_path("gs://b/k") is None


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:9023", "127.0.0.1:9023", "http://127.0.0.1:9023/", " http://127.0.0.1:9023 "]
)
def test_emulator_host_parsing(host):
    assert storage._emulator_endpoint(host) == ("http", "127.0.0.1:9023")
    assert storage._emulator_endpoint("https://gcs.local:443") == ("https", "gcs.local:443")


def test_gcs_filesystem_with_and_without_scheme(gcs_emulator, gcs_prefix, monkeypatch):
    storage.write_text(storage.join(gcs_prefix, "f.txt"), "same")
    bare = gcs_emulator.host[len("http://") :]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", bare)
    fs, path = storage.filesystem(storage.join(gcs_prefix, "f.txt"))
    assert isinstance(fs, pafs.GcsFileSystem)
    assert path == gcs_prefix[len("gs://") :] + "/f.txt"
    assert storage.read_text(storage.join(gcs_prefix, "f.txt")) == "same"


# -- both backends ---------------------------------------------------------------------


def test_missing_paths(root, tmp_path):
    nope = storage.join(root, "nope")
    assert not storage.exists(nope) and not storage.is_dir(nope)
    assert storage.listdir(nope) == []
    assert list(storage.walk_files(nope)) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(nope, "f.txt"))
    with pytest.raises(FileNotFoundError):
        storage.download_dir(nope, str(tmp_path / "never-created"))
    storage.delete_dir(nope)  # absent: nothing happens


def test_write_read_overwrite(root):
    uri = storage.join(root, "deep", "er", "f.bin")
    storage.write_bytes(uri, b"\x00\x01first")
    assert storage.exists(uri) and not storage.is_dir(uri)
    assert storage.read_bytes(uri) == b"\x00\x01first"
    storage.write_bytes(uri, b"second")  # overwrite, shorter
    assert storage.read_bytes(uri) == b"second"
    text_uri = storage.join(root, "t.txt")
    storage.write_text(text_uri, "héllo\nwörld")
    assert storage.read_text(text_uri) == "héllo\nwörld"
    with storage.open_read(text_uri) as f:
        assert f.read() == "héllo\nwörld".encode()
    # Parents of a written file are directories, even on GCS where they are virtual.
    assert storage.is_dir(storage.join(root, "deep")) and storage.is_dir(storage.join(root, "deep", "er"))
    assert storage.listdir(root) == ["deep", "t.txt"]
    assert storage.listdir(storage.join(root, "deep")) == ["er"]
    with pytest.raises(IsADirectoryError):
        storage.open_read(storage.join(root, "deep"))


def test_large_file(root):
    data = os.urandom(6 * 1024 * 1024 + 123)  # more than one upload chunk
    uri = storage.join(root, "big.bin")
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data


def test_local_write_is_atomic(tmp_path, monkeypatch):
    uri = str(tmp_path / "d" / "f.txt")
    storage.write_text(uri, "one")
    storage.write_text(uri, "two")
    assert os.listdir(tmp_path / "d") == ["f.txt"]  # no .tmp-* left behind
    assert storage.read_text(uri) == "two"

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_text(uri, "three")
    assert os.listdir(tmp_path / "d") == ["f.txt"]  # the temporary file was removed
    assert storage.read_text(uri) == "two"


def test_makedirs_listdir_is_dir(root):
    storage.makedirs(storage.join(root, "m", "n"))
    storage.makedirs(storage.join(root, "m", "n"))  # idempotent
    assert storage.is_dir(root) and storage.is_dir(storage.join(root, "m", "n"))
    assert storage.listdir(root) == ["m"]
    assert storage.listdir(storage.join(root, "m")) == ["n"]
    assert storage.listdir(storage.join(root, "m", "n")) == []
    # Mixed: a made directory (marker on GCS) next to virtual ones and files.
    storage.write_text(storage.join(root, "m", "f.txt"), "x")
    storage.write_text(storage.join(root, "v", "w", "g.txt"), "y")
    assert storage.listdir(root) == ["m", "v"]
    assert storage.listdir(storage.join(root, "m")) == ["f.txt", "n"]
    assert storage.listdir(storage.join(root, "v")) == ["w"]
    assert storage.listdir(storage.join(root, "m", "f.txt")) == []  # a file has no entries
    assert sorted(storage.walk_files(root)) == ["m/f.txt", "v/w/g.txt"]


def test_listdir_does_not_confuse_common_prefixes(root):
    storage.write_text(storage.join(root, "ckpt", "a.txt"), "1")
    storage.write_text(storage.join(root, "ckpt_2", "b.txt"), "2")
    storage.write_text(storage.join(root, "ckptfile"), "3")
    assert storage.listdir(root) == ["ckpt", "ckpt_2", "ckptfile"]
    assert storage.listdir(storage.join(root, "ckpt")) == ["a.txt"]
    assert list(storage.walk_files(storage.join(root, "ckpt"))) == ["a.txt"]
    storage.delete_dir(storage.join(root, "ckpt"))
    assert storage.listdir(root) == ["ckpt_2", "ckptfile"]


def test_upload_download_round_trip(root, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    dest = storage.join(root, "run", "saved_model")
    storage.upload_dir(str(src), dest)
    assert sorted(storage.walk_files(dest)) == sorted(files)
    assert storage.listdir(dest) == ["a.txt", "other", "sub"]
    assert storage.listdir(storage.join(dest, "sub")) == ["b.bin", "deeper"]
    assert storage.read_bytes(storage.join(dest, "sub", "deeper", "empty")) == b""

    back = tmp_path / "back"
    assert storage.download_dir(dest, str(back)) == str(back)
    got = {
        os.path.relpath(os.path.join(d, n), back): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(back)
        for n in names
    }
    assert got == files


def test_delete_dir(root, tmp_path):
    make_tree(tmp_path / "src")
    victim = storage.join(root, "victim")
    storage.upload_dir(str(tmp_path / "src"), victim)
    storage.makedirs(storage.join(victim, "made", "dirs"))  # markers on GCS
    storage.write_text(storage.join(root, "keep", "k.txt"), "kept")
    storage.write_text(storage.join(root, "victim_sibling.txt"), "kept")
    storage.delete_dir(victim)
    assert not storage.exists(victim) and not storage.exists(storage.join(victim, "made"))
    assert storage.listdir(root) == ["keep", "victim_sibling.txt"]
    assert storage.read_text(storage.join(root, "keep", "k.txt")) == "kept"
    # A purely virtual directory (GCS: no marker at all) is deleted too.
    storage.write_text(storage.join(root, "virtual", "x", "y.txt"), "y")
    storage.delete_dir(storage.join(root, "virtual"))
    assert storage.listdir(root) == ["keep", "victim_sibling.txt"]


# -- GCS specifics -----------------------------------------------------------------------


def test_gcs_is_gcsfilesystem_and_ray_copy_files(gcs_prefix, tmp_path):
    fs, path = storage.filesystem(storage.join(gcs_prefix, "x"))
    assert isinstance(fs, pafs.GcsFileSystem)
    assert fs is storage.filesystem(gcs_prefix)[0]  # one cached filesystem object
    with fs.open_output_stream(path + "/direct.txt") as f:
        f.write(b"via pyarrow")
    assert storage.read_bytes(storage.join(gcs_prefix, "x", "direct.txt")) == b"via pyarrow"

    # What Ray Train does with RunConfig(storage_filesystem=fs): copy_files both ways.
    make_tree(tmp_path / "ckpt")
    dest = path + "/checkpoint_000001"
    fs.create_dir(dest)
    pafs.copy_files(str(tmp_path / "ckpt"), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert storage.listdir(storage.join(gcs_prefix, "x")) == ["checkpoint_000001", "direct.txt"]
    pafs.copy_files(
        dest, str(tmp_path / "restored"), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    assert (tmp_path / "restored" / "sub" / "deeper" / "c.json").read_bytes() == b'{"c": 1}'


def test_google_cloud_storage_client_agrees(gcs_emulator, gcs_prefix):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(gcs_emulator.bucket)
    key = gcs_prefix[len(f"gs://{gcs_emulator.bucket}/") :]

    storage.write_text(storage.join(gcs_prefix, "run", "metrics.json"), '{"acc": 0.5}')
    storage.write_bytes(storage.join(gcs_prefix, "run", "ckpt", "w.bin"), b"\x00" * 100)
    names = sorted(b.name for b in client.list_blobs(bucket, prefix=key + "/"))
    assert names == [f"{key}/run/ckpt/w.bin", f"{key}/run/metrics.json"]
    assert bucket.blob(f"{key}/run/metrics.json").download_as_bytes() == b'{"acc": 0.5}'

    # And the other way round: objects written by google-cloud-storage.
    bucket.blob(f"{key}/gcs/hello.txt").upload_from_string("from the client")
    bucket.blob(f"{key}/gcs/nested/n.txt").upload_from_string("n")
    assert storage.read_text(storage.join(gcs_prefix, "gcs", "hello.txt")) == "from the client"
    assert storage.listdir(storage.join(gcs_prefix, "gcs")) == ["hello.txt", "nested"]
    assert storage.listdir(gcs_prefix) == ["gcs", "run"]

    storage.delete_dir(storage.join(gcs_prefix, "run"))
    assert sorted(b.name for b in client.list_blobs(bucket, prefix=key + "/")) == [
        f"{key}/gcs/hello.txt",
        f"{key}/gcs/nested/n.txt",
    ]


def test_delete_dir_on_bucket_root_keeps_bucket(monkeypatch):
    with running_emulator(bucket=f"b-{uuid.uuid4().hex[:8]}") as emu:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        storage.write_text(f"{emu.root}/a/b.txt", "x")
        storage.delete_dir(emu.root)
        assert storage.is_dir(emu.root) and storage.listdir(emu.root) == []
        storage.write_text(f"{emu.root}/again.txt", "y")
        assert storage.listdir(emu.root) == ["again.txt"]


def test_emulator_process_is_gone_after_the_context_manager():
    with running_emulator(bucket="fer-test") as emu:
        assert emu.host == f"http://127.0.0.1:{emu.port}" and emu.bucket == "fer-test"
        assert pid_alive(emu.pid)
        pid = emu.pid
    assert not pid_alive(pid)


def test_emulator_start_failure_is_clear(monkeypatch):
    import gcs_emulator

    monkeypatch.setattr(
        gcs_emulator,
        "_command",
        lambda: [sys.executable, "-c", "import sys; sys.stderr.write('boom-1234'); sys.exit(3)"],
    )
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*boom-1234"):
        with running_emulator():
            pass


def test_conftest_fixtures(repo_root, gcs_emulator, gcs_prefix, request):
    assert (repo_root / "pyproject.toml").is_file() and (repo_root / "fer_dist" / "storage.py").is_file()
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.host
    assert gcs_prefix.startswith("gs://fer-test/") and not storage.exists(gcs_prefix)
    try:
        csv = request.getfixturevalue("fer2013_csv")
    except pytest.skip.Exception:
        return
    assert csv.name == "fer2013.csv.gz" and csv.is_file()


def test_retries_never_wait_past_a_pending_preemption_deadline():
    previous = storage.set_retry_seconds(300)
    try:
        assert storage.effective_retry_seconds() == 300
        storage.retry_not_after(20)
        assert 19 < storage.effective_retry_seconds() <= 20
        storage.retry_not_after(-5)  # the deadline has passed: one attempt, no waiting
        assert storage.effective_retry_seconds() == 0
    finally:
        storage.retry_not_after(None)
        storage.set_retry_seconds(previous)
    assert storage.effective_retry_seconds() == storage.retry_seconds()
