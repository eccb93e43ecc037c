"""Which Ray cluster a job uses, whether a cluster can ever run it, and the worker counts."""

from __future__ import annotations

import pytest

from fer_dist import launch, ray_cluster
from fer_dist.errors import UserError
from tests import jobs_helpers


def test_a_private_cluster_unless_asked():
    assert ray_cluster.choose_cluster(None, {}) == ray_cluster.ClusterChoice("local", "default")
    assert ray_cluster.choose_cluster(None, {}).private
    # `ray job submit` sets RAY_ADDRESS for its jobs: that cluster is the job's.
    assert ray_cluster.choose_cluster(None, {"RAY_ADDRESS": " 10.0.0.2:6379 "}) == ray_cluster.ClusterChoice(
        "10.0.0.2:6379", "RAY_ADDRESS"
    )
    # --address wins over the environment; `auto` joins the cluster `ray start` made here.
    assert ray_cluster.choose_cluster("auto", {"RAY_ADDRESS": "10.0.0.2:6379"}) == ray_cluster.ClusterChoice(
        "auto", "--address"
    )
    assert not ray_cluster.choose_cluster("auto", {}).private


def test_fits_counts_the_nodes_an_autoscaler_may_add():
    worker = {"CPU": 1.0, "GPU": 1.0}
    head = {"CPU": 1.0}
    assert not ray_cluster.fits([worker] * 2, [head])  # no GPU anywhere now
    assert ray_cluster.fits([worker] * 2, [head], [({"CPU": 8, "GPU": 1}, 2)])  # 2 GPU nodes may come
    assert not ray_cluster.fits([worker] * 3, [head], [({"CPU": 8, "GPU": 1}, 2)])  # at most 2
    assert ray_cluster.fits([worker] * 3, [head], [({"CPU": 8, "GPU": 1}, -1)])  # unlimited
    assert not ray_cluster.fits([worker], [head], [({"CPU": 8, "GPU": 1}, 0)])  # a disabled type
    assert ray_cluster.fits([{"CPU": 0.95}] * 2 + [{"CPU": 0.01}], [{"CPU": 2.0}])  # packed onto one node
    yaml_types = ray_cluster.node_types_from_cluster_yaml(
        {
            "head_node_type": "head",
            "max_workers": 8,
            "available_node_types": {
                "head": {"resources": {"CPU": 1}},
                "gpu_t4": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8},
                "gpu_a100": {"resources": {"CPU": 12, "GPU": 1}, "max_workers": 0},
            },
        }
    )
    assert yaml_types == [({"CPU": 8, "GPU": 1}, 8), ({"CPU": 12, "GPU": 1}, 0)]


def test_every_ray_worker_starts_with_the_heap_settings_unless_told_not(monkeypatch):
    """glibc reads GLIBC_TUNABLES only when a process starts: the workers get it in their
    runtime environment (their effect: benchmarks/mwms_pair.py --ray, docs/performance.md)."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("FER_DIST_HEAP_PAD", raising=False)
    assert ray_cluster.worker_env()["GLIBC_TUNABLES"] == ray_cluster.HEAP_TUNABLES
    assert "glibc.malloc.mmap_threshold=33554432" in ray_cluster.HEAP_TUNABLES
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's own: theirs, not ours
    assert ray_cluster.worker_env()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.setenv("GLIBC_TUNABLES", "")  # empty: glibc's defaults, sent as such
    assert ray_cluster.worker_env()["GLIBC_TUNABLES"] == ""
    monkeypatch.setenv("FER_DIST_HEAP_PAD", "0")  # no heap settings of ours, the user's still go
    assert ray_cluster.worker_env()["GLIBC_TUNABLES"] == ""
    monkeypatch.delenv("GLIBC_TUNABLES")
    env = ray_cluster.worker_env()
    assert "GLIBC_TUNABLES" not in env and env["FER_DIST_HEAP_PAD"] == "0"


def test_describe_resources():
    described = ray_cluster.describe_resources(
        {"CPU": 9.0, "GPU": 8.0, "memory": 1e9, "node:1.2.3.4": 1, "fake_GPU": 2}
    )
    assert described == "9 CPU, 8 GPU, fake_GPU 2"


@pytest.mark.parametrize(
    "text, want",
    [("0", (0, 0)), ("2", (2, 2)), ("1:4", (1, 4)), (" 3:3 ", (3, 3))],
)
def test_worker_counts(text, want):
    workers = launch.Workers.parse(text)
    assert (workers.min, workers.max) == want
    assert workers.scaling() == (want if want[0] != want[1] else want[1])
    assert str(workers) == (f"{want[0]}:{want[1]}" if want[0] != want[1] else str(want[1]))


@pytest.mark.parametrize("text", ["-1", "3:2", "0:2", "a", "1:2:3", ""])
def test_bad_worker_counts_name_the_flag(text):
    with pytest.raises(UserError, match="--workers-per-trial"):
        launch.Workers.parse(text, "--workers-per-trial")


def test_address_without_workers_and_bad_worker_counts_are_one_line_errors(tmp_path):
    jobs_helpers.assert_user_error(
        jobs_helpers.run("train.py", "--address", "auto", "--storage", str(tmp_path)), "--address auto", "--workers"
    )
    jobs_helpers.assert_user_error(
        jobs_helpers.run("train.py", "--workers", "4:2", "--storage", str(tmp_path)), "--workers 4:2"
    )


# A job on a private Ray cluster whose worker keeps printing, then fails with a UserError.
CHATTY_JOB = """
import sys, time
import ray
from fer_dist import ray_cluster
from fer_dist.cli import user_errors_exit
from fer_dist.errors import UserError

@ray.remote(num_cpus=0)
def chatter():
    for i in range(5000):
        print(f"worker line {i}", file=sys.stderr, flush=True)
        time.sleep(0.02)

class Seen:  # the driver's stderr, noting when a worker's line has reached it
    def __init__(self, stream):
        self.stream, self.lines = stream, 0

    def write(self, text):
        self.lines += text.count("worker line")
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)

@user_errors_exit
def main():
    sys.stderr = Seen(sys.stderr)
    ray_cluster.ensure_ray(num_cpus=1)
    chatter.remote()
    deadline = time.time() + 60  # a busy machine starts the worker late (CI: none within 1.5 s)
    while sys.stderr.lines < 5 and time.time() < deadline:
        time.sleep(0.1)
    raise UserError("the job failed")

main()
"""


@pytest.mark.slow  # starts a private Ray cluster
def test_the_error_line_stays_last_while_ray_workers_still_print():
    """Ray's exit hook prints its workers' last forwarded lines: the job leaves Ray before its
    `error:` line (seen in CI: a Train controller's traceback printed after it)."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as short:  # Ray's socket paths are short
        proc = subprocess.run(
            [sys.executable, "-c", CHATTY_JOB],
            cwd=jobs_helpers.ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONUNBUFFERED="1", RAY_TMPDIR=short),
        )
    assert "worker line 1" in proc.stderr, proc.stderr[-3000:]  # the worker's lines did reach the driver
    jobs_helpers.assert_user_error(proc, "the job failed")


# A job whose private cluster's raylet "does not register" in time on its first FAILS starts: Ray's
# own 30 s wait is made to pass at once (its clock jumps) and its lookup of the new node fails; the
# processes each start spawned are real.
SLOW_START_JOB = """
import sys, time
import psutil
import ray._private.node as node
import ray._private.services as services
from fer_dist import ray_cluster
from fer_dist.cli import user_errors_exit

FAILS = int(sys.argv[1])
real_get_node = services.get_node
starts = []

class Clock:  # Ray's startup wait on node.time: jumps 40 s a reading while a start is meant to fail
    sleep = staticmethod(time.sleep)
    offset = 0.0

    @classmethod
    def monotonic(cls):
        if len(starts) <= FAILS:
            cls.offset += 40.0
        return time.monotonic() + cls.offset

def get_node(*args, **kwargs):
    starts.append(1)
    if len(starts) <= FAILS:
        raise RuntimeError("not registered (test)")
    return real_get_node(*args, **kwargs)

def our_ray_processes():
    names = [p.name() for p in psutil.Process().children(recursive=True)]
    return sum(n.startswith(("raylet", "gcs_server")) for n in names)

services.get_node, node.time = get_node, Clock

@user_errors_exit
def main():
    try:
        ray_cluster.ensure_ray(num_cpus=1)
    finally:
        print(f"ray processes: {our_ray_processes()}", flush=True)
    import ray
    print(f"connected with {ray.cluster_resources()['CPU']:.0f} CPU", flush=True)

main()
"""


def _slow_start(fails: int, short: str):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", SLOW_START_JOB, str(fails)],
        cwd=jobs_helpers.ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PYTHONUNBUFFERED="1", RAY_TMPDIR=short),
    )


@pytest.mark.slow  # starts private Ray clusters
def test_a_private_cluster_that_times_out_starting_is_stopped_and_started_again():
    """Seen in CI: `ray.init()` raised "The current node timed out during startup" on a busy machine
    (Ray waits a fixed 30 s for the new raylet), a traceback, and left that start's processes running."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as short:
        once = _slow_start(1, short)
    assert once.returncode == 0, once.stderr[-3000:]
    assert "did not start (attempt 1 of 2)" in once.stderr, once.stderr[-3000:]
    # the first start's raylet and GCS server were stopped: one of each is left, the second start's
    assert "ray processes: 2\nconnected with 1 CPU" in once.stdout, once.stdout + once.stderr[-3000:]


def test_a_private_cluster_that_never_starts_is_one_error_and_leaves_nothing_running():
    import subprocess

    spawned = []

    def init():  # as ray.init when the raylet never registers: processes started, then Ray's exception
        spawned.append(subprocess.Popen(["sleep", "300"]))
        raise Exception("The current node timed out during startup. This could happen because ...")

    earlier = subprocess.Popen(["sleep", "300"])  # a process of ours from before: not the failed start's
    try:
        with pytest.raises(UserError, match="private Ray cluster did not start: .* 2 times"):
            ray_cluster.start_private(init)
        assert len(spawned) == 2
        assert all(p.poll() is not None for p in spawned)
        assert earlier.poll() is None
    finally:
        earlier.kill()
        earlier.wait()

    calls = []

    def broken():  # any other failure is not retried
        calls.append(1)
        raise ValueError("bad address")

    with pytest.raises(ValueError):
        ray_cluster.start_private(broken)
    assert calls == [1]


def test_the_trainer_and_its_backend_import_no_tensorflow(tmp_path):
    """A Tune trial's process builds the trainer and Train's controller unpickles its backend:
    neither imports TensorFlow (Ray's `ray.train.tensorflow` package did: 6.7 s of CPU and 767 MB
    each, fer_dist/ray_backend.py)."""
    import subprocess
    import sys

    pickled = tmp_path / "backend.pkl"
    build = (
        "import sys, ray.cloudpickle as cp\n"
        "from fer_dist import launch\n"
        "from fer_dist.config import TrainConfig\n"
        f"t = launch.make_trainer(TrainConfig(), storage_uri={str(tmp_path)!r}, name='x', num_workers=2)\n"
        f"open({str(pickled)!r}, 'wb').write(cp.dumps(t.backend_config))\n"
        "print(type(t).__name__, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    load = (
        "import sys, pickle\n"
        f"config = pickle.load(open({str(pickled)!r}, 'rb'))\n"
        "print(config.backend_cls.__name__, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        for code in (build, load)
    ]
    assert [o.returncode for o in out] == [0, 0], out[0].stderr[-2000:] + out[1].stderr[-2000:]
    assert [o.stdout.split() for o in out] == [["DataParallelTrainer", "[]"], ["MultiWorkerBackend", "[]"]]


def test_every_worker_gets_the_cluster_spec_with_its_own_index(monkeypatch):
    import json

    import ray

    from fer_dist import ray_backend

    spec = json.loads(ray_backend.tf_config(["10.0.0.1:5000", "10.0.0.2:5001"], 1))
    assert spec == {"cluster": {"worker": ["10.0.0.1:5000", "10.0.0.2:5001"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    host, port = ray_backend.worker_address().rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "::1")  # IPv6: gRPC wants it in brackets
    assert ray_backend.worker_address().startswith("[::1]:")
