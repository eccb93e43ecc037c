"""python benchmarks/scaling_model.py [--output benchmarks/scaling_model.png]

The scaling model of README "Scaling" (`fer_dist.scaling.predicted_speedup_per_worker`): predicted
speed-up per worker at 1, 2, 4 and 8 workers for cluster.yaml's GPU node types and the
`seed` and `finetune` recipes, at global batch 64 and 512, as a table (printed) and a plot.

Inputs, and where each comes from:
- gradient values per step: counted from the built models (`weights=none`; the trainable
  variables of the recipe's training phase: the seed recipe's conv5 + head, every layer for
  finetune's phase 2), times 4 bytes (float32) or 2 (`allreduce_dtype=bfloat16`); with PowerSGD
  at rank R (`gradient_compression=powersgd`), the factors of every matrix worth compressing
  (`compression.plan`) and the other gradients, in float32, in 3 collectives instead of 1;
- latency: 2 (N-1) ring hops per collective of `scaling.LATENCY_S` (100 us, assumed) each;
- network bandwidth per VM: Compute Engine's documented maximum egress of the machine types of
  cluster.yaml (n1-standard-8: 16 Gbit/s; a2-highgpu-1g: 24 Gbit/s), of which a ring all-reduce
  gets about 70% in practice (`EFFECTIVE`);
- compute per step on one GPU: training FLOPs per image (3x the forward FLOPs, counted by TF's
  profiler on the built model) over a sustained throughput per GPU type (`SUSTAINED_TFLOPS`:
  about 40% of the fp32/TF32 peak, what small convolutions reach). These are estimates: no GPU was
  available where this was written. `benchmarks/scaling.py` measures the same split on CPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from fer_dist import scaling  # noqa: E402

NODE_TYPES = {  # cluster.yaml type: (GPU, VM egress Gbit/s, sustained TFLOPS assumed)
    "gpu_t4": ("T4 on n1-standard-8", 16.0, 3.2),
    "gpu_a100": ("A100 40GB on a2-highgpu-1g", 24.0, 16.0),
}
EFFECTIVE = 0.7  # share of the VM bandwidth a ring all-reduce reaches
WORKERS = (1, 2, 4, 8)
BATCHES = (64, 512)


MODES = scaling.ADVISED_MODES


def wire(shapes: list, mode: str) -> tuple[int, int]:
    """(bytes, collectives) one step sends in `mode`: what a run of it logs (`steps.wire_groups`)."""
    from fer_dist import config as C
    from fer_dist import steps

    config = C.resolve("seed", scaling.wire_settings(mode))
    return steps.wire_bytes(shapes, config)[1], len(steps.wire_groups(shapes, config))


def recipe_facts() -> dict:
    """{recipe: (trainable shapes, training GFLOPs per image)}."""
    import tensorflow as tf

    from fer_dist import config as C
    from fer_dist import model as model_lib

    facts = {}
    for recipe, sets, phase in (("seed", {"weights": "none"}, 1), ("finetune", {"weights": "none"}, 2)):
        config = C.resolve(recipe, sets)
        model = model_lib.build(config)
        model_lib.set_phase(model, config, phase)
        shapes = [tuple(int(d) for d in v.shape) for v in model.trainable_variables]
        side = config.image_size
        forward = tf.function(lambda x, m=model: m(x, training=False)).get_concrete_function(
            tf.TensorSpec([1, side, side, 3], tf.float32)
        )
        from tensorflow.python.profiler import model_analyzer, option_builder

        quiet = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
        quiet = quiet.with_empty_output().build()
        flops = model_analyzer.profile(forward.graph, options=quiet).total_float_ops
        frozen = 0.0
        if recipe == "seed":  # the frozen trunk runs once, into the feature cache: not per step
            from fer_dist import features

            prefix, _ = features.split_model(model, config)
            pre = tf.function(lambda x, m=prefix.prefix: m(x, training=False)).get_concrete_function(
                tf.TensorSpec([1, side, side, 3], tf.float32)
            )
            frozen = model_analyzer.profile(pre.graph, options=quiet).total_float_ops
        facts[recipe] = (shapes, 3 * (flops - frozen) / 1e9)
    return facts


def rows(facts: dict) -> list[dict]:
    out = []
    for recipe, (shapes, gflops) in facts.items():
        for node, (gpu, gbit, tflops) in NODE_TYPES.items():
            for batch in BATCHES:
                for mode in MODES:
                    compute = batch * gflops / (tflops * 1e3)
                    sent, calls = wire(shapes, mode)
                    row = {"recipe": recipe, "node_type": node, "gpu": gpu, "global_batch": batch, "dtype": mode}
                    row.update(compute_ms=round(compute * 1e3, 1), allreduce_mb=round(sent / 1e6, 2))
                    for n in WORKERS:
                        speed = scaling.predicted_speedup_per_worker(n, compute, sent, gbit * EFFECTIVE, calls)
                        row[f"eff_{n}"] = round(speed, 2)
                        row[f"comm_{n}"] = round(
                            scaling.communication_share(n, compute, sent, gbit * EFFECTIVE, calls), 2
                        )
                    out.append(row)
    return out


def plot(table: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, recipe in zip(axes, ("seed", "finetune")):
        for r in table:
            if r["recipe"] != recipe or r["dtype"] != "float32":
                continue
            style = "-" if r["global_batch"] == 64 else "--"
            color = "tab:blue" if r["node_type"] == "gpu_t4" else "tab:red"
            label = f"{r['node_type']}, batch {r['global_batch']}"
            ax.plot(WORKERS, [r[f"eff_{n}"] for n in WORKERS], style, color=color, marker="o", label=label)
        ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{recipe}: predicted efficiency (float32 all-reduce)")
        ax.set_xlabel("workers (1 GPU each)")
        ax.set_xticks(WORKERS)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed-up / workers")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "scaling_model.png"))
    args = parser.parse_args(argv)
    facts = recipe_facts()
    table = rows(facts)
    print(
        json.dumps(
            {
                k: {"values": sum(math.prod(x) for x in v), "train_gflops_per_image": round(g, 2)}
                for k, (v, g) in facts.items()
            }
        )
    )
    print(
        "| recipe | node type | batch | all-reduce | compute ms | efficiency at 2 / 4 / 8 workers | comm share at 8 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['recipe']} | {r['node_type']} | {r['global_batch']} | {r['allreduce_mb']:.1f} MB {r['dtype']} "
            f"| {r['compute_ms']:.0f} | {r['eff_2']:.2f} / {r['eff_4']:.2f} / {r['eff_8']:.2f} | {r['comm_8']:.0%} |"
        )
    plot(table, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
