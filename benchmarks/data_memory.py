"""python benchmarks/data_memory.py [--n 20000] [--channels gray|rgb] [--out benchmarks/data_memory.json]

The memory a process spends on its data: an image folder of N and of 4N generated 48x48 faces
(PNG, 4 classes), loaded as a run loads it (`decoded.load_for`) and put into the training input
pipeline (`pipeline.train_dataset_fn`, 3 batches read), each size in a fresh process; with the
decoded-data cache (built by an earlier process, as the driver of a Ray run builds it before its
workers start) and without it (`data_cache=false`). Reported: the process's anonymous memory
(`Anonymous` of /proc/self/smaps_rollup: heap and mmap'd allocations, what a memory-mapped
file's pages are not) and its USS (private pages, file-backed ones included), after TensorFlow is
imported (the base) and after the pipeline has run; and the bytes per image that the 4N - N
difference implies. Writes JSON to --out and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def memory() -> dict:
    """{anonymous, uss} bytes of this process, from /proc/self/smaps_rollup."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"anonymous": fields["Anonymous"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def write_folder(root: str, n: int, channels: str) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % 4
        folder = os.path.join(root, "train", f"class{label}")
        os.makedirs(folder, exist_ok=True)
        shape = (48, 48, 3) if channels == "rgb" else (48, 48)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))


def measure(folder: str, channels: str, cache: bool) -> dict:
    """Runs in a fresh process (`--child`): the memory before and after the data is loaded and fed."""
    import tensorflow as tf

    from fer_dist import config as C
    from fer_dist import decoded, pipeline

    base = memory()
    start = time.perf_counter()
    sets = {"data": folder, "global_batch_size": "64", "channels": channels, "data_cache": str(cache).lower()}
    config = C.resolve("smoke", sets)
    dataset = decoded.load_for(config)
    loaded = memory()
    steps = pipeline.steps_per_epoch(len(dataset.train), config)
    fn = pipeline.train_dataset_fn(dataset.train, config, 0, 1, steps)
    strategy = tf.distribute.get_strategy()
    batches = iter(strategy.distribute_datasets_from_function(fn))
    for _ in range(3):
        next(batches)
    fed = memory()
    return {
        "images": len(dataset.train) + len(dataset.val),
        "base": base,
        "loaded": loaded,
        "fed": fed,
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarise(runs: dict, n: int) -> dict:
    small, big = runs[n], runs[4 * n]
    per_image = {
        kind: round((big["fed"][kind] - small["fed"][kind]) / (big["images"] - small["images"]))
        for kind in ("anonymous", "uss")
    }
    return {"runs": {str(k): r for k, r in runs.items()}, "bytes_per_image": per_image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--channels", default="gray", choices=("gray", "rgb"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "data_memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.channels, args.cache == "true")))
        return
    report = {
        "command": f"python benchmarks/data_memory.py --n {args.n} --channels {args.channels}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "face_bytes": 48 * 48 * (3 if args.channels == "rgb" else 1),
    }
    with tempfile.TemporaryDirectory(prefix="fer_dist_memory_") as tmp:
        env = dict(os.environ, PYTHONPATH=ROOT, FER_DIST_DATA_CACHE=os.path.join(tmp, "cache"))
        for n in (args.n, 4 * args.n):
            write_folder(os.path.join(tmp, str(n)), n, args.channels)
        for cache in ("false", "true"):
            runs = {}
            for n in (args.n, 4 * args.n):
                child = [sys.executable, __file__, "--child", os.path.join(tmp, str(n)), "--channels", args.channels]
                child += ["--cache", cache]
                if cache == "true":  # built first, in another process
                    subprocess.run(child, capture_output=True, text=True, check=True, env=env)
                out = subprocess.run(child, capture_output=True, text=True, check=True, env=env)
                runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
            report["with_cache" if cache == "true" else "without_cache"] = summarise(runs, args.n)
    with open(args.out, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    for name in ("without_cache", "with_cache"):
        part = report[name]
        for r in part["runs"].values():
            print(
                f"{name}: {r['images']} images: anonymous {r['base']['anonymous'] / 1e6:.0f} MB base -> "
                f"{r['fed']['anonymous'] / 1e6:.0f} MB fed; USS {r['base']['uss'] / 1e6:.0f} -> "
                f"{r['fed']['uss'] / 1e6:.0f} MB"
            )
        per = part["bytes_per_image"]
        print(
            f"{name}: per image ({report['face_bytes']} bytes of pixels): "
            f"anonymous {per['anonymous']} bytes, USS {per['uss']} bytes"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
