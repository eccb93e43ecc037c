"""python benchmarks/data_memory.py [--n 20000] [--channels gray|rgb] [--out benchmarks/data_memory.json]

The memory a process spends on its data: an image folder of N and of 4N generated 48x48 faces
(PNG, 4 classes) is loaded with `data.load` and put into the training input pipeline
(`pipeline.train_dataset_fn`, 3 batches read), each size in a fresh process. Reported per size:
the process's anonymous memory (`Anonymous` of /proc/self/smaps_rollup: heap and mmap'd
allocations, what a memory-mapped file's pages are not) and its USS (private pages, file-backed
ones included), after TensorFlow is imported (the base) and after the pipeline has run; and the
bytes per image that the 4N - N difference implies. Writes JSON to --out and prints a summary.
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


def measure(folder: str, channels: str) -> dict:
    """Runs in a fresh process (`--child`): the memory before and after the data is loaded and fed."""
    import tensorflow as tf

    from fer_dist import config as C
    from fer_dist import data, pipeline

    base = memory()
    start = time.perf_counter()
    dataset = data.load(folder, channels=channels)
    loaded = memory()
    config = C.resolve("smoke", {"data": folder, "global_batch_size": "64"})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--channels", default="gray", choices=("gray", "rgb"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "data_memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.channels)))
        return
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fer_dist_memory_") as tmp:
        for n in (args.n, 4 * args.n):
            folder = os.path.join(tmp, str(n))
            write_folder(folder, n, args.channels)
            child = [sys.executable, __file__, "--child", folder, "--channels", args.channels]
            out = subprocess.run(
                child, capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=ROOT)
            )
            runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    small, big = runs[args.n], runs[4 * args.n]
    per_image = {
        kind: (big["fed"][kind] - small["fed"][kind]) / (big["images"] - small["images"])
        for kind in ("anonymous", "uss")
    }
    report = {
        "command": f"python benchmarks/data_memory.py --n {args.n} --channels {args.channels}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "runs": {str(n): r for n, r in runs.items()},
        "bytes_per_image": {k: round(v) for k, v in per_image.items()},
        "face_bytes": 48 * 48 * (3 if args.channels == "rgb" else 1),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    for r in runs.values():
        print(
            f"{r['images']} images: anonymous {r['base']['anonymous'] / 1e6:.0f} MB base -> "
            f"{r['fed']['anonymous'] / 1e6:.0f} MB fed; USS {r['base']['uss'] / 1e6:.0f} -> {r['fed']['uss'] / 1e6:.0f} MB"
        )
    print(
        f"per image ({report['face_bytes']} bytes of pixels): anonymous {per_image['anonymous']:.0f} bytes, "
        f"USS {per_image['uss']:.0f} bytes; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
