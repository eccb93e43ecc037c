"""One writer per run, one owner per checkpoint: the holes that lost or overwrote work, closed.

Real files, the real emulator (which honours `ifGenerationMatch`), the jobs as subprocesses. Each
test names the case it guards; each failed before the change that closed it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fer_dist import checkpoint, exclusive, storage
from fer_dist import config as C
from fer_dist.errors import UserError
from tests import jobs_helpers

ROOT = jobs_helpers.ROOT
run, assert_user_error = jobs_helpers.run, jobs_helpers.assert_user_error
SMOKE = C.resolve("smoke", {})


# ---------------------------------------------------------------------------------
# Checkpoints: one verified listing, retention that never loses the newest whole one.
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_optimizer():
    import keras

    from fer_dist import model as M
    from fer_dist import optim

    keras.utils.set_random_seed(0)
    model = M.build(SMOKE)
    optimizer = optim.make_optimizer(SMOKE)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _publish(run_dir: str, model_and_optimizer, epoch: int, val_accuracy: float, tmp_path, step: int = 0) -> str:
    model, optimizer = model_and_optimizer
    local = tmp_path / f"local-{epoch}-{step}-{time.monotonic_ns()}"
    loop = {"epoch": epoch, "step": step, "metrics": {"val_accuracy": val_accuracy, "val_loss": 1 - val_accuracy}}
    checkpoint.save(str(local), model=model, optimizer=optimizer, loop=loop, config_json=SMOKE.to_json())
    return checkpoint.publish(str(local), run_dir, epoch, step)


def _damage(uri: str, file_name: str = "model.npz") -> None:
    data = bytearray(storage.read_bytes(storage.join(uri, file_name)))
    data[200:264] = b"\0" * 64
    storage.write_bytes(storage.join(uri, file_name), bytes(data))


def _names(run_dir: str) -> list[str]:
    return sorted(storage.listdir(storage.join(run_dir, checkpoint.LOCAL_PARENT)))


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_retention_after_a_fallback_keeps_what_the_resumed_run_writes(where, tmp_path, request, model_and_optimizer):
    """Case 1: the damaged newest checkpoint counted as newest and best, and keep=1 pruned every
    whole checkpoint the resumed run wrote; the next resume then failed."""
    run_dir = str(tmp_path / "run") if where == "local" else storage.join(request.getfixturevalue("gcs_prefix"), "r")
    for epoch, accuracy in [(1, 0.3), (2, 0.4), (3, 0.9)]:
        _publish(run_dir, model_and_optimizer, epoch, accuracy, tmp_path)
        checkpoint.prune_run(run_dir, keep=2)
    assert _names(run_dir) == ["epoch_0002", "epoch_0003"]
    _damage(storage.join(run_dir, "checkpoints", "epoch_0003"))
    found = checkpoint.fetch_to_resume(checkpoint.of_run(run_dir), run_dir)
    assert found[0].epoch == 2  # the fallback
    # the resumed run (keep=1 now) writes a step checkpoint before it passes the damaged epoch
    _publish(run_dir, model_and_optimizer, 2, 0.1, tmp_path, step=5)
    checkpoint.prune_run(run_dir, keep=1)
    # the newest whole one is never deleted, nor the best whole one; the damaged epoch 3, newer
    # than every whole one, is left alone
    assert _names(run_dir) == ["epoch_0002", "epoch_0003", "epoch_0003_step_000005"]
    again = checkpoint.fetch_to_resume(checkpoint.of_run(run_dir), run_dir)
    assert (again[0].epoch, again[0].step) == (2, 5)
    # once the run has passed the damaged epoch, the damaged checkpoint is replaced, then pruned
    _publish(run_dir, model_and_optimizer, 3, 0.5, tmp_path)
    _publish(run_dir, model_and_optimizer, 4, 0.6, tmp_path)
    checkpoint.prune_run(run_dir, keep=1)
    assert _names(run_dir) == ["epoch_0004"]
    assert checkpoint.verify(storage.join(run_dir, "checkpoints", "epoch_0004")) is None


def test_a_damaged_checkpoint_older_than_a_whole_one_and_debris_are_removed(tmp_path, model_and_optimizer):
    run_dir = str(tmp_path / "run")
    first = _publish(run_dir, model_and_optimizer, 1, 0.9, tmp_path)
    _publish(run_dir, model_and_optimizer, 2, 0.2, tmp_path)
    _damage(first)
    empty_step = tmp_path / "run" / "checkpoints" / checkpoint.name(1, 7)  # a write killed at once
    empty_step.mkdir()
    _publish(run_dir, model_and_optimizer, 3, 0.5, tmp_path)
    leftover = tmp_path / "run" / "checkpoints" / "epoch_0003" / ".tmp-abc123"  # a write killed mid-file
    leftover.write_bytes(b"x")
    checkpoint.prune_run(run_dir, keep=1)
    assert _names(run_dir) == ["epoch_0003"]  # 1 damaged and older, the empty step dir, 2 not kept
    assert not leftover.exists()


def test_a_whole_checkpoint_is_never_published_over(tmp_path, gcs_prefix, model_and_optimizer):
    """Case 2's last line of defence: the manifest is published exclusively."""
    for run_dir in (str(tmp_path / "run"), storage.join(gcs_prefix, "r")):
        uri = _publish(run_dir, model_and_optimizer, 1, 0.5, tmp_path)
        before = storage.read_text(storage.join(uri, "manifest.json"))
        with pytest.raises(checkpoint.CheckpointError, match="already published"):
            _publish(run_dir, model_and_optimizer, 1, 0.7, tmp_path)
        assert storage.read_text(storage.join(uri, "manifest.json")) == before
        _damage(uri)  # a damaged one in its place is replaced
        _publish(run_dir, model_and_optimizer, 1, 0.7, tmp_path)
        assert checkpoint.verify(uri) is None and checkpoint.info(uri).val_accuracy == 0.7


@pytest.mark.parametrize(
    "text", ["[]", '{"files": 3}', '{"epoch": "x", "files": {}}', '{"epoch": 1, "files": {"a": 5}}', "null"]
)
def test_a_manifest_of_the_wrong_shape_is_damaged_not_a_traceback(tmp_path, model_and_optimizer, text):
    uri = _publish(str(tmp_path / "run"), model_and_optimizer, 1, 0.5, tmp_path)
    (tmp_path / "run" / "checkpoints" / "epoch_0001" / "manifest.json").write_text(text)
    assert checkpoint.verify(uri) == "manifest.json is damaged"
    with pytest.raises(checkpoint.CheckpointError, match="no whole checkpoint"):
        checkpoint.fetch_to_resume(checkpoint.of_run(str(tmp_path / "run")), "run")


def test_tunes_best_checkpoint_comes_from_the_verified_listing(tmp_path, model_and_optimizer):
    """Case 10: Tune's best checkpoint is chosen from the trial directory, as retention sees it."""
    from fer_dist import tune

    trial = str(tmp_path / "trial")
    _publish(trial, model_and_optimizer, 1, 0.3, tmp_path)
    best = _publish(trial, model_and_optimizer, 2, 0.8, tmp_path)
    _publish(trial, model_and_optimizer, 3, 0.5, tmp_path)
    assert tune.best_checkpoint(trial, "val_accuracy").uri == best
    assert tune.best_checkpoint(trial, "val_loss").uri == best  # val_loss = 1 - val_accuracy here
    _damage(best)
    assert tune.best_checkpoint(trial, "val_accuracy").epoch == 3


# ---------------------------------------------------------------------------------
# Storage: the production filesystem is the tested one; OS faults are one line.
# ---------------------------------------------------------------------------------
def test_every_gcs_filesystem_has_a_bounded_inner_retry(monkeypatch):
    """Case 4: pyarrow's own retry (google-cloud-cpp's 15 min default) reached production. The
    production constructors, as `__reduce__` exposes them: ours short (the loop around it keeps
    the deadlines), the one Ray and Tune get (no loop of ours around it) the retry budget."""
    import datetime

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv(storage.RETRY_ENV, "120")
    ours, _ = storage.retried_filesystem("gs://some-bucket/x")  # what every storage call uses
    rays, _ = storage.filesystem("gs://some-bucket/x")  # RunConfig(storage_filesystem=...)
    for fs, seconds in ((ours, storage.INNER_RETRY_S), (rays, 120)):
        options = fs.__reduce__()[1][0]
        assert options["retry_time_limit"] == datetime.timedelta(seconds=seconds)
        assert not options.get("endpoint_override") and not options.get("anonymous")  # production's


@pytest.mark.slow
def test_a_full_disk_is_one_error_naming_the_path(tmp_path):
    """Case 8: ENOSPC at start (the name stays free) and at a checkpoint (the run stays resumable).
    A small tmpfs is a real full disk."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.fail("could not mount a tmpfs (the test needs root, as CI has)")
    train = ["--preset", "smoke", "--quiet", "--epochs", "1", "--storage", str(mount), "--name", "r"]
    try:
        storage.write_bytes(str(mount / "small.bin"), b"x" * 1000)
        with pytest.raises(UserError, match=r"big.bin: no space left on the device"):
            storage.write_bytes(str(mount / "big.bin"), b"x" * 200_000)
        assert sorted(os.listdir(mount)) == ["small.bin"]  # no temp file left, the earlier file intact
        fd = os.open(mount / "filler", os.O_CREAT | os.O_WRONLY)  # the disk full to the last byte
        try:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        assert_user_error(run("train.py", *train), "no space left on the device")
        assert sorted(os.listdir(mount)) == ["filler", "small.bin"]  # nothing of the run: the name is free
        os.remove(mount / "filler")  # 64 KiB: room for the start, not for a checkpoint
        assert_user_error(run("train.py", *train), "checkpoints/epoch_0001/model.npz: no space left on the device")
        assert (mount / "r" / "config.json").exists()
        subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)  # space freed
        proc = run("train.py", "--storage", str(mount), "--name", "r", "--resume", "--quiet")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (mount / "r" / "metrics.json").exists()
    finally:
        subprocess.run(["umount", str(mount)])


# ---------------------------------------------------------------------------------
# The fence: one writer per run.
# ---------------------------------------------------------------------------------
HOLDER = """
import sys, time
from fer_dist import exclusive, storage
lease = exclusive.acquire_lease(sys.argv[1], owner="frozen-holder")
storage.fence(sys.argv[1], lease.check)
storage.write_text(storage.join(sys.argv[1], "a.txt"), "first")
print("held", flush=True)
sys.stdin.readline()  # SIGSTOP arrives meanwhile; the lease expires and is taken
try:
    storage.write_text(storage.join(sys.argv[1], "a.txt"), "late")
except exclusive.LeaseLost as e:
    print("refused:", e, flush=True)
"""


def test_a_frozen_holder_that_lost_its_lease_writes_nothing_more(gcs_prefix):
    """Case 3: a holder frozen past its lease (SIGSTOP, a VM pause) wakes up fenced off."""
    run_dir = storage.join(gcs_prefix, "run")
    env = dict(os.environ, **{exclusive.LEASE_ENV: "3"})
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        proc.send_signal(signal.SIGSTOP)
        old = {"EXPIRE_S": exclusive.EXPIRE_S, "POLL_S": exclusive.POLL_S}
        exclusive.EXPIRE_S, exclusive.POLL_S = 3.0, 0.1
        try:
            taker = exclusive.acquire_lease(run_dir, owner="taker")  # waits for the frozen one to expire
        finally:
            exclusive.EXPIRE_S, exclusive.POLL_S = old["EXPIRE_S"], old["POLL_S"]
        proc.send_signal(signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline()
        assert out.startswith("refused:") and "lost the run's lease to taker" in out, out
        assert storage.read_text(storage.join(run_dir, "a.txt")) == "first"
        taker.release()
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=30)


def test_the_lease_outlives_the_storage_retry_budget(monkeypatch):
    monkeypatch.setattr(exclusive, "EXPIRE_S", None)
    monkeypatch.delenv(exclusive.LEASE_ENV, raising=False)
    monkeypatch.setenv(storage.RETRY_ENV, "300")
    assert exclusive.expire_seconds() > 300
    monkeypatch.setenv(storage.RETRY_ENV, "900")
    assert exclusive.expire_seconds() > 900
    monkeypatch.setenv(exclusive.LEASE_ENV, "nope")
    with pytest.raises(UserError, match="FER_DIST_LEASE_S"):
        exclusive.expire_seconds()


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return jobs_helpers.start("train.py", *args, env=env)


def _wait_for(proc: subprocess.Popen, needle: str) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in the log:\n" + "".join(lines[-40:]))


LONG = ["--preset", "smoke", "--quiet", "--set", "builtin_size=1200", "--set", "global_batch_size=8"]


@pytest.mark.slow
def test_resume_of_a_live_run_is_refused_and_the_run_finishes(tmp_path):
    """Case 2: a fresh run held no lease; `--resume` trained beside it and both exited 0."""
    out = str(tmp_path / "runs")
    first = _start(*LONG, "--epochs", "3", "--storage", out, "--name", "r")
    try:
        _wait_for(first, "epoch 1: ")  # training, mid-epoch
        second = run("train.py", "--storage", out, "--name", "r", "--resume", "--quiet")
        assert_user_error(second, f"run {out}/r is in use by", "it is training it now")
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    finally:
        first.kill()
    assert json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["epochs_run"] == 3


@pytest.mark.slow
def test_a_run_that_lost_its_lease_stops_with_one_error_and_the_taker_finishes(gcs_prefix):
    """Case 3 end to end: a training job frozen past its lease, taken over by `--resume`."""
    env = {exclusive.LEASE_ENV: "4"}
    first = _start(*LONG, "--epochs", "3", "--storage", gcs_prefix, "--name", "r", env=env)
    try:
        _wait_for(first, "epoch 1/3:")  # its first checkpoint is being written or written
        first.send_signal(signal.SIGSTOP)
        second = run("train.py", "--storage", gcs_prefix, "--name", "r", "--resume", "--quiet", timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "took over the expired lease" in second.stderr
        metrics = storage.read_text(storage.join(gcs_prefix, "r", "metrics.json"))
        history = storage.read_text(storage.join(gcs_prefix, "r", "history.csv"))
        first.send_signal(signal.SIGCONT)
        code, err = first.wait(timeout=300), first.stderr.read()
        assert code == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "lost the run's lease" in last, last
        assert "Traceback" not in err
        # nothing of the frozen run's was written after it woke
        assert storage.read_text(storage.join(gcs_prefix, "r", "metrics.json")) == metrics
        assert storage.read_text(storage.join(gcs_prefix, "r", "history.csv")) == history
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait(timeout=60)


# ---------------------------------------------------------------------------------
# Completion written last; resume with one recipe.
# ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_signal_during_the_export_leaves_an_incomplete_run_that_resume_finishes(tmp_path):
    """Cases 5 and 7: metrics.json marked a run complete before its export; a SIGTERM there was a
    hard kill."""
    out = str(tmp_path / "runs")
    proc = _start("--preset", "smoke", "--quiet", "--epochs", "1", "--storage", out, "--name", "r")
    try:
        _wait_for(proc, "exporting model.keras and saved_model/")
        proc.send_signal(signal.SIGTERM)
        code, err = proc.wait(timeout=300), proc.stderr.read()
    finally:
        proc.kill()
    assert code == 143, err[-3000:]
    assert "SIGTERM received: stopping now; the run is not complete" in err and "Traceback" not in err
    run_dir = tmp_path / "runs" / "r"
    assert not (run_dir / "metrics.json").exists()
    assert_user_error(run("evaluate.py", str(run_dir)), "the run is not complete", "--resume")
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to train" in proc.stderr and "exported model.keras" in proc.stderr
    assert (run_dir / "metrics.json").exists() and (run_dir / "saved_model" / "saved_model.pb").exists()
    assert run("evaluate.py", str(run_dir), "--output", str(tmp_path / "ev")).returncode == 0

    # Case 6: a hand-edited recipe is refused on resume, naming the field; epochs may change
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(dict(config, learning_rate=0.5, dropout=0.1)))
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--epochs", "2", "--quiet")
    assert_user_error(proc, "differs from the recipe of checkpoint", "learning_rate", "dropout")
    (run_dir / "config.json").write_text(json.dumps(dict(config, epochs=2)))
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2

    # A complete run trained further is not complete until its new export is: killed hard after
    # its last epoch, it must not pass for complete with the old metrics and model.
    proc = _start("--storage", out, "--name", "r", "--resume", "--epochs", "3", "--quiet")
    try:
        _wait_for(proc, "epoch 3/3:")
        assert not (run_dir / "metrics.json").exists()
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert_user_error(run("evaluate.py", str(run_dir)), "the run is not complete")
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 3


def test_truncated_model_files_are_one_error_line(tmp_path):
    """Case 8: a truncated model.keras (evaluate, predict) or saved_model.pb (export)."""
    from tests.saved_run import save_untrained_run
    from tests.tiny import write_tiny_csv

    csv = write_tiny_csv(tmp_path / "d.csv")
    run_dir = save_untrained_run(tmp_path / "a", data=csv, seed=1)
    path = os.path.join(run_dir, "model.keras")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert_user_error(run("evaluate.py", run_dir, "--data", csv), "model.keras: not a readable Keras model")
    image = tmp_path / "face.png"
    from PIL import Image

    Image.new("L", (48, 48), 128).save(image)
    assert_user_error(run("predict.py", str(image), "--run", run_dir), "model.keras: not a readable Keras model")
    saved = tmp_path / "b" / "saved_model"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"\x0a\xff\xff")
    (tmp_path / "b" / "config.json").write_text(SMOKE.to_json())
    proc = run("export.py", str(tmp_path / "b"), "--tflite", str(tmp_path / "m.tflite"))
    assert_user_error(proc, "saved_model.pb: damaged or truncated")


# ---------------------------------------------------------------------------------
# Ray: only what is known to rule a job out is refused.
# ---------------------------------------------------------------------------------
def test_an_unknown_autoscaler_is_waited_for_not_refused(monkeypatch, caplog):
    """Case 9: a head started with --autoscaling-config elsewhere: "can never run" was a guess."""
    from fer_dist import ray_cluster

    monkeypatch.setattr(ray_cluster, "_alive_nodes", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(ray_cluster, "autoscaler_node_types", lambda: (None, "no autoscaler config"))
    monkeypatch.setattr(
        ray_cluster, "_joined", {"choice": ray_cluster.ClusterChoice("10.0.0.1:6379", "--address"), "where": "x"}
    )
    with caplog.at_level("WARNING", logger="fer_dist.ray_cluster"):
        ray_cluster.check_fits(2, {"CPU": 1.0, "GPU": 1.0}, "--workers 2 --gpus-per-worker 1")
    assert "autoscaler's node types are unknown" in caplog.text and "waiting for nodes" in caplog.text
    # known node types that rule it out: still refused
    monkeypatch.setattr(
        ray_cluster, "_joined", {"choice": ray_cluster.ClusterChoice("10.0.0.1:6379", "--address"), "where": "x"}
    )
    monkeypatch.setattr(ray_cluster, "autoscaler_node_types", lambda: ([({"CPU": 4.0}, 3)], "the cluster config"))
    with pytest.raises(UserError, match="can never run 2 worker"):
        ray_cluster.check_fits(2, {"CPU": 1.0, "GPU": 1.0}, "--workers 2 --gpus-per-worker 1")
    # a private cluster never grows: refused
    monkeypatch.setattr(ray_cluster, "_joined", {"choice": ray_cluster.ClusterChoice("local", "default"), "where": "x"})
    with pytest.raises(UserError, match="can never run 2 worker"):
        ray_cluster.check_fits(2, {"CPU": 1.0, "GPU": 1.0}, "--workers 2 --gpus-per-worker 1")


def test_no_tf_keras_in_the_package():
    """Ray sets TF_USE_LEGACY_KERAS=1 in its workers: `tf.keras` there is tf_keras or an ImportError."""
    offenders = []
    for root, _, files in os.walk(os.path.join(ROOT, "fer_dist")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    for number, line in enumerate(f, 1):
                        if "tf.keras" in line:
                            offenders.append(f"{name}:{number}")
    assert offenders == []


def test_ray_notices_are_asked_for_in_seconds_not_steps():
    """Case 7: the notice's poll, set in seconds of training, becomes the same step count on
    every worker (one collective at each epoch's end)."""
    from fer_dist import preemption, steps

    watcher = preemption.RayNoticeWatcher(every_steps=20, poll_seconds=10.0)
    dist = steps.Distributed.create(None)
    assert watcher.pace(dist, 0.05) == "preemption notices: asked every 200 steps (~10.0 s at 0.050 s a step)"
    assert watcher.every_steps == 200
    assert watcher.pace(dist, 0.05) is None  # unchanged: nothing to log
    watcher.pace(dist, 30.0)  # slower than the poll: every step
    assert watcher.every_steps == 1


def test_exclusive_writes_on_unreachable_storage_are_one_error_within_the_retry_budget(monkeypatch):
    """A run's marker, a manifest and a lease go through google-cloud-storage, not pyarrow: they
    keep the same retry budget and end in the same one-line error."""
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    previous = storage.set_retry_seconds(2)
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match=r"storage gs://fer-test/x/\.fer_dist_run: .*resumable"):
            exclusive.create_exclusive("gs://fer-test/x/.fer_dist_run", b"{}")
        with pytest.raises(UserError, match=r"storage gs://fer-test/x/\.lease: "):
            exclusive.acquire_lease("gs://fer-test/x")
        assert time.monotonic() - start < 30
    finally:
        storage.set_retry_seconds(previous)


def test_a_checkpoint_cut_short_before_its_manifest_is_no_reason_to_refuse_a_start(tmp_path, model_and_optimizer):
    """A lost node while the chief wrote the run's first checkpoint: its files but no manifest.
    Nothing was published, so the restart starts the run afresh; a published but damaged one
    still refuses (starting over would lose it)."""
    run_dir = str(tmp_path / "run")
    uri = _publish(run_dir, model_and_optimizer, 1, 0.5, tmp_path)
    os.remove(os.path.join(uri, "manifest.json"))
    found = checkpoint.of_run(run_dir)
    assert [i.published for i in found] == [False]
    assert checkpoint.fetch_to_resume(found, run_dir) is None
    _publish(run_dir, model_and_optimizer, 1, 0.5, tmp_path)  # replaces the cut-short one
    _damage(uri)
    with pytest.raises(checkpoint.CheckpointError, match="no whole checkpoint"):
        checkpoint.fetch_to_resume(checkpoint.of_run(run_dir), run_dir)


def test_runs_and_searches_saved_before_monitor_existed_resume_by_what_they_used(tmp_path, model_and_optimizer):
    """A checkpoint's config without `monitor` (a field added later) is no recipe change; a
    manifest without metrics still ranks by the epoch's metrics (state.json); a search's base
    config without it keeps the metric its search was ranked by (val_accuracy, or --metric)."""
    import json

    from fer_dist import experiment, tune
    from fer_dist.errors import UserError

    run_dir = str(tmp_path / "old")
    model, optimizer = model_and_optimizer
    old_config = {k: v for k, v in SMOKE.to_dict().items() if k != "monitor"}
    local = str(tmp_path / "local")
    loop = {"epoch": 1, "step": 0, "metrics": {"val_accuracy": 0.5, "val_loss": 0.7}}
    checkpoint.save(local, model=model, optimizer=optimizer, loop=loop, config_json=json.dumps(old_config))
    manifest = json.loads(open(os.path.join(local, checkpoint.MANIFEST_FILE)).read())
    del manifest["metrics"]  # as format 1 wrote it before the manifest carried the metrics
    open(os.path.join(local, checkpoint.MANIFEST_FILE), "w").write(json.dumps(manifest))
    uri = checkpoint.publish(local, run_dir, 1, 0)
    assert checkpoint.info(uri).metrics["val_loss"] == 0.7
    experiment.check_recipe(run_dir, SMOKE.replace(monitor="val_accuracy"), "config.json")  # no error
    with pytest.raises(UserError, match="dropout"):
        experiment.check_recipe(run_dir, SMOKE.replace(dropout=0.11), "config.json")

    search = tmp_path / "searches" / "s"
    search.mkdir(parents=True)
    (search / tune.BASE_CONFIG_FILE).write_text(json.dumps(old_config))
    (search / tune.SPACE_FILE).write_text(json.dumps({"dropout": {"kind": "choice", "values": [0.1, 0.2]}}))
    assert tune.saved_search(str(tmp_path / "searches"), "s")[0].monitor == "val_accuracy"
    assert tune.saved_search(str(tmp_path / "searches"), "s", "val_loss")[0].monitor == "val_loss"
