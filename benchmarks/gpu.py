"""python benchmarks/gpu.py [--recipes seed,finetune] [--variants float32,mixed,xla,mixed_xla] [--steps 50] [--batch N] [--minutes 7] [--allow-cpu] [--output benchmarks/gpu.json]

The training step on one GPU, per recipe and precision: what a GPU node of cluster.yaml trains at
before any cluster is rented. Per case, in a fresh process (the precision policy and XLA are
process-wide): the recipe's compiled train step (`Distributed.build_steps`, as `jobs/train.py`
runs it) on random inputs of its shape, `--warmup` steps (tracing; XLA compiles here), then
`--steps` timed one by one, and TensorFlow's peak GPU memory over the whole case.

  seed      the seed recipe's step: conv5 + head on cached conv4 features (23.9M trainable),
            at its global batch (32; `--batch` sets another for every case);
  finetune  the finetune recipe's second phase: every ResNet50 layer but BatchNorm trainable at
            96 px, batch 64.
  Variants: float32; mixed (`--set mixed_precision=true`: float16 compute, float32 variables);
  xla (`--set jit_compile=true`); mixed_xla (both).

Random weights (`weights=none`) and random inputs: the step's cost does not depend on either.
The input pipeline is not timed (`benchmarks/throughput.py` measures it). Under 10 minutes: no
case starts after `--minutes` (7; the ones left are written as skipped) and each may take 3
minutes (`CASE_LIMIT_S`); it exits 1 when a case failed or was skipped. Without a GPU it stops
with an error; `--allow-cpu` runs it on the CPU anyway (a plumbing check: no memory figure, and
CPU figures are not what this benchmark is for).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import fer_dist  # noqa: E402,F401  (before TensorFlow, in every process of the benchmark: it sets TF's environment)

RECIPES = ("seed", "finetune")
CASE_LIMIT_S = 180  # one case: TensorFlow's start, the build, XLA's compilation, the steps
VARIANTS = {  # name: config settings
    "float32": {},
    "mixed": {"mixed_precision": "true"},
    "xla": {"jit_compile": "true"},
    "mixed_xla": {"mixed_precision": "true", "jit_compile": "true"},
}


def child(recipe: str, variant: str, steps: int, warmup: int, batch: int) -> dict:
    """One case in this fresh process: ms per step, images/s and peak GPU memory."""
    import tensorflow as tf
    from malloc_pad import timed_steps

    from fer_dist import config as C
    from fer_dist.steps import Distributed, configure_runtime

    sets = {"weights": "none", "deterministic": "false", **VARIANTS[variant]}
    cfg = C.resolve(recipe, dict(sets, global_batch_size=batch) if batch else sets)
    dist = Distributed.create(cfg)  # as train.start: the strategy first, then the runtime
    configure_runtime(cfg)  # the precision policy, before the model is built
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    times, _ = timed_steps(dist, cfg, recipe, cfg.global_batch_size, steps, warmup)
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpus else None
    times.sort()
    median = times[len(times) // 2]
    return {
        "recipe": recipe,
        "variant": variant,
        "batch": cfg.global_batch_size,
        "ms_per_step": round(median * 1e3, 2),
        "p10_p90_ms": [round(1e3 * times[len(times) // 10], 2), round(1e3 * times[9 * len(times) // 10], 2)],
        "images_per_second": round(cfg.global_batch_size / median, 1),
        "peak_gpu_mb": round(peak / 2**20, 1) if peak is not None else None,
    }


def device() -> dict:
    """The GPU TensorFlow sees (name, compute capability), or None; TensorFlow's version."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return {
        "gpu": details.get("device_name", "GPU") if gpus else None,
        "compute_capability": list(details.get("compute_capability", ())) or None,
        "gpus_visible": len(gpus),
        "tensorflow": tf.__version__,
        "cuda_build": tf.sysconfig.get_build_info().get("cuda_version"),
    }


def run_case(recipe: str, variant: str, args, timeout: float = CASE_LIMIT_S) -> dict:
    cmd = [sys.executable, __file__, "--child", recipe, variant, "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"recipe": recipe, "variant": variant, "error": f"over the {timeout:.0f} s a case may take"}
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"recipe": recipe, "variant": variant, "error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing, XLA compilation)")
    parser.add_argument(
        "--batch", type=int, default=0, help="global batch (0: each recipe's own: seed 32, finetune 64)"
    )
    parser.add_argument("--minutes", type=float, default=7.0, help="start no case after this long")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a plumbing check)")
    parser.add_argument("--output", default=os.path.join(HERE, "gpu.json"))
    parser.add_argument("--child", nargs=2, metavar=("RECIPE", "VARIANT"), help=argparse.SUPPRESS)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, as the jobs' CLIs
    args = parser.parse_args(argv)
    for flag, given, known in (("--recipes", args.recipes, RECIPES), ("--variants", args.variants, VARIANTS)):
        unknown = [x for x in given.split(",") if x not in known]
        if unknown:
            parser.exit(2, f"error: {flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})\n")
    if args.steps < 1 or args.warmup < 1 or args.batch < 0 or args.minutes <= 0:
        parser.exit(2, "error: --steps and --warmup must be at least 1, --batch at least 0, --minutes above 0\n")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup, args.batch)), flush=True)
        return 0
    found = device()
    if not found["gpu"] and not args.allow_cpu:
        print(
            "error: no GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty); "
            "--allow-cpu runs it on the CPU as a plumbing check",
            file=sys.stderr,
        )
        return 2
    from malloc_pad import report_header

    report = dict(report_header("gpu.py", argv, "seed remainder, finetune phase 2"), **found, cases=[])
    deadline = time.monotonic() + args.minutes * 60
    for recipe in args.recipes.split(","):
        for variant in args.variants.split(","):
            started = time.monotonic() < deadline
            row = (
                run_case(recipe, variant, args)
                if started
                else {"recipe": recipe, "variant": variant, "error": "skipped: --minutes used up"}
            )
            report["cases"].append(row)
            print(json.dumps(row), flush=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    return 0 if all("error" not in row for row in report["cases"]) else 1


def format_table(report: dict) -> str:
    lines = [
        f"{report['gpu'] or 'CPU (no GPU)'}, TensorFlow {report['tensorflow']}",
        "| recipe | variant | batch | ms/step | img/s | peak GPU MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['variant']} | | {r['error']} | | |")
            continue
        peak = "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        lines.append(
            f"| {r['recipe']} | {r['variant']} | {r['batch']} | {r['ms_per_step']:.1f} | {r['images_per_second']:.0f} | {peak} |"
        )
    fastest = {}
    for r in report["cases"]:
        if "error" not in r:
            best = fastest.get(r["recipe"])
            fastest[r["recipe"]] = r if best is None or r["images_per_second"] > best["images_per_second"] else best
    lines += [f"fastest for {k}: {v['variant']} ({v['images_per_second']:.0f} img/s)" for k, v in fastest.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
