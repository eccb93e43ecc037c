"""Shared fixtures. Kept light: nothing heavy (TensorFlow, Ray) is imported here.

    def test_x(gcs_emulator, gcs_prefix):   # gcs_prefix == "gs://fer-test/<uuid hex>"
        storage.write_text(storage.join(gcs_prefix, "a.txt"), "hi")

`gcs_emulator` runs one real gcp-storage-emulator for the whole session and sets
STORAGE_EMULATOR_HOST (inherited by subprocesses started from tests, e.g. Ray jobs);
`gcs_prefix` needs it, so asking for `gcs_prefix` alone is enough.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:  # pytest's default import mode adds it too; be explicit
    sys.path.insert(0, _TESTS)

from gcs_emulator import Emulator, running_emulator  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SLOW_MARKERS = ("ray", "fer2013")  # tests carrying these are `slow` too: `pytest -m "not slow"` skips them
FER2013_CSV = REPO_ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory):
    """The decoded-data cache (fer_dist/decoded.py) of this test session: a temporary directory,
    for the jobs and Ray workers the tests start too (inherited), not the user's ~/.cache."""
    previous = os.environ.get("FER_DIST_DATA_CACHE")
    os.environ["FER_DIST_DATA_CACHE"] = str(tmp_path_factory.mktemp("decoded"))
    yield
    if previous is None:
        os.environ.pop("FER_DIST_DATA_CACHE", None)
    else:
        os.environ["FER_DIST_DATA_CACHE"] = previous


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    """Ray tests and the FER-2013 test are slow tier: add the `slow` marker to them."""
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def fer2013_csv() -> Path:
    """../shared/data/fer2013/fer2013.csv.gz; the test is skipped when it is absent."""
    if not FER2013_CSV.is_file():
        pytest.skip(f"FER-2013 data not found at {FER2013_CSV}")
    return FER2013_CSV


@pytest.fixture(scope="session")
def gcs_emulator():
    """A running gcp-storage-emulator (bucket `fer-test`), STORAGE_EMULATOR_HOST set to it.

    Started once per session; the environment variable is restored and the emulator
    process stopped (by its PID) at the end of the session.
    """
    with running_emulator(bucket="fer-test") as emu:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = emu.host
        try:
            yield emu
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gcs_prefix(gcs_emulator: Emulator) -> str:
    """A fresh, empty `gs://fer-test/<uuid>` prefix for one test."""
    return f"gs://{gcs_emulator.bucket}/{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A local Ray cluster derived from cluster.yaml (`fer_dist.cluster`): a head of cluster.yaml's
    head type and fake worker nodes (separate raylets) that a real autoscaler starts on demand.

    Isolated (its own RAY_TMPDIR, ports and state file, token auth off) and stopped by its own
    processes at the end of the module. Yields a `fer_dist.cluster.LocalCluster`: pass
    `local_cluster.env()` (RAY_ADDRESS, RAY_AUTH_MODE) to the jobs that should run on it.
    """
    import shutil

    if shutil.which("ray") is None:  # a dependency of the project: its absence is a failure, not a skip
        pytest.fail("the `ray` command is not installed (pip install -e '.[test]' installs ray[train,tune])")
    import subprocess

    from fer_dist import cluster

    # Through the command line a user runs (README), with the runtime dependencies only.
    state = str(tmp_path_factory.mktemp("local_cluster") / "state.json")
    command = [sys.executable, "-m", "fer_dist.cluster", "local"]
    up = subprocess.run([*command, "--up", "--state", state], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"--down --state {state}`" in up.stdout, up.stdout  # the hint names the state file it was given
        started = cluster.LocalCluster.load(state)
        shown = subprocess.run([*command, "--status", "--state", state], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and f"address {started.address}" in shown.stdout, shown.stdout + shown.stderr
        yield started
    finally:
        if os.path.exists(state):
            down = subprocess.run([*command, "--down", "--state", state], capture_output=True, text=True, timeout=300)
            assert down.returncode == 0 and down.stdout.startswith("stopped "), down.stdout + down.stderr
            assert not os.path.exists(state)
