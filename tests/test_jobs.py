"""The jobs as a user runs them: `python jobs/train.py ...`, `python jobs/evaluate.py ...`."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from tests import jobs_helpers
from tests.tiny import write_tiny_csv

ROOT = jobs_helpers.ROOT
run, assert_user_error = jobs_helpers.run, jobs_helpers.assert_user_error


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--preset", "nope"], ["--preset 'nope': expected one of seed, smoke"]),
        (["--epochs", "-1"], ["epochs=-1"]),
        (["--set", "dropout=1.5"], ["dropout=1.5", "[0, 1)"]),
        (["--set", "colour=blue"], ["unknown config key 'colour'"]),
        (["--workers", "-2"], ["--workers -2"]),
        (["--data", "/nonexistent/fer.csv", "--preset", "smoke"], ["/nonexistent/fer.csv", "no such file"]),
        (["--resume"], ["--resume needs --name"]),
    ],
)
def test_bad_flags(flags, needles, tmp_path):
    assert_user_error(run("train.py", "--output", str(tmp_path), *flags), *needles)


def test_malformed_csv_row_names_file_and_line(tmp_path):
    csv = tmp_path / "bad.csv"
    good = " ".join(["7"] * 2304)
    csv.write_text(f"emotion,pixels,Usage\n0,{good},Training\n3,{good} 9,Training\n")
    assert_user_error(
        run("train.py", "--data", str(csv), "--preset", "smoke", "--output", str(tmp_path)), "bad.csv line 3", "2305"
    )


@pytest.mark.slow  # trains end to end in subprocesses
def test_train_refuse_overwrite_resume_and_evaluate(tmp_path):
    data = write_tiny_csv(tmp_path / "tiny.csv", n_train=224, n_val=70, n_test=70)
    args = ["--data", data, "--preset", "smoke", "--output", str(tmp_path / "runs"), "--name", "r1", "--quiet"]
    first = run("train.py", *args, "--epochs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r1"
    assert "run directory:" in first.stdout and "test_accuracy:" in first.stdout
    for name in (
        "config.json",
        "history.csv",
        "metrics.json",
        "curves.png",
        "val_confusion.csv",
        "val_confusion.png",
        "test_confusion.csv",
        "val_mistakes.png",
        "model.keras",
    ):
        assert (run_dir / name).exists(), name
    before = (run_dir / "metrics.json").read_text()

    again = run("train.py", *args, "--epochs", "2")
    assert_user_error(again, "already exists", "--resume")
    assert (run_dir / "metrics.json").read_text() == before  # nothing overwritten

    changed = run("train.py", *args, "--resume", "--set", "dropout=0.1")
    assert_user_error(changed, "cannot change dropout")

    resumed = run("train.py", *args, "--resume", "--epochs", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at epoch 3" in resumed.stderr
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [1, 2, 3]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3

    evaluated = run("evaluate.py", str(run_dir), "--data", data, "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "macro-F1" in evaluated.stdout
    out = run_dir / "evaluations" / "tiny-val" / "metrics.json"
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["val_accuracy"], abs=1e-6
    )
    assert (run_dir / "evaluations" / "tiny-val" / "val_confusion.png").exists()

    ensemble = run("evaluate.py", str(run_dir), str(run_dir), "--data", data, "--output", str(tmp_path / "ens"))
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    assert "ensemble of 2 runs" in ensemble.stdout

    assert_user_error(run("evaluate.py", str(tmp_path / "nope"), "--data", data), "not a run directory")
    assert_user_error(run("evaluate.py", str(run_dir), "--data", data, "--split", "dev"), "--split 'dev'")


def test_evaluate_refuses_to_overwrite_mixed_ensembles_and_missing_splits(tmp_path):
    from tests.saved_run import save_untrained_run

    data = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    other = write_tiny_csv(tmp_path / "other.csv", n_train=70, n_val=21, seed=5)
    private = write_tiny_csv(tmp_path / "private.csv", n_train=0, n_val=0, n_test=14)
    a = save_untrained_run(tmp_path / "a", data=data)
    b = save_untrained_run(tmp_path / "b", data=other)
    out = tmp_path / "eval"

    first = run("evaluate.py", a, "--data", data, "--split", "val", "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "metrics.json" in kept and "val_confusion.png" in kept
    again = run("evaluate.py", a, "--data", data, "--split", "val", "--tta", "flip", "--output", str(out))
    assert_user_error(again, f"--output {out} already holds an evaluation (metrics.json)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept

    assert_user_error(
        run("evaluate.py", a, b, "--data", data),
        f"cannot ensemble {a} and {b}: trained on different data",
        "tiny.csv",
        "other.csv",
    )
    assert_user_error(
        run("evaluate.py", a, "--data", private, "--split", "val"),
        f"{private} has no val split",
        "test (PrivateTest rows)",
    )
    assert not (tmp_path / "a" / "evaluations").exists() and not (tmp_path / "b" / "evaluations").exists()


@pytest.mark.parametrize("job", ["train", "tune", "evaluate", "predict", "export", "cache", "convert_weights"])
def test_help_keeps_examples_whole_and_reflows_prose_when_piped(job):
    """`--help` piped (80 columns): each usage example of the job's docstring is one line, as
    written; no paragraph is broken mid-sentence; no flag shows a Python type as its value."""
    import importlib
    import subprocess
    import sys

    doc = importlib.import_module(f"fer_dist.cli.{job}").__doc__
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("python ")]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", f"{job}.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    lines = [line.strip() for line in out.splitlines()]
    assert examples and all(example in lines for example in examples), (examples, out)
    assert "<str>" not in out and "<list[str]>" not in out and "<bool>" not in out, out
    assert "╭" not in out  # no box-drawing panels: plain text that pipes and wraps cleanly
