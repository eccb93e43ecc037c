"""A whole training run, as `jobs/train.py` starts it: config, run directory, fit, report.

    python jobs/train.py --preset seed --data data/fer2013.csv

`train(...)` resolves the config (or reloads it with `--resume`), prepares the run
directory without overwriting anything, trains in this process (`workers=0`) or on Ray
Train workers (`launch.run_on_ray`), then writes the final report (metrics.json,
confusion matrices, curves, the exported model) from rank 0 and prints where it all is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging

from fer_dist import runs, storage
from fer_dist.config import TrainConfig, replace, resolve, validate
from fer_dist.errors import UserError
from fer_dist.launch import DEFAULT_MAX_FAILURES

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("epochs",)  # what a resumed run may change


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """Local paths in the config (data, weights file, feature cache) made absolute, so that Ray
    workers and Tune trials, which run in directories of their own, find them."""
    changes = {}
    if config.data != "builtin":
        changes["data"] = storage.absolute(config.data)
    if config.labels:
        changes["labels"] = storage.absolute(config.labels)
    if config.weights.lower() not in ("imagenet", "none"):
        changes["weights"] = storage.absolute(config.weights)
    if config.feature_cache_dir:
        changes["feature_cache_dir"] = storage.absolute(config.feature_cache_dir)
    return dataclasses.replace(config, **changes) if changes else config


def resolve_for_run(preset, overrides, config_file, run_dir: str | None, resume: bool) -> TrainConfig:
    """A new run's config, or (with resume) the run's saved one; only `epochs` may change."""
    if not resume:
        return absolute_paths(resolve(preset, overrides, config_file))
    source = storage.join(run_dir, "config.json")
    saved = with_earlier_defaults(storage.read_text(source), source)
    if config_file:
        raise UserError("--resume: the run's saved config.json is used; drop --config")
    if preset:
        resolve(preset)  # an unknown preset is still an error
    wanted = absolute_paths(replace(saved, overrides or {}, source="--set"))
    changed = sorted(k for k in (overrides or {}) if getattr(wanted, k) != getattr(saved, k))
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        raise UserError(
            f"--resume: cannot change {', '.join(bad)} of an existing run (only {', '.join(RESUMABLE_CHANGES)}); "
            f"start a new run with --config {source}"
        )
    check_recipe(run_dir, saved, source)
    return validate(wanted)


def with_earlier_defaults(text: str, source: str) -> TrainConfig:
    """A saved config.json; one written before `class_names` and `channels` existed trained
    FER-2013's seven classes on gray faces, and resumes so (not with what `auto` would pick now)."""
    from fer_dist import EMOTIONS

    config = TrainConfig.from_json(text, source=source)
    known = json.loads(text).keys()
    earlier = {k: v for k, v in (("class_names", EMOTIONS), ("channels", "gray")) if k not in known}
    return dataclasses.replace(config, **earlier) if earlier else config


def check_recipe(run_dir: str, saved: TrainConfig, source: str) -> None:
    """A resumed run trains with one recipe: the run's config.json must agree with its newest
    checkpoint's, except for `RESUMABLE_CHANGES` (which the resumed run then applies)."""
    from fer_dist import checkpoint

    found = checkpoint.newest_config(checkpoint.of_run(run_dir))
    if found is None:
        return
    facts, text = found
    ours = TrainConfig.from_json(text, source=facts.uri).to_dict()
    theirs = saved.to_dict()
    known = json.loads(text).keys()  # a field newer than the checkpoint takes its value from config.json
    changed = [k for k in theirs if k in known and k not in RESUMABLE_CHANGES and theirs[k] != ours.get(k)]
    if changed:
        shown = ", ".join(f"{k} ({ours.get(k)!r} in the checkpoint, {theirs[k]!r} in config.json)" for k in changed)
        raise UserError(
            f"--resume: {source} differs from the recipe of checkpoint {facts.uri}: {shown}; a run resumes with one "
            f"recipe (only {', '.join(RESUMABLE_CHANGES)} may change): undo the edit, or start a new run with "
            f"--config {source}"
        )


def train(
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    config_file: str | None = None,
    output: str = "./runs",
    name: str | None = None,
    resume: bool = False,
    workers: int | str = 0,
    gpus_per_worker: float = 0.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
    progress: bool = True,
    address: str | None = None,
) -> dict:
    """Runs one training job end to end; returns the final metrics.

    Everything that can be checked is checked before anything is written (flags, config, data,
    weights, the bucket, and with `workers` whether the Ray cluster of `address` can ever run
    them: `ray_cluster.ensure_ray`); then the run is created atomically and leased until exit."""
    if resume and not name:
        raise UserError("--resume needs --name NAME (the run to continue)")
    from fer_dist import launch, ray_cluster

    workers = launch.Workers.parse(workers)
    name = name or runs.new_run_name(preset or "demo")
    run_dir = runs.run_dir(storage.absolute(output), name)
    runs.check_state(run_dir, resume)
    config = resolve_for_run(preset, overrides, config_file, run_dir, resume)
    needs = None
    if workers:
        resources = ray_cluster.worker_resources(1.0, gpus_per_worker)
        needs = RayNeeds(workers.min, resources, ray_cluster.train_flags(workers, gpus_per_worker), address=address)
    with prepare(run_dir, config, resume=resume, ray=needs, first_file=runs.CONFIG_FILE) as run:
        log.info("run %s -> %s", name, run_dir)
        if workers:
            metrics = launch.run_on_ray(
                config,
                storage_uri=run.storage_uri,
                name=name,
                num_workers=workers,
                gpus_per_worker=gpus_per_worker,
                max_failures=max_failures,
                fence=run.lease.fence(),
            )
        else:
            metrics = train_here(config, run_dir, run.dataset, progress)
    print_summary(run_dir, metrics, config)
    return metrics


@dataclasses.dataclass(frozen=True)
class RayNeeds:
    """What a job asks of its Ray cluster: `workers` x `per_worker` (plus one `extra` bundle: a
    Tune trial's driver), named by `flags` in an error."""

    workers: int
    per_worker: dict
    flags: str
    extra: dict | None = None
    address: str | None = None


@dataclasses.dataclass(frozen=True)
class Prepared:
    run_dir: str
    storage_uri: str  # the directory that holds the run
    dataset: object  # the checked data
    lease: object  # the run's exclusive.Lease, held until the `prepare` block ends


@contextlib.contextmanager
def prepare(run_dir: str, config: TrainConfig, *, resume: bool, ray: RayNeeds | None, first_file: str, what="run"):
    """The one run-preparation path of a training run and of a Tune search (`tune.search`):
    everything is checked before anything is written (the data and weights; with `ray`, the
    cluster and whether it can ever run the job), then the run is created exclusively (or, with
    `resume`, taken over) and its lease held until the block ends, every write into it fenced.
    `first_file` (the config's file: config.json, base_config.json) is written first on creation.
    `run_dir` comes from `runs.run_dir` (the name and the bucket checked), `config` has absolute
    paths (`absolute_paths`)."""
    from fer_dist import ray_cluster

    dataset = check_inputs(config)
    if ray is not None:
        ray_cluster.ensure_ray(ray.address)
        ray_cluster.check_fits(ray.workers, ray.per_worker, ray.flags, extra=ray.extra)
    first = None if resume else (first_file, config.to_json())
    with runs.held(run_dir, resume, what, first_file=first) as lease:
        yield Prepared(run_dir, run_dir.rstrip("/").rsplit("/", 1)[0], dataset, lease)


def check_inputs(config: TrainConfig):
    """Loads the data (bad rows and missing files end here) and checks the weights; returns the data."""
    from fer_dist import data, decoded, weights

    dataset = decoded.load_for(config)
    data.check_classes(config.class_names, dataset)
    weights.check(config.backbone, config.weights)
    return dataset


def train_here(config: TrainConfig, run_dir: str, dataset, progress: bool) -> dict:
    """Trains in this process, then the final evaluation and export."""
    from fer_dist import reporting
    from fer_dist import train as train_lib
    from fer_dist.sessions import LocalSession

    session = LocalSession(run_dir, config.keep_checkpoints, show_progress=progress, monitor=config.monitor)
    result = train_lib.fit(config, session, dataset=dataset)
    return reporting.finish(result, result.config, run_dir)


def print_summary(run_dir: str, metrics: dict, config: TrainConfig) -> None:
    lines = [f"run directory: {run_dir}"]
    for key in ("val_accuracy", "test_accuracy"):
        if key in metrics:
            lines.append(f"{key}: {metrics[key]:.4f}")
    lines.append(
        "outputs: config.json history.csv metrics.json curves.png *_confusion.{csv,png} model.keras "
        "saved_model/ checkpoints/ tensorboard/"
    )
    lines.append(f"evaluate again: python jobs/evaluate.py {run_dir} --data {config.data}")
    if config.backbone != "resnet50":
        lines.append(
            "next, the ResNet50 recipe on FER-2013 (README: Getting FER-2013): python jobs/train.py "
            "--data data/fer2013.csv --preset seed"
            "  (add --set weights=none where ImageNet weights cannot be downloaded)"
        )
    print("\n".join(lines), flush=True)
