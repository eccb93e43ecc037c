"""python benchmarks/mwms_pair.py [--modes float32,bfloat16,powersgd1,powersgd4] [--steps 30] [--model seed|dense] [--ray] [--pair-only] [--output benchmarks/mwms_pair.json]

The 2-worker step alone, without Ray Train and without the training loop: two local processes
joined by TF_CONFIG (MultiWorkerMirroredStrategy over localhost gRPC, one thread each, as the
two Ray workers of `benchmarks/scaling.py` have) run the compiled train step of
`Distributed.build_steps` on random inputs of the recipe's shape, once per wire mode (float32,
bfloat16, or PowerSGD at rank R from the first step). Against it:

  p1  one process, no strategy, 2 threads (the whole machine), global batch 64;
  c1  one process, no strategy, 1 thread, batch 32: one worker's compute with no collective.

Per case: the median ms of `--steps` steps after 3 warm-up ones (per-step times, no host sync
beyond the loss read each step), their 10th/90th percentiles, and page faults per step (the
process's minor faults). Efficiency = p1 ms / 2-worker ms, as `scaling.py` defines it from
images/s. `scaling.py` measures the whole run inside Ray Train; the two together separate what
the step costs from what running it inside Ray Train adds. `--model seed` is the seed recipe's
cached remainder (conv5 + head, 23.9M trainable, weights none); `--model dense` a stack of
9.4 MB dense layers that builds in seconds (a plumbing check). ~3 min for every mode.

`--ray` runs the pair as two plain Ray tasks (1 CPU each, a fresh worker process each) on a
private local cluster that fer_dist starts as a training job does (`ray_cluster.ensure_ray`, its
worker environment included), still without Ray Train or the loop: what a Ray worker process
itself changes. Each worker reports the GLIBC_TUNABLES it started with (`GLIBC_TUNABLES=` with
nothing after it sends glibc's defaults instead of `ray_cluster.HEAP_TUNABLES`, to compare;
output benchmarks/mwms_pair_ray.json). `--pair-only` skips p1 and c1 (no efficiency).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import fer_dist  # noqa: E402,F401  (before TensorFlow, in every process of the benchmark: it sets TF's environment)
from fer_dist import scaling  # noqa: E402

MODES = scaling.ADVISED_MODES


def mode_overrides(mode: str) -> dict:
    """A wire mode's config (`scaling.wire_settings`), PowerSGD from the first step."""
    settings = scaling.wire_settings(mode)
    return dict(settings, powersgd_start_step=0) if settings["gradient_compression"] == "powersgd" else settings


def child(mode: str, model_name: str, steps: int, threads: int, batch: int) -> dict:
    """One process's part (a worker of the pair when TF_CONFIG names two): ms per step."""
    import tensorflow as tf
    from malloc_pad import timed_steps

    from fer_dist import config as C
    from fer_dist.steps import Distributed

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    overrides = {"weights": "none", "global_batch_size": "64", "deterministic": "false"}
    cfg = C.resolve("seed", dict(overrides, **mode_overrides(mode)))
    dist = Distributed.create(cfg)
    times, faults = timed_steps(dist, cfg, model_name, batch, steps)
    times.sort()
    return {
        "ms_per_step": round(1e3 * times[len(times) // 2], 1),
        "p10_p90_ms": [round(1e3 * times[len(times) // 10], 1), round(1e3 * times[9 * len(times) // 10], 1)],
        "page_faults_per_step": round(faults / steps),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(mode: str, args, workers: int, threads: int, batch: int) -> list[dict]:
    """`workers` processes of one case, started together; each one's `child` figures."""
    cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps)]
    cmd += ["--child", mode, str(threads), str(batch)]
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    env.pop("TF_CONFIG", None)
    ports = [free_port() for _ in range(workers)]
    procs, logs = [], []
    try:
        for index in range(workers):
            if workers > 1:
                cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
                env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            logs.append(tempfile.TemporaryFile())  # not a pipe: a chatty worker never blocks its peer
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=dict(env), stdout=subprocess.PIPE, stderr=logs[-1]))
        results = []
        for proc, log in zip(procs, logs):
            out, _ = proc.communicate(timeout=900)
            if proc.returncode:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise SystemExit(f"error: the case {mode} ({workers} process(es)) failed:\n{tail}")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:  # a failed or timed-out worker's peer waits in a collective: end it too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def run_pair_in_ray(modes: list[str], args) -> dict[str, list[dict]]:
    """Each mode's pair as two Ray tasks on one private local cluster, shut down at the end."""
    import ray

    from fer_dist import ray_cluster

    ray_cluster.ensure_ray(ray_cluster.PRIVATE, num_cpus=2)
    try:
        task = ray.remote(num_cpus=1, max_calls=1)(ray_worker)  # a fresh process: one MWMS per process
        results = {}
        for mode in modes:
            ports = [free_port() for _ in range(2)]
            pair = [task.remote(i, ports, mode, args.model, args.steps) for i in range(2)]
            results[mode] = ray.get(pair, timeout=900)
        return results
    finally:
        ray_cluster.leave()  # the private cluster stops with it


def ray_worker(index: int, ports: list[int], mode: str, model_name: str, steps: int) -> dict:
    """One worker of the pair, in a Ray worker process."""
    bench = os.path.join(REPO, "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    return dict(child(mode, model_name, steps, 1, 32), glibc_tunables=os.environ.get("GLIBC_TUNABLES"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="wire modes of the pair: " + ", ".join(MODES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", choices=["seed", "dense"], default="seed")
    parser.add_argument("--ray", action="store_true", help="the pair as two plain Ray tasks")
    parser.add_argument("--pair-only", action="store_true", help="skip the one-process baselines")
    parser.add_argument("--output", help="default: benchmarks/mwms_pair.json (--ray: mwms_pair_ray.json)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "THREADS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, threads, batch = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(child(mode, args.model, args.steps, threads, batch)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: --modes: unknown {', '.join(unknown)} (choose from {', '.join(MODES)})", file=sys.stderr)
        return 2
    p1 = c1 = None
    if not args.pair_only:
        p1 = run_case("float32", args, workers=1, threads=2, batch=64)[0]
        c1 = run_case("float32", args, workers=1, threads=1, batch=32)[0]
        print(json.dumps({"p1": p1, "c1": c1}), flush=True)
    pairs = run_pair_in_ray(modes, args) if args.ray else {}
    rows = []
    for mode in modes:
        pair = pairs[mode] if args.ray else run_case(mode, args, workers=2, threads=1, batch=32)
        step = max(w["ms_per_step"] for w in pair)
        row = {"mode": mode, "ms_per_step": step, "workers": pair}
        if p1 is not None:
            row.update(
                efficiency=round(p1["ms_per_step"] / step, 3), beyond_compute_ms=round(step - c1["ms_per_step"], 1)
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    from malloc_pad import report_header

    report = {
        **report_header("mwms_pair.py", argv, args.model),
        "ray": args.ray,
        "heap_pad": os.environ.get("FER_DIST_HEAP_PAD") != "0",
        "p1": p1,
        "c1": c1,
        "rows": rows,
    }
    output = args.output or os.path.join(REPO, "benchmarks", "mwms_pair_ray.json" if args.ray else "mwms_pair.json")
    with open(output, "w") as f:
        json.dump(report, f, indent=1)
    if p1 is not None:
        best = max(rows, key=lambda r: r["efficiency"])
        where = "in Ray tasks" if args.ray else "bare"
        print(f"efficiency of the {where} 2-worker step at global batch 64 ({best['mode']}): {best['efficiency']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
