"""python benchmarks/presets.py [--presets smoke,demo,seed] [--data PATH] [--output benchmarks/presets.json] [--table]

The figures of the README's preset table, measured on this machine and written with the machine
named (CPU model, cores, AVX-512 or not): each preset trains as a user runs it,

    python jobs/train.py --preset P [--data PATH --set weights=none] --storage TMP --name P --quiet

and the record keeps its wall time, val and test accuracy, the epoch exported (and the monitored
metric that chose it), the epochs run, and the size of its run directory split into checkpoints/,
saved_model/, model.keras and the rest. `seed` runs one epoch capped at 200 steps on FER-2013
(`--data`, default ../shared/data/fer2013/fer2013.csv.gz) with random weights (ImageNet weights
need a download): the size of a seed run does not depend on how long it trains, and its accuracy
figure is left out. `--table` prints the README rows from the file without running anything.

Runs are deterministic per machine only: another CPU gives other figures, so every figure of the
README names the machine this file names.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "fer2013", "fer2013.csv.gz")
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "presets.json")
SEED_SETS = ["--set", "weights=none", "--epochs", "1", "--set", "steps_per_epoch=200"]


def machine() -> dict:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "gpu": "none",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def sizes(run_dir: str) -> dict:
    """Bytes of the run directory and of its large parts."""
    parts = {name: _size(os.path.join(run_dir, name)) for name in ("checkpoints", "saved_model", "model.keras")}
    total = _size(run_dir)
    return dict(parts, other=total - sum(parts.values()), total=total)


def run_preset(preset: str, data: str, workdir: str) -> dict:
    extra = ["--data", data, *SEED_SETS] if preset == "seed" else []
    command = [sys.executable, "jobs/train.py", "--preset", preset, *extra, "--storage", workdir, "--name", preset]
    start = time.perf_counter()
    proc = subprocess.run([*command, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {preset}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    run_dir = os.path.join(workdir, preset)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    record = {
        "command": " ".join(["python", *command[1:]]).replace(workdir, "runs"),
        "wall_seconds": round(seconds, 1),
        "epochs_run": metrics.get("epochs_run"),
        "best_epoch": metrics.get("best_epoch"),
        "monitor": metrics.get("monitor"),
        "sizes": sizes(run_dir),
    }
    if preset != "seed":  # one capped epoch from random weights says nothing about the recipe
        record.update(val_accuracy=metrics.get("val_accuracy"), test_accuracy=metrics.get("test_accuracy"))
    return record


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured by `python benchmarks/presets.py` on {m['cpu']} ({m['cores']} cores, "
        f"{'with' if m['avx512'] else 'without'} AVX-512, no GPU), {report['date']}.",
        "",
        "| preset | time | val / test accuracy | run directory | checkpoints | saved_model/ | model.keras |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, r in report["presets"].items():
        s = r["sizes"]
        accuracy = (
            f"{100 * r['val_accuracy']:.2f}% / {100 * r['test_accuracy']:.2f}%"
            if r.get("val_accuracy") is not None and r.get("test_accuracy") is not None
            else "not measured (1 capped epoch)"
        )
        lines.append(
            f"| `{preset}` | {r['wall_seconds']:.0f} s | {accuracy} | {mb(s['total'])} | {mb(s['checkpoints'])} | "
            f"{mb(s['saved_model'])} | {mb(s['model.keras'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="smoke,demo,seed")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--table", action="store_true", help="print the README rows of --output; run nothing")
    args = p.parse_args(argv)
    if args.table:
        with open(args.output) as f:
            print(table(json.load(f)))
        return 0
    presets = [x for x in args.presets.split(",") if x]
    if "seed" in presets and not os.path.exists(args.data):
        print(f"error: --data {args.data}: no such file (the seed preset trains on FER-2013)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="fer_presets_")
    try:
        report = {
            "command": "python benchmarks/presets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "presets": {},
        }
        for preset in presets:
            print(f"[presets] {preset} ...", flush=True)
            report["presets"][preset] = run_preset(preset, args.data, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
