"""python benchmarks/compression_accuracy.py [--data PATH] [--seeds 1,2,3] [--modes none,powersgd4,powersgd1]
    [--optimizers adam,adam-frozen,sgd] [--steps 100] [--epochs 4] [--resume-after N] [--output benchmarks/compression_accuracy.json]

Does PowerSGD cost accuracy? The seed recipe (`weights=none`: ImageNet weights cannot be
downloaded here; the frozen trunk's features cached) trained by `jobs/train.py --workers 2` on
FER-2013 (Training rows; PublicTest, 3,589 faces, as validation) with the same steps, once per gradient mode and optimizer and seed, each run's best val_accuracy reported:

  none        every gradient all-reduced whole (float32)
  powersgdR   PowerSGD at rank R after `--start-step` uncompressed steps

Optimizers: `adam` (the seed recipe's), `adam-frozen` (Adam with `adam_variance=frozen`: its
second moment held from step `--start-step` on, also in the uncompressed runs), `sgd` (momentum
0.9, learning rate 0.01, as the PowerSGD paper).

`--resume-after N`: every run stops after epoch N and is resumed (`jobs/train.py --resume`) for
the rest, as after a lost driver: PowerSGD's Q and error buffers are not checkpointed, so a
resumed compressed run restarts them; compared with the same runs uninterrupted, that is the
reset's effect on accuracy (an uncompressed run resumes exactly). The first part runs with
`--epochs N`, which the seed recipe's plateau schedule does not depend on (a cosine schedule
would: it spans `epochs`).

Prints a table (mean and spread over the seeds per mode and optimizer) and writes JSON. The runs
differ only in `gradient_compression`/`powersgd_rank`: the same seed gives the same data order,
augmentation and initial weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fer2013", "fer2013.csv.gz")
BASE = ["--preset", "seed", "--set", "weights=none", "--set", "early_stop_patience=0", "--quiet"]


def mode_args(mode: str) -> list[str]:
    if mode == "none":
        return []
    sets = ["gradient_compression=powersgd", f"powersgd_rank={int(mode.removeprefix('powersgd'))}"]
    return [a for s in sets for a in ("--set", s)]


OPTIMIZERS = ("adam", "adam-frozen", "sgd")


def optimizer_args(optimizer: str) -> list[str]:
    if optimizer == "sgd":  # SGD with momentum, as the PowerSGD paper; a learning rate for it
        return ["--set", "optimizer=sgd", "--set", "momentum=0.9", "--set", "learning_rate=0.01"]
    if optimizer == "adam-frozen":  # Adam's second moment held from step --start-step on, in every mode
        return ["--set", "optimizer=adam", "--set", "adam_variance=frozen"]
    return ["--set", "optimizer=adam"]


def run(name: str, args: list[str], storage: str, resume_after: int = 0) -> dict:
    """One training run; `resume_after` > 0: stopped after that epoch (`--epochs N`), then resumed."""
    cmd = [sys.executable, os.path.join(REPO, "jobs", "train.py"), "--workers", "2", "--address", "local"]
    cmd += ["--storage", storage, "--name", name, *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    start = time.time()
    parts = [cmd + ["--epochs", str(resume_after)], cmd + ["--resume"]] if resume_after else [cmd]
    for part in parts:  # a later --epochs wins (Typer keeps the last)
        proc = subprocess.run(part, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"error: {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    import pandas as pd

    history = pd.read_csv(os.path.join(storage, name, "history.csv"))
    return {
        "best_val_accuracy": round(float(history["val_accuracy"].max()), 4),
        "last_val_accuracy": round(float(history["val_accuracy"].iloc[-1]), 4),
        "val_accuracy": [round(float(v), 4) for v in history["val_accuracy"]],
        "wall_s": round(time.time() - start, 1),
    }


def write_report(args, argv, described: str, results: list[dict]) -> list[dict]:
    """benchmarks/compression_accuracy.json with the runs so far; returns the summary (mean and
    spread of the best val accuracy over the seeds, per optimizer and mode)."""
    summary = []
    for optimizer in args.optimizers.split(","):
        for mode in args.modes.split(","):
            best = [r["best_val_accuracy"] for r in results if r["optimizer"] == optimizer and r["mode"] == mode]
            if best:
                spread = statistics.pstdev(best) if len(best) > 1 else 0.0
                summary.append(
                    {
                        "optimizer": optimizer,
                        "mode": mode,
                        "seeds": len(best),
                        "mean": statistics.mean(best),
                        "sd": spread,
                    }
                )
    report = {
        "data": described,
        "command": "python benchmarks/compression_accuracy.py " + " ".join(argv or sys.argv[1:]),
    }
    report.update(vars(args), runs=results, summary=summary)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--modes", default="none,powersgd4,powersgd1")
    parser.add_argument("--optimizers", default="adam,sgd")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--start-step", type=int, default=50, help="powersgd_start_step of the compressed runs")
    parser.add_argument("--resume-after", type=int, default=0, help="stop every run after this epoch and resume it")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "compression_accuracy.json"))
    args = parser.parse_args(argv)
    for optimizer in args.optimizers.split(","):
        if optimizer not in OPTIMIZERS:
            parser.exit(2, f"error: --optimizers {optimizer!r}: expected some of {', '.join(OPTIMIZERS)}\n")
    if not 0 <= args.resume_after < args.epochs:
        parser.exit(2, f"error: --resume-after {args.resume_after}: an epoch before the last ({args.epochs})\n")
    results, summary = [], []
    with tempfile.TemporaryDirectory(prefix="fer_compression_") as work:
        data, described = args.data, f"{args.data}: Training rows, PublicTest as validation"
        common = [*BASE, "--data", data, "--epochs", str(args.epochs), "--set", f"steps_per_epoch={args.steps}"]
        # the compressed runs' warm-up, and where adam-frozen holds the variance (no-op otherwise)
        common += ["--set", f"global_batch_size={args.batch}", "--set", f"powersgd_start_step={args.start_step}"]
        for optimizer in args.optimizers.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                for mode in args.modes.split(","):
                    name = f"{optimizer}-s{seed}-{mode}"
                    extra = [*optimizer_args(optimizer), *mode_args(mode), "--set", f"seed={seed}"]
                    row = {
                        "optimizer": optimizer,
                        "seed": seed,
                        "mode": mode,
                        **run(name, [*common, *extra], work, args.resume_after),
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    summary = write_report(args, argv, described, results)  # after every run: a partial one counts
    print("| optimizer | mode | seeds | best val accuracy, mean over seeds | sd |\n|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['optimizer']} | {s['mode']} | {s['seeds']} | {s['mean']:.4f} | {s['sd']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
