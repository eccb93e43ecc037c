"""python benchmarks/compare.py OUT_DIR [--data PATH] [--minutes M] [--presets seed,best] [--set key=value ...]

Recipes side by side on equal time: every preset trains at the same time, each on its own CPU
core (or GPU share) with one TensorFlow thread, under the same wall-clock budget
(`train_minutes`), and is then scored by its own end-of-run evaluation on the validation split
(FER-2013's PublicTest; the preset's test-time augmentation). Each run is

    python jobs/train.py --data PATH --preset P --set weights=none --set train_minutes=M
        --set steps_per_epoch=IMAGES_PER_EPOCH/global_batch_size --epochs 1000 --storage OUT_DIR --name P --quiet

(`--set` adds overrides to every run; `--images-per-epoch` sets how often the runs validate,
checkpoint and take plateau decisions: "epochs" here are slices of that many training images).
Prints a table and writes OUT_DIR/compare.json; each run's log is OUT_DIR/P.log and its run
directory OUT_DIR/P. A run that exists already is not redone (its metrics are read back).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "fer2013", "fer2013.csv.gz")


def command(args, preset: str) -> list[str]:
    from fer_dist import config as C

    batch = C.resolve(preset, dict(o.split("=", 1) for o in args.set)).global_batch_size
    return [
        sys.executable,
        os.path.join(ROOT, "jobs", "train.py"),
        "--data",
        args.data,
        "--preset",
        preset,
        "--set",
        "weights=none",
        "--set",
        f"train_minutes={args.minutes:g}",
        "--set",
        f"steps_per_epoch={max(1, args.images_per_epoch // batch)}",
        *[x for o in args.set for x in ("--set", o)],
        "--epochs",
        "1000",
        "--storage",
        args.out_dir,
        "--name",
        preset,
        "--quiet",
    ]


def summarize(args, preset: str, cmd: list[str], wall: float | None) -> dict:
    import pandas as pd

    run_dir = os.path.join(args.out_dir, preset)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    history = pd.read_csv(os.path.join(run_dir, "history.csv"))
    steps = history["steps"] if "steps" in history else pd.Series([config["steps_per_epoch"]] * len(history))
    best = history[history["epoch"] == metrics["best_epoch"]].iloc[0]
    shown = [os.path.relpath(c, ROOT) if os.path.isabs(c) and c.startswith(ROOT) else c for c in cmd[1:]]
    return {
        "preset": preset,
        "command": "python " + " ".join(shown),
        "publictest_accuracy": metrics["val_accuracy"],
        "publictest_macro_f1": metrics["val_macro_f1"],
        "tta": metrics["tta"],
        "best_epoch": int(metrics["best_epoch"]),
        "best_epoch_val_accuracy_no_tta": float(best["val_accuracy"]),
        "epochs_run": int(history["epoch"].max()),
        "train_images_seen": int(steps.sum() * config["global_batch_size"]),
        "median_images_per_second": float(history["images_per_second"].median()),
        "loop_minutes": float(history["epoch_seconds"].sum() / 60),
        "wall_minutes": None if wall is None else wall / 60,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--minutes", type=float, default=30.0, help="train_minutes of every run")
    p.add_argument("--presets", default="seed,best")
    p.add_argument("--images-per-epoch", type=int, default=9600)
    p.add_argument("--set", action="append", default=[], help="key=value for every run")
    args = p.parse_args(argv)
    args.out_dir = os.path.abspath(args.out_dir)
    if args.data != "builtin" and "://" not in args.data:  # the runs start in the repository root
        args.data = os.path.abspath(args.data)
    os.makedirs(args.out_dir, exist_ok=True)
    presets = [x for x in args.presets.split(",") if x]
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")

    running, rows = {}, {}
    for i, preset in enumerate(presets):
        cmd = command(args, preset)
        if os.path.exists(os.path.join(args.out_dir, preset, "metrics.json")):
            rows[preset] = summarize(args, preset, cmd, None)
            continue
        core = {cores[i % len(cores)]}
        log = open(os.path.join(args.out_dir, f"{preset}.log"), "w")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda core=core: os.sched_setaffinity(0, core),
        )
        running[preset] = (proc, time.time(), cmd)
        print(f"started {preset} on core {sorted(core)}: {' '.join(cmd[1:])}", flush=True)
    for preset, (proc, start, cmd) in running.items():
        if proc.wait() != 0:
            for other, _, _ in running.values():  # the comparison is void: stop the rest
                if other.poll() is None:
                    other.terminate()
            print(f"error: {preset} failed (exit {proc.returncode}); see {args.out_dir}/{preset}.log", file=sys.stderr)
            return 1
        rows[preset] = summarize(args, preset, cmd, time.time() - start)

    ordered = [rows[p] for p in presets]
    json.dump(
        {"minutes": args.minutes, "data": args.data, "runs": ordered},
        open(os.path.join(args.out_dir, "compare.json"), "w"),
        indent=2,
    )
    print(
        f"\n| preset | PublicTest accuracy | TTA | epochs of {args.images_per_epoch} images | images seen | best epoch | img/s | loop min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in ordered:
        print(
            f"| {r['preset']} | {100 * r['publictest_accuracy']:.2f}% | {r['tta']} | {r['epochs_run']} | "
            f"{r['train_images_seen']} | {r['best_epoch']} | {r['median_images_per_second']:.0f} | {r['loop_minutes']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
