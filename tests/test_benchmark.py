"""benchmarks/throughput.py --smoke runs end to end and writes every figure (no timing assertions)."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # benchmarks run end to end as subprocesses


def test_throughput_smoke_writes_figures(repo_root, tmp_path):
    out = tmp_path / "x.json"
    # The Ray part (c) is covered by tests/test_distributed.py; here it would add a cluster start.
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--smoke", "--no-ray", "--output", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"a", "b", "b_cached"}
    for key, part in parts.items():
        assert part["images_per_second"] > 0, key
        assert len(part["windows"]) == 2 and all(w > 0 for w in part["windows"]), key
        assert part["peak_rss_mb"] > 0, key
    assert parts["b_cached"]["cache_build_seconds"] > 0 and parts["b_cached"]["cache_hit_before"] is False
    assert "loaded" in parts["b_cached"]["feature_cache_log"]
    assert "not used" in parts["b"]["feature_cache_log"]
    for key in ("b_over_a", "b_cached_over_a", "b_cached_over_b"):
        assert report["ratios"][key] > 0, key
    assert report["ratios"]["c_over_b_cached"] is None
    assert report["machine"]["cpus"] >= 1 and report["command"].startswith("python benchmarks/throughput.py")
    assert "img/s" in proc.stdout and "b'/a" in proc.stdout


def test_compare_runs_presets_side_by_side_on_equal_time(repo_root, tmp_path):
    """benchmarks/compare.py: two presets at once under one train_minutes budget, a table and compare.json."""
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "benchmarks/compare.py",
        str(out),
        "--data",
        "builtin",
        "--presets",
        "smoke,demo",
        "--minutes",
        "0.02",
        "--images-per-epoch",
        "64",
        "--set",
        "builtin_size=400",
    ]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "compare.json").read_text())
    assert [r["preset"] for r in report["runs"]] == ["smoke", "demo"] and report["minutes"] == 0.02
    for r in report["runs"]:
        assert 0.0 <= r["publictest_accuracy"] <= 1.0 and r["epochs_run"] >= 1
        assert r["epochs_run"] < 1000  # the budget, not the epochs, ended it
        assert "--set train_minutes=0.02" in r["command"] and "--set weights=none" in r["command"]
        assert r["command"].startswith("python jobs/train.py")
        assert (out / r["preset"] / "metrics.json").exists() and (out / f"{r['preset']}.log").exists()
    assert "| smoke |" in proc.stdout and "| demo |" in proc.stdout
    # A second call finds both runs done and only rebuilds the table.
    again = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "started" not in again.stdout, again.stdout + again.stderr[-2000:]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap pad is glibc's M_TOP_PAD")
def test_the_heap_pad_ends_the_page_faults_of_a_step_under_mwms(repo_root, tmp_path):
    """benchmarks/malloc_pad.py: the seed recipe's step under MultiWorkerMirroredStrategy maps
    fresh pages for its tensors every step unless fer_dist pads glibc's heap (as it does when
    imported); the figure is page faults, not time, so that a busy machine cannot move it."""
    out = tmp_path / "pad.json"
    cmd = [sys.executable, "benchmarks/malloc_pad.py", "--strategies", "mwms", "--steps", "3", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["heap_pad"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {True, False} and all(r["strategy"] == "mwms" for r in rows.values())
    assert rows[False]["page_faults_per_step"] > 10_000, rows  # 9.4 MB tensors mapped afresh, 4 KB at a time
    assert rows[True]["page_faults_per_step"] < rows[False]["page_faults_per_step"] / 5, rows


def test_the_bare_two_worker_step_runs_every_mode_and_names_the_best(repo_root, tmp_path):
    """benchmarks/mwms_pair.py: two processes joined by TF_CONFIG (no Ray) run the compiled
    step per wire mode; each row's figures come from both workers, and a wrong mode is one
    error line. A plumbing check on the dense model (no timing assertions)."""
    out = tmp_path / "pair.json"
    cmd = [sys.executable, "benchmarks/mwms_pair.py", "--model", "dense", "--steps", "3"]
    cmd += ["--modes", "float32,powersgd1", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["rows"]] == ["float32", "powersgd1"]
    for row in report["rows"]:
        assert len(row["workers"]) == 2 and row["ms_per_step"] == max(w["ms_per_step"] for w in row["workers"])
        assert row["efficiency"] == round(report["p1"]["ms_per_step"] / row["ms_per_step"], 3)
    assert "efficiency of the bare 2-worker step at global batch 64 (" in proc.stdout.splitlines()[-1]
    bad = subprocess.run([*cmd[:2], "--modes", "float64"], cwd=repo_root, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --modes: unknown float64 (choose from float32, bfloat16, powersgd1, powersgd4)"
    ]


def test_the_gpu_benchmark_needs_a_gpu_or_says_so_and_runs_its_cases_on_the_cpu_when_told(repo_root, tmp_path):
    """benchmarks/gpu.py: without a GPU, one error line and exit 2; with --allow-cpu, a case (the
    seed recipe's step under mixed precision and XLA, in its own process) runs and is written. A
    plumbing check: no timing assertions."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--output", str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")  # the no-GPU paths, also on a machine with one
    bad = subprocess.run(
        [*cmd, "--variants", "float32,fp8"], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --variants: unknown fp8 (choose from float32, mixed, xla, mixed_xla)"
    ]
    refused = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and not out.exists()
    assert refused.stderr.strip().splitlines()[-1].startswith("error: no GPU visible to TensorFlow")
    cmd += "--allow-cpu --recipes seed --variants mixed_xla --steps 2 --warmup 1 --batch 16".split()
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["gpu"] is None and report["command"].startswith("python benchmarks/gpu.py")
    (case,) = report["cases"]
    assert (case["recipe"], case["variant"], case["batch"], case["peak_gpu_mb"]) == ("seed", "mixed_xla", 16, None)
    # the report rounds images/s to 0.1: on a slow CPU (2.9 img/s) that alone is over 1%
    assert case["images_per_second"] == pytest.approx(16 / case["ms_per_step"] * 1e3, rel=0.01, abs=0.05)
    assert "fastest for seed: mixed_xla" in proc.stdout
