"""python benchmarks/workers.py OUT_DIR [w1,w2,w2kill]

1 Ray Train worker against 2 on the same job, and what one SIGKILLed worker costs. Each run is
`python jobs/train.py --workers N --preset quick --epochs 4 --storage OUT_DIR --name NAME --quiet`;
names starting with `w1` use 1 worker, others 2; names containing `kill` SIGKILL one worker 3 s
after the epoch-2 checkpoint appears. Prints (and writes OUT_DIR/workers.json) per run: wall time,
images/second per epoch and their median, final val/test accuracy. The kill cost is the kill run's
wall time minus an uninterrupted 2-worker run's. Each run's output is kept as OUT_DIR/NAME.log.
Needs psutil (`pip install -e ".[test]"`). tests/ray_workers.py holds a copy of `train_workers` for
tests/test_distributed.py (tests do not import benchmarks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = ["--preset", "quick", "--epochs", "4", "--quiet"]


def train_workers(session_id: int) -> list[psutil.Process]:
    """The Ray Train worker processes of a job started in its own session."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == session_id:
                found.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return found


def run(out_dir: str, name: str) -> dict:
    workers = 1 if name.startswith("w1") else 2
    start = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "jobs", "train.py"),
            "--workers",
            str(workers),
            "--name",
            name,
            "--storage",
            out_dir,
            *JOB,
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed_at = None
    if "kill" in name:
        run_dir = os.path.join(out_dir, name)
        while proc.poll() is None and killed_at is None:
            parent = os.path.join(run_dir, "checkpoints")
            names = os.listdir(parent) if os.path.isdir(parent) else []
            if sum(n.startswith("epoch_") for n in names) >= 2:
                time.sleep(3)  # into epoch 3
                victims = train_workers(proc.pid)
                if victims:
                    victims[-1].send_signal(signal.SIGKILL)
                    killed_at = round(time.time() - start, 1)
            time.sleep(0.2)
    out, _ = proc.communicate()
    wall = round(time.time() - start, 1)
    with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
        f.write(out)
    if proc.returncode:
        raise SystemExit(f"error: run {name} failed (exit {proc.returncode}); see {out_dir}/{name}.log")
    history = pd.read_csv(os.path.join(out_dir, name, "history.csv"))
    metrics = json.load(open(os.path.join(out_dir, name, "metrics.json")))
    return dict(
        name=name,
        workers=workers,
        wall_s=wall,
        killed_at_s=killed_at,
        epochs=list(map(int, history["epoch"])),
        img_s_per_epoch=[round(x, 1) for x in history["images_per_second"]],
        median_img_s=round(float(history["images_per_second"].median()), 1),
        val_accuracy=round(float(history["val_accuracy"].iloc[-1]), 4),
        test_accuracy=metrics.get("test_accuracy"),
    )


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__.splitlines()[0])
    out_dir = os.path.abspath(sys.argv[1])
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else ["w1", "w2", "w2kill"]
    os.makedirs(out_dir, exist_ok=True)
    taken = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
    if taken:
        raise SystemExit(f"error: {out_dir}: runs {', '.join(taken)} exist already; choose another OUT_DIR")
    results = []
    for name in names:
        results.append(run(out_dir, name))
        print(json.dumps(results[-1]), flush=True)
    plain = [r["wall_s"] for r in results if r["workers"] == 2 and r["killed_at_s"] is None]
    for r in results:
        if r["killed_at_s"] is not None and plain:
            r["kill_cost_s"] = round(r["wall_s"] - sum(plain) / len(plain), 1)
            print(f"{r['name']}: one worker kill cost {r['kill_cost_s']} s", flush=True)
    with open(os.path.join(out_dir, "workers.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
