"""python benchmarks/throughput.py [--data PATH] [--steps N] [--windows W] [--no-ray] [--smoke] [--output benchmarks/results.json]

Training throughput of the seed recipe's model (ResNet50 weights=none, the first 143 layers
frozen, head (1024, 512), 48 px, batch 32, Adam) measured side by side in one run:

  a   the seed-style baseline: the training split as NumPy float32 arrays (gray -> 3 channels,
      `preprocess_input`), `model.compile(...)` + `model.fit(x, y, batch_size=32)`, one process;
  b   fer_dist's loop (`train.fit`) with its tf.data pipeline over uint8 images, `feature_cache=false`;
  b'  the same with the frozen-trunk feature cache (`fer_dist/features.py`); the time to build
      the cache (prefix features of the train and val splits, stored) is reported separately;
  c   fer_dist on 2 Ray Train workers (`launch.make_trainer(...).fit()`, MultiWorkerMirroredStrategy,
      1 CPU each, the cache built by b' loaded by both), images/second from the history rows.

Each of a, b, b' runs in its own subprocess (so that its peak resident memory is its own). Every
part trains 1 + W windows of N steps: the first is warm-up (graph tracing) and excluded; the
figure is the median images/second over the W timed windows (a: from per-batch timestamps of a
Keras callback; b, b', c: the loop's `images_per_second` of epochs 2..W+1, `steps_per_epoch=N`).
Peak memory: the process's ru_maxrss (a, b, b'); for c, the Ray workers' resident memory sampled
every 0.5 s with psutil (max per worker).

Data: FER-2013's Training rows (all of them) and the first 320 PublicTest rows as the validation
split (the per-epoch evaluation is not timed; a small one keeps the run short), written to a
temporary CSV that every part, the Ray workers included, loads, so that the cache entry b'
builds is the one c's workers find. `--smoke`: seconds-scale sanity run on a few hundred
built-in images at 32 px with a small head (numbers meaningless, keys and plumbing checked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fer2013", "fer2013.csv.gz")
VAL_ROWS = 320
PARTS = ("a", "b", "b_cached")
LABELS = {
    "a": "a  seed-style Keras model.fit (NumPy float arrays)",
    "b": "b  fer_dist loop + tf.data, feature_cache=false",
    "b_cached": "b' fer_dist loop, feature cache",
    "c": "c  fer_dist, 2 Ray workers (MWMS), feature cache",
}


# ---------------------------------------------------------------------------------
# Configuration shared by every part.
# ---------------------------------------------------------------------------------
def bench_config(args, data: str, cache_dir: str, feature_cache: bool):
    from fer_dist import config as C

    overrides = {
        "data": data,
        "weights": "none",
        "epochs": str(1 + args.windows),
        "steps_per_epoch": str(args.steps),
        "early_stop_patience": "0",
        "feature_cache": str(feature_cache).lower(),
        "feature_cache_dir": cache_dir,
    }
    if args.smoke:
        overrides.update(builtin_size="280", image_size="32", head_units="32")
    return C.resolve("seed", overrides)


def load_dataset(config):
    from fer_dist import data

    return data.load(config.data, val_fraction=config.val_fraction, seed=config.seed, builtin_size=config.builtin_size)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _windows(values: list[float]) -> dict:
    return {"images_per_second": statistics.median(values), "windows": [round(v, 2) for v in values]}


# ---------------------------------------------------------------------------------
# The parts that run in a subprocess each.
# ---------------------------------------------------------------------------------
def part_a(args, data: str, cache_dir: str) -> dict:
    """The seed's way: float arrays in memory, Keras compile + fit."""
    import keras
    import numpy as np

    from fer_dist import model as model_lib

    config = bench_config(args, data, cache_dir, feature_cache=False)
    dataset = load_dataset(config)
    gray = dataset.train.images.astype(np.float32)
    if gray.shape[1] != config.image_size:
        import tensorflow as tf

        gray = tf.image.resize(gray[..., None], (config.image_size, config.image_size)).numpy()[..., 0]
    x = keras.applications.resnet50.preprocess_input(np.repeat(gray[..., None], 3, axis=-1))
    y = dataset.train.labels.astype(np.int32)
    del gray
    keras.utils.set_random_seed(config.seed)
    model = model_lib.build(config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    stamps: list[float] = []

    class Stamps(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    total = (1 + args.windows) * args.steps
    if total * config.global_batch_size > len(y):
        raise SystemExit(f"{total} steps of {config.global_batch_size} need more than the {len(y)} training images")
    model.fit(
        x,
        y,
        batch_size=config.global_batch_size,
        epochs=1,
        steps_per_epoch=total,
        shuffle=True,
        verbose=0,
        callbacks=[Stamps()],
    )
    values = []
    for w in range(1, 1 + args.windows):  # window 0 (steps 1..N) is warm-up
        t0, t1 = stamps[w * args.steps], stamps[(w + 1) * args.steps]
        values.append(args.steps * config.global_batch_size / (t1 - t0))
    return dict(_windows(values), train_images=len(y), input_array_mb=round(x.nbytes / 2**20, 1))


def _fit_part(args, data: str, cache_dir: str, feature_cache: bool) -> dict:
    from fer_dist import features, steps, train
    from fer_dist import model as model_lib
    from fer_dist.sessions import LocalSession

    config = bench_config(args, data, cache_dir, feature_cache=feature_cache)
    dataset = load_dataset(config)
    out: dict = {"train_images": len(dataset.train)}
    if feature_cache:
        # Build the cache entry exactly as train.fit would (seeds, then the model), and time it;
        # fit then finds it (a second, independent check that the key is deterministic).
        steps.configure_runtime(config)
        model = model_lib.build(config)
        cached, why = features.prepare(config, model, dataset)
        if cached is None:
            raise RuntimeError(f"feature cache not used: {why}")
        out.update(
            cache_build_seconds=round(cached.seconds, 2),
            cache_hit_before=cached.hit,
            cache_images=len(dataset.train) + len(dataset.val),
            cache_dtype=str(cached.train.dtype),
            cache_train_mb=round(cached.train.nbytes / 2**20, 1),
        )
        del model, cached
    run_dir = tempfile.mkdtemp(prefix="fer_bench_run_")
    try:
        import logging

        records: list[str] = []

        class Grab(logging.Handler):
            def emit(self, record):
                if "feature cache" in record.getMessage():
                    records.append(record.getMessage())

        handler = Grab()
        logging.getLogger("fer_dist").addHandler(handler)
        logging.getLogger("fer_dist").setLevel(logging.INFO)
        result = train.fit(config, LocalSession(run_dir, show_progress=False), dataset=dataset)
        logging.getLogger("fer_dist").removeHandler(handler)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = result.state.history
    out.update(_windows([r["images_per_second"] for r in rows[1:]]))
    out["feature_cache_log"] = records[0] if records else ""
    if feature_cache and "loaded" not in out["feature_cache_log"]:
        raise RuntimeError(f"fit did not load the cache built before it: {out['feature_cache_log']!r}")
    return out


def run_part(args, part: str, data: str, cache_dir: str, json_out: str) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    if part == "a":
        out = part_a(args, data, cache_dir)
    else:
        out = _fit_part(args, data, cache_dir, feature_cache=(part == "b_cached"))
    out.update(peak_rss_mb=round(peak_rss_mb(), 1), part_seconds=round(time.perf_counter() - start, 1))
    with open(json_out, "w") as f:
        json.dump(out, f)


# ---------------------------------------------------------------------------------
# c: Ray, from the driver (this process; TensorFlow is never imported here).
# ---------------------------------------------------------------------------------
class WorkerMemory(threading.Thread):
    """Samples the resident memory of Ray Train worker processes (max per pid)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peaks, self._halt = interval, {}, threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            for p in psutil.process_iter(["pid", "name", "cmdline"]):
                try:
                    text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
                    if "TrainWorker" in text:
                        rss = p.memory_info().rss / 2**20
                        self.peaks[p.info["pid"]] = max(self.peaks.get(p.info["pid"], 0.0), rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def part_c(args, data: str, cache_dir: str) -> dict:
    import pandas as pd
    import ray

    from fer_dist import launch, ray_cluster, storage

    config = bench_config(args, data, cache_dir, feature_cache=True)
    storage_dir = tempfile.mkdtemp(prefix="fer_bench_ray_")
    start = time.perf_counter()
    monitor = WorkerMemory()
    monitor.start()
    try:
        ray_cluster.ensure_ray(num_cpus=os.cpu_count())
        trainer = launch.make_trainer(
            config, storage_uri=storage_dir, name="bench", num_workers=2, cpus_per_worker=1.0, max_failures=0
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        history = pd.read_csv(storage.join(storage_dir, "bench", "history.csv"))
    finally:
        monitor.stop()
        ray.shutdown()
        shutil.rmtree(storage_dir, ignore_errors=True)
    out = _windows([float(v) for v in history["images_per_second"].iloc[1:]])
    peaks = sorted(monitor.peaks.values(), reverse=True)
    out.update(
        workers=2,
        worker_peak_rss_mb=[round(v, 1) for v in peaks[:2]] if peaks else None,
        peak_rss_mb=round(sum(peaks[:2]), 1) if peaks else None,
        part_seconds=round(time.perf_counter() - start, 1),
    )
    return out


# ---------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------
def prepare_data(args, workdir: str) -> tuple[str, str]:
    """(data uri for every part, description)."""
    if args.smoke:
        return "builtin", "built-in synthetic faces, 280 images (smoke)"
    if args.data == "builtin":
        return "builtin", "built-in synthetic faces, 12000 images"
    import pandas as pd

    frame = pd.read_csv(args.data, dtype=str)
    train = frame[frame["Usage"] == "Training"]
    val = frame[frame["Usage"] == "PublicTest"].head(VAL_ROWS)
    path = os.path.join(workdir, "bench.csv")
    pd.concat([train, val]).to_csv(path, index=False)
    return path, f"{args.data}: the {len(train)} Training rows, the first {len(val)} PublicTest rows as validation"


def ratio(x, y):
    return round(x / y, 3) if x and y else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=DEFAULT_DATA if os.path.exists(DEFAULT_DATA) else "builtin")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default 12; smoke 2)")
    p.add_argument("--windows", type=int, default=None, help="timed windows after the warm-up one (default 3; smoke 2)")
    p.add_argument("--smoke", action="store_true", help="seconds: tiny built-in data, 32 px, small head")
    p.add_argument("--no-ray", action="store_true", help="skip part c")
    p.add_argument("--output", default=os.path.join("benchmarks", "results.json"))
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--part-data", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--part-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.smoke else 12)
    args.windows = args.windows or (2 if args.smoke else 3)

    if args.part:
        run_part(args, args.part, args.part_data, args.cache_dir, args.part_json)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = tempfile.mkdtemp(prefix="fer_bench_")
    cache_dir = os.path.join(workdir, "features")  # fresh: b' builds the cache, c's workers load it
    started = time.perf_counter()
    results: dict = {}
    try:
        data, data_note = prepare_data(args, workdir)
        for part in PARTS:
            print(f"[throughput] part {part} ...", flush=True)
            part_json = os.path.join(workdir, f"{part}.json")
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--part",
                part,
                "--part-data",
                data,
                "--cache-dir",
                cache_dir,
                "--part-json",
                part_json,
                "--steps",
                str(args.steps),
                "--windows",
                str(args.windows),
            ] + (["--smoke"] if args.smoke else [])
            subprocess.run(cmd, check=True, cwd=REPO)
            with open(part_json) as f:
                results[part] = json.load(f)
        if not args.no_ray:
            print("[throughput] part c (Ray, 2 workers) ...", flush=True)
            results["c"] = part_c(args, data, cache_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    a, b, bc = (results[k]["images_per_second"] for k in PARTS)
    c = results.get("c", {}).get("images_per_second")
    report = {
        "command": "python "
        + " ".join([os.path.relpath(os.path.abspath(__file__), REPO)] + (argv if argv is not None else sys.argv[1:])),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "gpu": "none",
        },
        "setup": {
            "model": "ResNet50 weights=none, freeze_layers=143, head (1024, 512) flatten, Adam 1e-3, batch 32"
            if not args.smoke
            else "smoke: ResNet50 weights=none, freeze_layers=143, head (32,), 32 px",
            "image_size": 32 if args.smoke else 48,
            "data": data_note,
            "steps_per_window": args.steps,
            "timed_windows": args.windows,
            "warmup_windows": 1,
            "statistic": "median images/second over the timed windows",
        },
        "parts": results,
        "ratios": {
            "b_over_a": ratio(b, a),
            "b_cached_over_a": ratio(bc, a),
            "b_cached_over_b": ratio(bc, b),
            "c_over_b_cached": ratio(c, bc),
            "c_scaling_efficiency_per_worker": ratio(c, 2 * bc) if c else None,
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(format_table(report))
    print(f"written: {args.output}")
    return 0


def format_table(report: dict) -> str:
    parts, r = report["parts"], report["ratios"]
    a = parts["a"]["images_per_second"]
    lines = [
        f"{'part':<52} {'img/s':>8} {'vs a':>6} {'peak RSS MB':>12}  windows",
    ]
    for key in ("a", "b", "b_cached", "c"):
        if key not in parts:
            continue
        p = parts[key]
        rss = p.get("peak_rss_mb")
        if key == "c" and p.get("worker_peak_rss_mb"):
            rss_text = "+".join(f"{v:.0f}" for v in p["worker_peak_rss_mb"])
        else:
            rss_text = f"{rss:.0f}" if rss else "n/a"
        lines.append(
            f"{LABELS[key]:<52} {p['images_per_second']:>8.1f} {p['images_per_second'] / a:>5.2f}x {rss_text:>12}  {p['windows']}"
        )
    bc = parts["b_cached"]
    lines.append(
        f"cache build (b'): {bc['cache_build_seconds']:.1f} s for {bc['cache_images']} images "
        f"({bc['cache_dtype']}, train {bc['cache_train_mb']} MB)"
    )
    lines.append(
        f"b/a {r['b_over_a']}  b'/a {r['b_cached_over_a']}  b'/b {r['b_cached_over_b']}  "
        f"c/b' {r['c_over_b_cached']}  (c per-worker efficiency {r['c_scaling_efficiency_per_worker']}; "
        f"the 2 workers share the same {report['machine']['cpus']} cores)"
    )
    lines.append(f"total {report['total_seconds']} s; {report['setup']['data']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
