"""Spot preemption in a plain process: SIGTERM mid-epoch -> a checkpoint at that step, exit 143;
`--resume` continues at that step and ends where an uninterrupted run of the same size ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from fer_dist import checkpoint
from tests import jobs_helpers

ROOT = jobs_helpers.ROOT
# ~100 steps an epoch of a few ms each, so that a signal lands mid-epoch; deterministic ops
# make "the same run" exact.
RECIPE = [
    "--preset",
    "smoke",
    "--quiet",
    "--epochs",
    "2",
    "--set",
    "global_batch_size=8",
    "--set",
    "builtin_size=1200",
    "--set",
    "deterministic=true",
]
COMPARED = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "steps"]


def _start(*args: str) -> subprocess.Popen:
    return jobs_helpers.start("train.py", *args)


def _signal_mid_epoch(proc: subprocess.Popen, sig: int, marker: str = "epoch 2: ") -> tuple[list[str], float]:
    """Sends `sig` when the log shows epoch 2 under way; returns the log lines and when it was sent."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.split(" ", 2)[-1].startswith(marker) and "steps" in line:
            proc.send_signal(sig)
            return lines, time.monotonic()
    raise AssertionError("the run ended before epoch 2 was under way:\n" + "".join(lines[-40:]))


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_at_the_step_and_resume_matches(tmp_path):
    out = str(tmp_path / "runs")
    whole = jobs_helpers.run("train.py", *RECIPE, "--storage", out, "--name", "whole", timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    proc = _start(*RECIPE, "--storage", out, "--name", "cut")
    lines, sent = _signal_mid_epoch(proc, signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest[-3000:]
    assert time.monotonic() - sent < 30
    said = [line for line in rest.splitlines() if "SIGTERM: checkpoint at epoch 2 step" in line]
    assert len(said) == 1 and "exiting with status 143" in said[0], rest[-3000:]
    parent = tmp_path / "runs" / "cut" / "checkpoints"
    steps = [n for n in os.listdir(parent) if "_step_" in n]
    assert len(steps) == 1 and steps[0].startswith("epoch_0002_step_"), os.listdir(parent)
    facts = checkpoint.info(str(parent / steps[0]))
    assert facts.epoch == 1 and 0 < facts.step and facts.val_accuracy is None
    assert checkpoint.verify(str(parent / steps[0])) is None

    resumed = jobs_helpers.run("train.py", "--storage", out, "--name", "cut", "--resume", "--quiet", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after step {facts.step} of epoch 2" in resumed.stderr
    a = pd.read_csv(tmp_path / "runs" / "whole" / "history.csv")[COMPARED]
    b = pd.read_csv(tmp_path / "runs" / "cut" / "history.csv")[COMPARED]
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)
    # The step checkpoint is not the newest any more: the one retention policy dropped it.
    assert not [n for n in os.listdir(parent) if "_step_" in n], os.listdir(parent)


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
    out = str(tmp_path / "runs")
    proc = _start(*RECIPE, "--storage", out, "--name", "c")
    _signal_mid_epoch(proc, signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGINT, rest[-3000:]
    assert "SIGINT: checkpoint at epoch 2 step" in rest and "Traceback" not in rest, rest[-3000:]
