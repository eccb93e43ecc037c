"""python benchmarks/batch.py [--crops 10000] [--photos 200] [--workers 1,2] [--out benchmarks/batch.json]

Images per second of batch inference on Ray (`python jobs/predict.py DIR --run RUN --workers N
--output OUT`), run as a user runs it, on a private Ray cluster of this machine:

- face crops: `--crops` random 48x48 PNGs (read whole: no detection), with the `smoke` model and
  the `seed` model (ResNet50; untrained weights, the same compute as trained ones);
- photos: `--photos` generated 640x480 photos holding 1 to 3 enlarged faces each
  (`synthetic.photo_with_faces`), found by MTCNN inside the workers, with the `smoke` model.

Each figure is the job's last progress line: images/s from the start of scoring (the workers'
start and model load included, the cluster's start not: `wall_s` has the whole command) and
after its first shard. Writes JSON to --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RATE = re.compile(r"batch: \d+/\d+ shards, .* ([\d.]+) images/s(?: \(([\d.]+) after the first shard\))?")


def write_crops(directory: str, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(directory)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").save(f"{directory}/img_{i:05d}.png")


def write_photos(directory: str, n: int) -> int:
    """n photos of 1 to 3 faces each; returns how many faces were pasted."""
    from fer_dist import synthetic

    face = synthetic.sample_face()
    variants = [face, face[:, ::-1], face.mean(axis=2).astype(np.uint8)]
    os.makedirs(directory)
    pasted = 0
    for i in range(n):
        k = 1 + i % 3
        picture, _ = synthetic.photo_with_faces([variants[(i + j) % 3] for j in range(k)], sides=(100, 160), seed=i)
        picture.save(f"{directory}/photo_{i:04d}.jpg", quality=92)
        pasted += k
    return pasted


def measure(source: str, run_dir: str, workers: int, shard_files: int, scratch: str) -> dict:
    output = tempfile.mkdtemp(dir=scratch, prefix="out")
    os.rmdir(output)
    args = [source, "--run", run_dir, "--workers", str(workers), "--output", output, "--shard-files", str(shard_files)]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "predict.py"), *args], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"the batch job failed:\n{proc.stderr[-3000:]}")
    rates = RATE.findall(proc.stderr)
    whole, steady = rates[-1]
    faces = int(re.findall(r"(\d+) faces, ", proc.stderr)[-1])
    return {
        "workers": workers,
        "images_per_s": float(whole),
        "after_first_shard": float(steady) if steady else None,
        "faces": faces,
        "wall_s": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "batch.json"))
    args = parser.parse_args()
    from tests.saved_run import save_untrained_run

    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = {p: save_untrained_run(os.path.join(scratch, p), p, weights="none") for p in ("smoke", "seed")}
        crops, photos = os.path.join(scratch, "crops"), os.path.join(scratch, "photos")
        write_crops(crops, args.crops)
        pasted = write_photos(photos, args.photos)
        cases = [("crops", crops, "smoke", 500), ("crops", crops, "seed", 500), ("photos", photos, "smoke", 20)]
        for kind, source, preset, shard in cases:
            for n in workers:
                row = {"input": kind, "model": preset, **measure(source, runs[preset], n, shard, scratch)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    from benchmarks.presets import machine

    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "crops": args.crops,
        "photos": args.photos,
        "faces_pasted": pasted,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'input':8} {'model':6} {'workers':>7} {'images/s':>9} {'steady':>7} {'faces':>6}")
    for r in rows:
        steady = f"{r['after_first_shard']:.1f}" if r["after_first_shard"] else "-"
        print(f"{r['input']:8} {r['model']:6} {r['workers']:7d} {r['images_per_s']:9.1f} {steady:>7} {r['faces']:6d}")


if __name__ == "__main__":
    main()
