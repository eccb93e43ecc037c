"""What a user's console shows: no TensorFlow/absl/oneDNN/CUDA start-up banners, one line per
epoch, and the banner filter itself."""

from __future__ import annotations

import re

import pytest

from fer_dist import logs
from tests import jobs_helpers

BANNERS = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cuInit|Could not find cuda drivers|TF-TRT|"
    r"optimized to use available CPU instructions|Unable to register cu(DNN|FFT|BLAS) factory"
)


@pytest.mark.slow
def test_a_smoke_run_prints_no_banners_and_one_line_per_epoch(tmp_path):
    proc = jobs_helpers.run("train.py", "--preset", "smoke", "--storage", str(tmp_path), "--name", "s", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    banners = [line for line in proc.stderr.splitlines() if BANNERS.search(line)]
    assert banners == [], banners
    epochs = [line for line in proc.stderr.splitlines() if re.search(r" I epoch \d+/2: loss", line)]
    assert len(epochs) == 2, proc.stderr[-3000:]
    assert "exporting model.keras and saved_model/: the weights of epoch" in proc.stderr  # slow phases say what they do
    print(f"\nstderr {len(proc.stderr.splitlines())} lines, stdout {len(proc.stdout.splitlines())} lines")


def test_banner_filter_keeps_real_errors_and_drops_banners():
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1700000000.000000   123 port.cc:153] oneDNN custom operations are on. You may see ...",
        "E0000 00:00:1700000000.000000   123 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR (303)",
        "W0000 00:00:1700000000.000000   123 some.cc:1] a warning",
        "E0000 00:00:1700000000.000000   123 real.cc:9] something real broke",
        "a Python line",
    ]
    kept, cuda = logs.banner_filter(lines, gpu_machine=False)
    assert kept == [lines[4], lines[5]]
    assert cuda == ["failed call to cuInit: UNKNOWN ERROR (303)"]


JOBS = ("train", "tune", "evaluate", "predict", "export", "cache", "convert_weights")


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_has_help_and_choices_are_listed(job):
    import importlib

    import typer.main

    app = importlib.import_module(f"fer_dist.cli.{job}").app
    command = typer.main.get_command(app)
    commands = list(command.commands.values()) if hasattr(command, "commands") else [command]
    for cmd in commands:
        for param in cmd.params:
            assert (getattr(param, "help", None) or "").strip(), f"{job} {cmd.name}: {param.name} has no help"
    if job == "train":
        from click.testing import CliRunner

        shown = CliRunner().invoke(command, ["--help"], terminal_width=200).output
        assert "finetune" in shown and "seed" in shown, shown  # the presets, from the Enum
        assert "    python jobs/train.py --workers 2" in shown  # the examples keep their lines
