"""The README's promises under faults, as a careful user meets them: nothing lost, nothing
silently changed, one `error:` line. Real files, the real emulator, the jobs as subprocesses."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from fer_dist import checkpoint, storage
from tests import jobs_helpers
from tests.tiny import write_tiny_csv

ROOT = jobs_helpers.ROOT
run, assert_user_error, _popen = jobs_helpers.run, jobs_helpers.assert_user_error, jobs_helpers.start
SMOKE = ["--preset", "smoke", "--quiet"]


def _history(run_dir) -> list[int]:
    return pd.read_csv(storage.join(str(run_dir), "history.csv"))["epoch"].tolist()


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_skipped_on_resume(tmp_path):
    out = str(tmp_path / "runs")
    proc = run("train.py", *SMOKE, "--storage", out, "--name", "r", "--epochs", "2", "--set", "keep_checkpoints=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent = tmp_path / "runs" / "r" / "checkpoints"
    assert sorted(os.listdir(parent)) == ["epoch_0001", "epoch_0002"]
    with open(parent / "epoch_0002" / "model.npz", "r+b") as f:  # garbled, as by a bad disk or a lost upload
        f.seek(200)
        f.write(b"\0" * 64)
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--epochs", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping checkpoint" in proc.stderr and "model.npz does not match its manifest" in proc.stderr
    assert "resumed from the checkpoint of epoch 1" in proc.stderr
    assert _history(tmp_path / "runs" / "r") == [1, 2, 3]

    for name in os.listdir(parent):  # every checkpoint damaged: one error line, nothing trained
        (parent / name / "manifest.json").write_text("{")
    proc = run("train.py", "--storage", out, "--name", "r", "--resume", "--epochs", "4", "--quiet")
    assert_user_error(proc, "no whole checkpoint to resume from")


@pytest.mark.slow
def test_two_runs_with_one_name_at_the_same_instant_one_wins(tmp_path):
    out = str(tmp_path / "runs")
    procs = [_popen("train.py", *SMOKE, "--storage", out, "--name", "same", "--epochs", "1") for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [(c, e[-1500:]) for c, e in results]
    loser = next(err for code, err in results if code == 2)
    assert loser.strip().splitlines()[-1].startswith("error: ") and "already exists" in loser
    assert _history(tmp_path / "runs" / "same") == [1]


def test_one_error_line_for_bad_paths_and_flags(tmp_path):
    as_file = tmp_path / "a_file"
    as_file.write_text("x")
    binary = tmp_path / "config.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_user_error(run("train.py", *SMOKE, "--config", str(tmp_path)), "--config", "is a directory")
    assert_user_error(run("train.py", *SMOKE, "--config", str(binary)), str(binary))
    assert_user_error(run("train.py", *SMOKE, "--storage", str(as_file)), "is a file, not a directory")
    assert_user_error(run("train.py", "--epochs", "abc"), "--epochs")
    assert_user_error(run("train.py", "--no-such-flag"), "--no-such-flag")
    assert_user_error(run("evaluate.py"), "Missing argument")
    assert_user_error(run("tune.py", "--samples", "x"), "--samples")
    assert as_file.read_text() == "x"


def test_imagenet_weights_unreachable_is_one_line_with_the_fix(tmp_path):
    proc = run("train.py", "--preset", "seed", "--set", "epochs=1", "--storage", str(tmp_path), "--name", "n")
    assert_user_error(proc, "weights=imagenet", "--set weights=none")
    assert not (tmp_path / "n").exists()  # validated before anything was written: the name is still free


def test_optuna_missing_is_one_line_with_the_fix(tmp_path):
    pytest.importorskip("ray")
    try:
        import optuna  # noqa: F401

        pytest.skip("optuna is installed")
    except ImportError:
        pass
    proc = run("tune.py", "--searcher", "optuna", "--storage", str(tmp_path))
    assert_user_error(proc, "--searcher optuna needs optuna", 'pip install -e ".[tune]"')


def test_a_failed_start_leaves_no_debris(tmp_path):
    out = str(tmp_path / "runs")
    assert_user_error(run("train.py", *SMOKE, "--storage", out, "--name", "x", "--data", "/nonexistent.csv"))
    assert not (tmp_path / "runs" / "x").exists()
    assert_user_error(run("tune.py", "--storage", out, "--name", "s", "--data", "/nonexistent.csv"))
    assert not (tmp_path / "runs" / "s").exists()


def test_a_misspelled_bucket_is_an_error_and_never_created(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    proc = run("train.py", *SMOKE, "--storage", "gs://no-such-bucket-fer/runs", "--name", "x")
    assert_user_error(proc, "bucket gs://no-such-bucket-fer does not exist")
    client = gcs.Client(project="test", credentials=AnonymousCredentials())
    assert "no-such-bucket-fer" not in [b.name for b in client.list_buckets()]


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing_and_leaves_no_temp_files(tmp_path, gcs_prefix):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    proc = _popen("train.py", *SMOKE, "--storage", gcs_prefix, "--name", "r", "--epochs", "2", env=env)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    run_dir = storage.join(gcs_prefix, "r")
    saved = storage.read_text(storage.join(run_dir, "config.json"))
    proc = _popen("train.py", "--storage", gcs_prefix, "--name", "r", "--resume", "--epochs", "1", env=env)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert storage.read_text(storage.join(run_dir, "config.json")) == saved  # epochs stays 2
    leftovers = [n for n in os.listdir(tmp) if n.startswith("fer_dist_")]
    assert leftovers == [], leftovers
    kept = [n for n in storage.listdir(storage.join(run_dir, "checkpoints"))]
    assert checkpoint.name(2) in kept


@pytest.mark.slow
def test_outputs_are_readable_by_others(tmp_path):
    out = tmp_path / "runs"
    proc = run("train.py", *SMOKE, "--storage", str(out), "--name", "r", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("config.json", "model.keras", "history.csv", "checkpoints/epoch_0001/model.npz"):
        mode = stat.S_IMODE(os.stat(out / "r" / rel).st_mode)
        assert mode & 0o044 == 0o044, (rel, oct(mode))  # group and others may read (umask 022)


def test_tune_resume_keeps_the_saved_recipe(tmp_path):
    search = tmp_path / "s"
    search.mkdir()
    csv = write_tiny_csv(tmp_path / "d.csv")
    from fer_dist import config as C
    from fer_dist import tune

    base = C.resolve("quick", {"data": csv, "builtin_size": "700"})
    (search / "base_config.json").write_text(base.to_json())
    (search / "space.json").write_text(tune.space_json(tune.parse_space("quick", None)))
    saved, space = tune.saved_search(str(tmp_path), "s")
    assert saved == base and set(space) == set(tune.parse_space("quick", None))
    proc = run("tune.py", "--storage", str(tmp_path), "--name", "s", "--resume", "--set", "epochs=3")
    assert_user_error(proc, "--resume", "epochs")
    proc = run("tune.py", "--storage", str(tmp_path), "--name", "s", "--resume", "--space", "dropout=0.1:0.2")
    assert_user_error(proc, "--resume", "space.json")
    assert json.loads((search / "base_config.json").read_text()) == json.loads(base.to_json())
