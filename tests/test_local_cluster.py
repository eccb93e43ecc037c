"""The local cluster derived from cluster.yaml (`fer_dist.cluster`), and jobs on it.

The cluster has a head of cluster.yaml's head type and fake worker nodes: separate raylets that
Ray's autoscaler starts when work needs them. The jobs are run exactly as users run them
(`RAY_ADDRESS=... python jobs/train.py ...` in a subprocess); the bucket is the GCS emulator, so
that no two nodes share a run directory. The fake node a process runs on is in its environment
(`cluster.node_of`), which is how the tests see where Ray placed the Train workers.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import yaml

from fer_dist import checkpoint, cluster, storage
from tests import jobs_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--preset", "smoke", "--set", "learning_rate=0.003", "--quiet"]


def test_local_config_is_derived_from_cluster_yaml(repo_root, tmp_path):
    with open(repo_root / "cluster.yaml") as f:
        source = yaml.safe_load(f)
    local = cluster.local_config(repo_root / "cluster.yaml", cpus_per_node=1, max_workers=2, gpu_resource="fake_GPU")
    assert cluster.DEFAULT_CLUSTER_YAML == repo_root / "cluster.yaml"  # what `up` reads by default
    assert local["head_node_type"] == source["head_node_type"]
    assert set(local["available_node_types"]) == set(source["available_node_types"])
    for name, want in source["available_node_types"].items():
        got = local["available_node_types"][name]
        assert got["resources"]["CPU"] == min(want["resources"]["CPU"], 1), name
        assert got["resources"].get("fake_GPU", 0) == want["resources"].get("GPU", 0), name
        assert "GPU" not in got["resources"], name  # no GPU on this machine: a custom resource
        if name == source["head_node_type"]:
            assert got["max_workers"] == 0
        else:
            assert got["max_workers"] == min(want["max_workers"], 2), name
            assert got["min_workers"] == min(want["min_workers"], got["max_workers"]), name
    # A disabled type stays disabled, an enabled one can add nodes.
    assert local["available_node_types"]["gpu_a100"]["max_workers"] == 0
    assert local["available_node_types"]["gpu_t4"]["max_workers"] == 2
    assert local["provider"]["module"] == "fer_dist.cluster.FakeNodeProvider"
    # The derivation follows the file: an edited copy gives an edited cluster.
    source["available_node_types"]["gpu_t4"]["max_workers"] = 1
    source["available_node_types"]["gpu_t4"]["resources"] = {"CPU": 4, "GPU": 2}
    edited = tmp_path / "cluster.yaml"
    edited.write_text(yaml.safe_dump(source))
    t4 = cluster.local_config(edited, cpus_per_node=2, gpu_resource="fake_GPU")["available_node_types"]["gpu_t4"]
    assert t4["max_workers"] == 1 and t4["resources"]["CPU"] == 2 and t4["resources"]["fake_GPU"] == 2


# ---------------------------------------------------------------------------------------------
# Jobs on the local cluster.
# ---------------------------------------------------------------------------------------------
class Placements:
    """Samples, once a second in a thread, which node each Ray Train worker process runs on."""

    def __init__(self, local: cluster.LocalCluster):
        self.local = local
        self.seen: dict[int, str] = {}  # worker pid -> node id
        self.together: set[frozenset] = set()  # node ids of workers seen alive at the same moment
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def workers(self) -> dict[int, str]:
        now = {}
        for p in cluster.cluster_processes(self.local):
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    node = cluster.node_of(p.pid)
                    if node:
                        now[p.pid] = node
            except Exception:  # gone meanwhile
                continue
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.workers()
            self.seen.update(now)
            if now:
                self.together.add(frozenset(now.values()))
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run_job(script: str, args: list[str], local: cluster.LocalCluster) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0", **local.env())
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the driver alone: the cluster lives in its own session
    )


finish = jobs_helpers.finish


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout and not proc.stdout.closed else ""
            raise AssertionError(f"job ended before {what}:\n{out[-4000:]}")
        time.sleep(0.5)
    finish(proc, timeout=1)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoints(run_uri: str) -> list[str]:
    """The run's published checkpoints (the chief publishes them to <run>/checkpoints/, the
    manifest last; Ray uploads none)."""
    parent = storage.join(run_uri, "checkpoints")
    return sorted(n for n in storage.listdir(parent) if storage.exists(storage.join(parent, n, "manifest.json")))


def history(run_uri: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(storage.read_text(storage.join(run_uri, "history.csv"))))


@pytest.fixture(scope="module")
def bucket_csv(tmp_path_factory, gcs_emulator) -> str:
    """A small learnable FER-2013 CSV, in the bucket: nodes share nothing but it."""
    from tests.tiny import write_tiny_csv

    local = write_tiny_csv(tmp_path_factory.mktemp("data") / "tiny.csv", n_train=448, n_val=112, n_test=112)
    uri = f"{gcs_emulator.root}/local_cluster_data/tiny.csv"
    with open(local, "rb") as f:
        storage.write_bytes(uri, f.read())
    return uri


class Job:
    """A job on the local cluster whose output is read line by line while it runs."""

    def __init__(self, script: str, args: list[str], local: cluster.LocalCluster):
        self.proc = run_job(script, args, local)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 300) -> None:
        self.wait_until(lambda: needle in self.text(), repr(needle), timeout)

    def wait_until(self, predicate, what: str, timeout: float = 300) -> None:
        try:
            wait_for(predicate, self.proc, what, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.text()[-4000:]}") from None

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=60)
            self._reader.join(timeout=30)
        return self.text()


def worker_nodes(placements: Placements) -> list[str]:
    return sorted({node for node in placements.workers().values() if node != cluster.HEAD_NODE_ID})


@pytest.mark.ray
def test_elastic_train_adds_nodes_on_demand_and_survives_a_lost_node(local_cluster, gcs_prefix, bucket_csv):
    """`jobs/train.py --workers 2:3 --storage gs://...` on a cluster of at most 3 CPUs (1 CPU on
    the head, at most 2 worker nodes of 1 CPU) that starts with the head alone: (a) the autoscaler
    adds worker nodes for it, it starts with what it gets (3 workers split the global batch of 32
    unevenly) and the results land in the bucket; (c) one worker node's raylet SIGKILLed mid-run:
    it restarts with what is ready then (the autoscaler replaces the node, so 2 or 3), every epoch
    completes once, the history is continuous, and no checkpoint is lost. (A MAX above the
    cluster's maximum is Ray's InsufficientClusterResourcesError when a resize reaches for it:
    one `error:` line.)"""
    start = time.time()
    assert cluster.fake_nodes(local_cluster) == [], "the cluster should start with its head alone"
    args = ["--workers", "2:3", "--data", bucket_csv, "--storage", gcs_prefix, "--name", "el", "--epochs", "3"]
    args += ["--max-failures", "3", "--set", "keep_checkpoints=5", *SMOKE]
    placements = Placements(local_cluster)
    job = Job("train.py", args, local_cluster)
    run = storage.join(gcs_prefix, "el")
    try:
        job.wait_until(lambda: storage.exists(run) and len(checkpoints(run)) >= 1, "the first checkpoint")
        before_kill = checkpoints(run)
        added = cluster.fake_nodes(local_cluster)
        assert added and {n.node_type for n in added} == {"gpu_t4"}, added  # the only enabled worker type
        on_workers = worker_nodes(placements)
        assert on_workers, placements.seen  # Train workers run on the added nodes
        victim = on_workers[0]
        restarts_before = int(history(run)["restarts"].iloc[-1])  # a resize to 3 workers restarts too
        killed_at = time.time()  # the raylet and every process of its node: a lost VM
        cluster.kill_node(local_cluster, victim)
        out = job.finish(timeout=600)
    finally:
        placements.stop()
    assert job.proc.returncode == 0, out[-5000:]
    assert f"joined the cluster of RAY_ADDRESS={local_cluster.address} at" in out, out[-3000:]
    assert "Ray Train: 2:3 worker(s) (elastic)" in out, out[-3000:]
    assert "resumed from" in out, out[-4000:]
    h = history(run)
    assert list(h["epoch"]) == [1, 2, 3], h  # continuous: every epoch once
    assert h["workers"].between(2, 3).all(), h[["epoch", "workers", "restarts"]]
    assert h["restarts"].iloc[-1] > restarts_before, (restarts_before, h[["epoch", "workers", "restarts"]])
    kept = checkpoints(run)
    assert kept == ["epoch_0001", "epoch_0002", "epoch_0003"], kept
    assert set(before_kill) <= set(kept)
    for name in kept:
        assert checkpoint.verify(storage.join(run, "checkpoints", name)) is None, name
    names = set(storage.listdir(run))
    assert {"config.json", "history.csv", "metrics.json", "model.keras", "saved_model"} <= names, names
    # The replacement workers ran on a node other than the lost one.
    assert set(placements.seen.values()) - {victim}, placements.seen
    print(
        f"\nnodes added: {[n.node_id[-5:] for n in added]}; killed {victim[-5:]} -> run finished "
        f"{time.time() - killed_at:.0f} s later; test {time.time() - start:.0f} s; workers per epoch "
        f"{list(h['workers'])}, restarts {list(h['restarts'])}; workers seen on "
        f"{sorted({n[-5:] for n in placements.seen.values()})}"
    )


@pytest.mark.ray
def test_tune_trials_run_on_different_nodes(local_cluster, gcs_prefix, bucket_csv):
    """(b) a short `jobs/tune.py`: 2 concurrent trials of 1 worker (0.95 CPU each, the default,
    beside a trial driver's 0.01; nodes have 1 CPU):
    their Train workers run on two different worker nodes at once; results land in the bucket."""
    start = time.time()
    args = ["--preset", "smoke", "--data", bucket_csv, "--set", "epochs=2", "--samples", "2"]
    args += ["--max-concurrent", "2", "--workers-per-trial", "1", "--grace-period", "2"]
    args += ["--storage", gcs_prefix, "--name", "s"]
    placements = Placements(local_cluster)
    try:
        out = finish(run_job("tune.py", args, local_cluster), timeout=500)
    finally:
        placements.stop()
    search = storage.join(gcs_prefix, "s")
    assert "results.csv" in storage.listdir(search), out[-5000:]
    table = pd.read_csv(io.StringIO(storage.read_text(storage.join(search, "results.csv"))))
    assert len(table) == 2 and (table["epochs_run"] == 2).all(), (table.to_dict("records"), out[-6000:])
    for trial in table["trial"]:
        assert storage.exists(storage.join(search, "trials", trial, "metrics.json")), trial
    assert {"best_config.json", "best_model"} <= set(storage.listdir(search))
    # Two trials' workers alive at the same moment, on two different worker nodes.
    pairs = [nodes for nodes in placements.together if len(nodes) >= 2]
    assert pairs, placements.together
    assert any(set(nodes) - {cluster.HEAD_NODE_ID} for nodes in pairs), pairs  # an added node among them
    print(
        f"\ntrials' workers together on {sorted(sorted(n[-5:] for n in p) for p in pairs)}; test {time.time() - start:.0f} s"
    )


@pytest.mark.ray
def test_a_drained_node_gets_a_checkpoint_at_a_step_and_the_run_resumes_from_it(local_cluster, gcs_prefix):
    """Spot preemption on Ray: `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` on a node
    that hosts a worker; the loop sees the notice within `vote_every_steps` steps, writes a
    checkpoint at that step and trains on; at the deadline Ray restarts the worker group from
    that checkpoint (the node's raylet is then killed: the VM goes), and the run finishes."""
    start, deadline_s = time.time(), 10
    args = ["--workers", "2", "--data", "builtin", "--set", "builtin_size=12000", "--storage", gcs_prefix]
    # small batches: an epoch (1200 steps) outlasts the notice's deadline on a fast CPU too, so that
    # the restart comes mid-epoch, from the step checkpoint; one epoch: the resumed run finishes it
    args += ["--name", "pre", "--epochs", "1", "--set", "vote_every_steps=5", "--set", "global_batch_size=8", *SMOKE]
    placements = Placements(local_cluster)
    job = Job("train.py", args, local_cluster)
    try:
        job.wait_for("communication: every step all-reduces")  # the first epoch's steps begin
        time.sleep(3)
        (victim,) = worker_nodes(placements)[:1]
        drained_at = time.time()
        cluster.drain_node(local_cluster, victim, deadline_s=deadline_s)
        job.wait_for("preemption notice", timeout=120)
        noticed_s = time.time() - drained_at
        time.sleep(max(0.0, drained_at + deadline_s + 2 - time.time()))
        if victim in {n.node_id for n in cluster.fake_nodes(local_cluster)}:  # Ray may have ended it already
            cluster.kill_node(local_cluster, victim)  # the VM goes
        out = job.finish(timeout=600)
    finally:
        placements.stop()
    assert job.proc.returncode == 0, out[-5000:]
    line = next(x for x in out.splitlines() if "preemption notice" in x)
    # the just-in-time checkpoint's time, measured against the notice's deadline
    assert re.search(
        r"checkpoint at epoch 1 step \d+ written in [\d.]+ s of the \d+ s the notice left; training on", line
    ), line
    step = int(re.search(r"step (\d+)", line).group(1))
    assert f"resumed from the checkpoint of epoch 0 after step {step} of epoch 1" in out, out[-5000:]
    h = history(storage.join(gcs_prefix, "pre"))
    assert list(h["epoch"]) == [1] and h["restarts"].iloc[-1] >= 1, h
    written = re.search(r"written in ([\d.]+) s", line).group(1)
    print(
        f"\nnotice seen {noticed_s:.1f} s after the drain, checkpoint at step {step} written in {written} s; "
        f"test {time.time() - start:.0f} s"
    )
