"""Ray Tune over distributed trials: every trial is a Ray Train run of `launch.make_trainer`.

    python jobs/tune.py                                          # a small local search, built-in data
    python jobs/tune.py --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/tune --preset seed

Train V2 way: a Tune *function* trainable calls `trainer.fit()` with `TuneReportCallback`,
and names its Train run after the trial (`trial-<id>`), so a resumed or retried trial
continues from its own checkpoints. ASHA stops weak trials (random search, or Optuna).

When Tune stops a trial (ASHA, or the trial ends), `StopTrialTrainRuns` ends its Train run
inside Tune's event loop (`trial_runs.stop_run`: removes the worker placement group that Train V2
leaks, ray-project/ray#54305, and waits for its workers to die), so a stopped run never trains
on beside the next trial. Train runs of trials do not retry themselves; Tune retries a failed
trial (`TRIAL_RETRIES`), which resumes from the trial's checkpoints.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import sys
import time

from fer_dist import monitor, storage
from fer_dist.config import TrainConfig, field_types
from fer_dist.errors import UserError
from fer_dist.values import coerce

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"


# ---------------------------------------------------------------------------------
# Search spaces: code, per preset; narrowed or widened with --space key=spec.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dim:
    """One searched field: `choice` values (one drawn per trial), `grid` values (every one tried,
    in order), or a `uniform`/`loguniform` range."""

    kind: str  # choice | grid | uniform | loguniform
    values: tuple

    def to_tune(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        return tune.loguniform(low, high) if self.kind == "loguniform" else tune.uniform(low, high)

    def describe(self) -> str:
        if self.kind in ("choice", "grid"):
            prefix = "grid" if self.kind == "grid" else ""
            return prefix + "{" + ", ".join(map(str, self.values)) + "}"
        return f"{self.kind}[{self.values[0]:g}, {self.values[1]:g}]"


SPACE_FORMS = "key=a,b,c | key=grid:a,b,c | key=lo:hi | key=log:lo:hi | key=off"

SPACES: dict[str, dict[str, Dim]] = {
    # The seed found smaller batches better: powers of two from 16.
    "seed": {
        "global_batch_size": Dim("choice", (16, 32, 64, 128)),
        "dropout": Dim("uniform", (0.2, 0.6)),
        "decay_factor": Dim("choice", (0.5, 0.7, 0.9)),
        "learning_rate": Dim("loguniform", (1e-4, 3e-3)),
    },
    "demo": {
        "global_batch_size": Dim("choice", (32, 64, 128)),
        "dropout": Dim("uniform", (0.1, 0.5)),
        "decay_factor": Dim("choice", (0.3, 0.5, 0.8)),
        "learning_rate": Dim("loguniform", (5e-4, 1e-2)),
    },
}
SPACES["smoke"] = SPACES["demo"]
# The default search: few images, so small batches (more steps per epoch).
SPACES["quick"] = dict(SPACES["demo"], global_batch_size=Dim("choice", (16, 32, 64)))


def parse_space(preset: str, specs: list[str] | None, start: dict[str, Dim] | None = None) -> dict[str, Dim]:
    """The preset's space (or `start`) with `key=spec` edits: `a,b,c` (choice), `grid:a,b,c` (every
    value, in order), `lo:hi` (uniform), `log:lo:hi` (log-uniform), `off` (drop the key: it keeps
    its config value)."""
    space = dict(start if start is not None else SPACES.get(preset, SPACES["seed"]))
    types = field_types()
    for item in specs or []:
        key, sep, spec = item.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not spec:
            raise UserError(f"--space {item!r}: expected {SPACE_FORMS}")
        if key not in types:
            raise UserError(f"--space {item!r}: unknown config key {key!r}")
        if spec == "off":
            space.pop(key, None)
            continue
        parts = spec.split(":")
        try:
            if parts[0] == "grid":
                if len(parts) != 2 or not parts[1]:
                    raise UserError(f"--space {item!r}: expected key=grid:a,b,c")
                dim = Dim("grid", tuple(coerce(key, v, types[key], "--space") for v in parts[1].split(",")))
            elif parts[0] == "log" and len(parts) == 3:
                dim = Dim("loguniform", (float(parts[1]), float(parts[2])))
            elif len(parts) == 2:
                dim = Dim("uniform", (float(parts[0]), float(parts[1])))
            else:
                dim = Dim("choice", tuple(coerce(key, v, types[key], "--space") for v in spec.split(",")))
        except ValueError:
            raise UserError(f"--space {item!r}: range bounds must be numbers") from None
        if dim.kind not in ("choice", "grid") and not dim.values[0] < dim.values[1]:
            raise UserError(f"--space {item!r}: expected low < high")
        if dim.kind == "loguniform" and dim.values[0] <= 0:
            raise UserError(f"--space {item!r}: log-uniform bounds must be > 0")
        space[key] = dim
    return space


def check_space(
    base: TrainConfig, space: dict[str, Dim], workers_per_trial: int | str, searcher: str = "random"
) -> None:
    """Every corner of the space must make a valid config; batch sizes must not be smaller than the
    workers (any other size splits, unevenly if need be); grids are the random searcher's."""
    from fer_dist.launch import Workers

    most = Workers.parse(workers_per_trial, "--workers-per-trial").max
    if "monitor" in space:
        raise UserError("--space monitor: trials are ranked by one metric; choose it with --metric")
    grid = [key for key, dim in space.items() if dim.kind == "grid"]
    if grid and searcher == "optuna":
        raise UserError(f"--space {grid[0]}=grid:...: Optuna does not search grids; use --searcher random")
    for key, dim in space.items():
        for value in dim.values:
            try:
                base.replace(**{key: value})
            except UserError as e:
                raise UserError(f"--space {key}: {e}") from None
    for batch in space.get("global_batch_size", Dim("choice", (base.global_batch_size,))).values:
        if int(batch) < most:
            raise UserError(
                f"--space global_batch_size: {batch} is smaller than --workers-per-trial {workers_per_trial}"
            )


def trial_count(space: dict[str, Dim], samples: int) -> int:
    """Tune's count: every sample runs the whole grid (the product of the `grid` dims' sizes)."""
    return samples * math.prod(len(d.values) for d in space.values() if d.kind == "grid")


BASE_CONFIG_FILE = "base_config.json"
SPACE_FILE = "space.json"


def space_json(space: dict[str, Dim]) -> str:
    return json.dumps({k: {"kind": d.kind, "values": list(d.values)} for k, d in space.items()}, indent=2) + "\n"


def saved_search(storage_uri: str, name: str, metric: str | None = None) -> tuple[TrainConfig, dict[str, Dim]]:
    """The base config and search space a search was started with (what `--resume` continues).
    A base config saved before `monitor` existed gets the metric its search was ranked by:
    `metric` (--metric), else val_accuracy, Tune's default then."""
    search_uri = storage.join(storage.absolute(storage_uri), name)
    base_uri, space_uri = storage.join(search_uri, BASE_CONFIG_FILE), storage.join(search_uri, SPACE_FILE)
    if not storage.exists(base_uri) or not storage.exists(space_uri):
        raise UserError(f"--resume: no search to resume at {search_uri} (no {BASE_CONFIG_FILE} / {SPACE_FILE})")
    text = storage.read_text(base_uri)
    base = TrainConfig.from_json(text, source=base_uri)
    if "monitor" not in json.loads(text):
        base = base.replace(monitor=metric or "val_accuracy")
        log.warning(
            "%s predates `monitor`: its trials are ranked by %s (--metric to say otherwise)", base_uri, base.monitor
        )
    try:
        raw = json.loads(storage.read_text(space_uri))
        space = {k: Dim(d["kind"], tuple(d["values"])) for k, d in raw.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{space_uri}: not a search space written by fer_dist ({e})") from None
    return base, space


def resolve_search(
    preset: str | None, sets: dict, space_specs: list[str] | None, storage_uri: str, name: str | None, resume: bool
) -> tuple[TrainConfig, dict[str, Dim]]:
    """(base config, space) of a new search (`preset`, default quick, with `--set`s and `--space`
    edits), or, with `resume`, the search's saved ones: flags may only repeat them."""
    from fer_dist import config as config_lib
    from fer_dist.experiment import absolute_paths

    if not resume:
        return config_lib.resolve(preset or "quick", sets), parse_space(preset or "quick", space_specs)
    base, space = saved_search(storage_uri, name, sets.get("monitor"))
    wanted = config_lib.resolve(preset, sets) if preset else base.replace(**sets) if sets else base
    refuse_changes(base, absolute_paths(wanted), space, parse_space(preset, space_specs, start=space))
    return base, space


def refuse_changes(saved: TrainConfig, wanted: TrainConfig, saved_space: dict, wanted_space: dict) -> None:
    """`--resume` continues the search as it was started: flags that change its base config or
    space are errors."""
    changed = [f for f in saved.to_dict() if saved.to_dict()[f] != wanted.to_dict()[f]]
    if changed:
        raise UserError(
            f"--resume: the search's saved base config is used; these flags would change {', '.join(changed)} "
            "(start a new search with another --name instead)"
        )
    if space_json(saved_space) != space_json(wanted_space):
        raise UserError("--resume: the search's saved space.json is used; drop --space or start a new search")


# ---------------------------------------------------------------------------------
# A stopped trial's Train run ends before Tune starts another (trial_runs.stop_run).
# ---------------------------------------------------------------------------------
TRIAL_RETRIES = 1  # Tune restarts a failed trial this often; it resumes from its checkpoints


def trial_run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def _callback_class():
    from ray.tune import Callback

    from fer_dist import trial_runs

    class StopTrialTrainRuns(Callback):
        """Ends a completed, stopped or failed trial's Train run before Tune goes on."""

        def _stop(self, trial, why: str) -> None:
            run = trial_run_name(trial.trial_id)
            waited = trial_runs.stop_run(run)
            if waited is not None:
                epoch = (trial.last_result or {}).get("epoch", 0)
                log.info("%s %s after epoch %s; its Train run ended (%.1f s)", run, why, epoch, waited)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._stop(trial, "finished or stopped")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._stop(trial, "failed")

        def on_trial_recover(self, iteration, trials, trial, **info):  # failed; Tune retries it
            self._stop(trial, "failed (Tune retries it)")

    return StopTrialTrainRuns


# ---------------------------------------------------------------------------------
# The trial and the search.
# ---------------------------------------------------------------------------------
def run_trial(
    params: dict,
    *,
    base_json: str,
    trials_uri: str,
    workers: int | str,
    gpus_per_worker: float,
    cpus_per_worker: float,
    fence: dict | None = None,
) -> None:
    """The Tune function trainable: one distributed Ray Train run, its writes fenced by the
    search's lease (`fence`: the fields of the driver's `exclusive.Fence`)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fer_dist import exclusive, launch

    class EpochReports(TuneReportCallback):
        """Tune hears of epochs only: a preemption's step checkpoint has no validation."""

        def after_report(self, run_context, metrics, checkpoint):
            if not (metrics and metrics[0].get("step")):
                super().after_report(run_context, metrics, checkpoint)

    config = TrainConfig.from_json(base_json).replace(**params)
    name = trial_run_name(tune.get_context().get_trial_id())
    trainer = launch.make_trainer(
        config,
        storage_uri=trials_uri,
        name=name,
        num_workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        max_failures=0,  # Tune retries the trial (TRIAL_RETRIES); see StopTrialTrainRuns
        callbacks=[EpochReports()],
        record_workers=True,
        fence=exclusive.Fence(**fence) if fence else None,
    )
    result = trainer.fit()
    if result.error:
        raise result.error


TRIAL_DRIVER_RESOURCES = {"CPU": 0.01}  # the trial driver only coordinates; {"CPU": 0} is refused by Tune


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    samples: int = 8
    workers_per_trial: int | str = 1  # N or MIN:MAX (elastic); 1 by default: see README "Scaling"
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.95
    max_concurrent: int = 2
    metric: str = "val_loss"  # the base config's `monitor`: trials train and are ranked by the same metric
    grace_period: int = 2
    reduction_factor: int = 2
    searcher: str = "random"  # random | optuna


def search(
    base: TrainConfig,
    space: dict[str, Dim],
    spec: SearchSpec,
    *,
    storage_uri: str,
    name: str,
    resume: bool,
    address: str | None = None,
):
    """Runs (or resumes) a search on the Ray cluster of `ray_cluster.ensure_ray(address)`; writes
    results.csv, curves PNG, best_config.json, best_model/."""
    from ray import tune

    from fer_dist import ray_cluster, runs
    from fer_dist.experiment import RayNeeds, absolute_paths, prepare
    from fer_dist.launch import Workers

    # Trials run in Ray's own working directories: every local path must be absolute.
    storage_uri, base = storage.absolute(storage_uri), absolute_paths(base)
    # Tune's new console engine prints a configuration box, result paths and a TensorBoard command
    # into Ray's session directory on stdout whatever `verbose` says; the old one at verbose=0
    # prints nothing, and this job logs its own lines (stdout: the results table only).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    spec = dataclasses.replace(spec, metric=base.monitor)  # ASHA, the ranking and the export: the trials' own
    log.info("trials are ranked by %s", monitor.describe(base.monitor))
    search_uri = runs.run_dir(storage_uri, name)  # the name and the bucket checked
    fs, path = storage.filesystem(storage_uri)
    trials_uri = storage.join(search_uri, TRIALS_DIR)
    tune_path = storage.join(path, name) if storage.is_gcs(storage_uri) else storage.filesystem(search_uri)[1]
    if resume and not tune.Tuner.can_restore(tune_path, storage_filesystem=fs):
        raise UserError(f"--resume: no search to resume at {search_uri}")
    if not resume and storage.exists(search_uri) and storage.listdir(search_uri):
        raise UserError(
            f"search directory {search_uri} already exists: pass --resume to continue it, or choose another --name"
        )
    needs = RayNeeds(
        Workers.parse(spec.workers_per_trial, "--workers-per-trial").min,
        ray_cluster.worker_resources(spec.cpus_per_worker, spec.gpus_per_worker),
        f"--workers-per-trial {spec.workers_per_trial} --cpus-per-worker {spec.cpus_per_worker:g}"
        + (f" --gpus-per-worker {spec.gpus_per_worker:g}" if spec.gpus_per_worker else ""),
        extra=TRIAL_DRIVER_RESOURCES,
        address=address,
    )
    with prepare(search_uri, base, resume=resume, ray=needs, first_file=BASE_CONFIG_FILE, what="search") as run:
        trainable = _trainable(base, spec, trials_uri, run.lease.fence())  # trials are fenced by the search's lease
        if resume:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
        else:
            tuner = _new_tuner(trainable, base, space, spec, search_uri=search_uri, name=name, path=path, fs=fs)
        log.info(
            "search %s: %d trial(s), %s worker(s)/trial, space %s",
            search_uri,
            trial_count(space, spec.samples),
            spec.workers_per_trial,
            ", ".join(f"{k}={d.describe()}" for k, d in space.items()),
        )
        log.info("each trial logs one line per epoch; TensorBoard: tensorboard --logdir %s", trials_uri)
        start = time.perf_counter()
        grid = tuner.fit()
        log.info("search finished in %.0f s", time.perf_counter() - start)
        return summarize(grid, base, spec, search_uri, trials_uri)


def _trainable(base: TrainConfig, spec: SearchSpec, trials_uri: str, fence):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(
            run_trial,
            base_json=base.to_json(),
            trials_uri=trials_uri,
            workers=spec.workers_per_trial,
            gpus_per_worker=spec.gpus_per_worker,
            cpus_per_worker=spec.cpus_per_worker,
            fence=dataclasses.asdict(fence),
        ),
        TRIAL_DRIVER_RESOURCES,
    )


def _new_tuner(trainable, base: TrainConfig, space: dict[str, Dim], spec: SearchSpec, *, search_uri, name, path, fs):
    """A new search: space.json beside base_config.json, ASHA (random or Optuna)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    mode = monitor.mode(spec.metric)
    storage.write_text(storage.join(search_uri, SPACE_FILE), space_json(space))  # base_config.json: `prepare`
    if spec.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, max_concurrent = OptunaSearch(seed=base.seed), spec.max_concurrent
    else:  # random, drawn from the base config's seed: the same flags give the same trials
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent, random_state=base.seed)
        max_concurrent = None  # the generator limits itself; Tune only wraps a Searcher
    return tune.Tuner(
        trainable,
        param_space={k: d.to_tune() for k, d in space.items()},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=mode,
            num_samples=spec.samples,
            max_concurrent_trials=max_concurrent,
            search_alg=search_alg,
            scheduler=ASHAScheduler(
                time_attr="epoch",
                max_t=base.epochs,
                grace_period=spec.grace_period,
                reduction_factor=spec.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            callbacks=[_callback_class()()],
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            # No status tables, result dicts or TensorBoard hint (inside Ray's temporary session):
            # each trial's chief logs one line per epoch, StopTrialTrainRuns one when it ends,
            # and Tune still prints a failed trial's error.
            verbose=0,
        ),
    )


def trial_history(trials_uri: str | None, trial: str, reported):
    """A trial's history as its run directory holds it (history.csv, written by its chief each
    epoch), else as it reported to Tune. ASHA's stop reaches a Train run a little late, so the
    directory can hold an epoch more than Tune heard of: results.csv follows the directory."""
    import pandas as pd

    uri = storage.join(trials_uri, trial, "history.csv") if trials_uri else None
    if uri and storage.exists(uri):
        on_disk = pd.read_csv(io.StringIO(storage.read_text(uri)))
        if not on_disk.empty:
            if "time_total_s" in reported and "epoch_seconds" in on_disk:
                on_disk["time_total_s"] = on_disk["epoch_seconds"].cumsum()
            return on_disk
    return reported


def results_table(grid, base: TrainConfig, spec: SearchSpec, trials_uri: str | None = None):
    import pandas as pd

    rows, curves = [], {}
    for result in grid:
        if result.metrics is None or not result.metrics:
            continue
        trial_id = result.metrics.get("trial_id") or os.path.basename(result.path)
        history = result.metrics_dataframe
        history = history if history is not None else pd.DataFrame([result.metrics])
        history = trial_history(trials_uri, trial_run_name(trial_id), history)
        epochs_run = int(history["epoch"].max()) if "epoch" in history else 0
        params = result.config or {}
        config = base.replace(**params)
        early = bool(history.get("stopped_early", pd.Series([False])).fillna(False).astype(bool).any())
        best = monitor.best_of(history[spec.metric], spec.metric) if spec.metric in history else math.nan
        rows.append(
            {
                "trial": trial_run_name(trial_id),
                **{k: params[k] for k in sorted(params)},
                f"best_{spec.metric}": best,
                "epochs_run": epochs_run,
                "stopped": "early_stop" if early else ("asha" if epochs_run < config.epochs else "no"),
                "wall_seconds": round(float(history["time_total_s"].max()), 1)
                if "time_total_s" in history
                else math.nan,
                "error": "" if result.error is None else type(result.error).__name__,
            }
        )
        if "epoch" in history and spec.metric in history:
            curves[trial_run_name(trial_id)] = history[["epoch", spec.metric]]
    table = pd.DataFrame(rows)
    if not table.empty:
        ascending = monitor.mode(spec.metric) == "min"
        table = table.sort_values(f"best_{spec.metric}", ascending=ascending).reset_index(drop=True)
    return table, curves


def _curves_png(curves: dict, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for trial, df in sorted(curves.items()):
        ax.plot(df["epoch"], df[metric], marker="o", ms=3, label=trial)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every trial")
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summarize(grid, base: TrainConfig, spec: SearchSpec, search_uri: str, trials_uri: str) -> dict:
    """results.csv, <metric>_curves.png, best_config.json and best_model/ in the search directory."""
    import pandas as pd

    table, curves = results_table(grid, base, spec, trials_uri)
    if table.empty:
        raise UserError(f"search {search_uri}: no trial reported any result")
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    storage.write_text(storage.join(search_uri, "results.csv"), buf.getvalue())
    write_trial_metrics(table, trials_uri)
    storage.write_bytes(storage.join(search_uri, f"{spec.metric}_curves.png"), _curves_png(curves, spec.metric))
    best_trial = str(table.iloc[0]["trial"])  # the best of results.csv: what the trial directories hold
    best_config = trial_config(trials_uri, best_trial, base, grid)
    storage.write_text(storage.join(search_uri, "best_config.json"), best_config.to_json())
    export_best(storage.join(trials_uri, best_trial), best_config, spec.metric, storage.join(search_uri, "best_model"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    print(
        f"search directory: {search_uri}\n"
        f"best trial: {table.iloc[0]['trial']} {spec.metric}={table.iloc[0][f'best_{spec.metric}']:.4f}\n"
        f"retrain it: python jobs/train.py --config {storage.join(search_uri, 'best_config.json')}\n"
        f"evaluate it: python jobs/evaluate.py {storage.join(search_uri, 'best_model')} --data {base.data}",
        flush=True,
    )
    return {"results": table, "best_config": best_config, "search_dir": search_uri}


def write_trial_metrics(table, trials_uri: str) -> None:
    """Every trial directory gets a metrics.json: a finished trial's chief wrote the full one;
    a trial that ASHA stopped (or that failed) gets its row of results.csv."""
    from fer_dist.evaluate import METRICS_FILE

    for row in table.to_dict("records"):
        uri = storage.join(trials_uri, row["trial"], METRICS_FILE)
        if storage.exists(storage.join(trials_uri, row["trial"])) and not storage.exists(uri):
            clean = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            storage.write_text(uri, json.dumps(dict(clean, complete=False), indent=2, default=str) + "\n")


def trial_config(trials_uri: str, trial: str, base: TrainConfig, grid) -> TrainConfig:
    """The config a trial trained with: its directory's config.json, else the base config with
    the parameters Tune gave it."""
    uri = storage.join(trials_uri, trial, "config.json")
    if storage.exists(uri):
        return TrainConfig.from_json(storage.read_text(uri), source=uri)
    for result in grid:
        if trial_run_name((result.metrics or {}).get("trial_id", "")) == trial:
            return base.replace(**(result.config or {}))
    return base


def best_checkpoint(trial_dir: str, metric: str):
    """The trial's best whole checkpoint by the monitored `metric` (from its verified listing, the
    one that resume and retention use; the same ranking as retention's); None when it has none."""
    from fer_dist import checkpoint

    best = checkpoint.ranked(checkpoint.whole(checkpoint.of_run(trial_dir)), metric)
    return best[0] if best else None


def export_best(trial_dir: str, config: TrainConfig, metric: str, target_uri: str) -> None:
    """The best trial's best whole checkpoint as a run directory: config.json, model.keras,
    checkpoint metrics, and the rest of `_finish_best`."""
    import keras

    from fer_dist import checkpoint
    from fer_dist import model as model_lib

    facts = best_checkpoint(trial_dir, metric)
    if facts is None:
        log.warning("the best trial %s has no whole checkpoint with %s; nothing exported", trial_dir, metric)
        return
    model = model_lib.build(config)
    checkpoint.load_model_weights(facts.uri, model)
    storage.write_text(storage.join(target_uri, "config.json"), config.to_json())
    clean = dict(facts.metrics, epoch=facts.epoch, checkpoint=facts.uri)
    storage.write_text(
        storage.join(target_uri, "checkpoint_metrics.json"), json.dumps(clean, indent=2, default=str) + "\n"
    )
    _finish_best(model, config, trial_dir, facts.uri, target_uri)
    keras.backend.clear_session()


def _finish_best(model, config: TrainConfig, trial_dir: str, checkpoint_uri: str, target_uri: str) -> None:
    """best_model/ as a full run directory: history.csv, metrics.json (the final evaluation of
    the exported weights), confusion matrices, curves, model.keras and saved_model/."""
    from fer_dist import checkpoint, data, evaluate, reporting
    from fer_dist.train import LoopState

    if storage.exists(storage.join(trial_dir, "history.csv")):
        storage.write_text(
            storage.join(target_uri, "history.csv"), storage.read_text(storage.join(trial_dir, "history.csv"))
        )
    saved = json.loads(storage.read_text(storage.join(checkpoint_uri, checkpoint.STATE_FILE)))
    state = LoopState.from_dict(saved).monitoring(config)
    state.best_epoch = state.epoch  # the exported weights are this checkpoint's own
    dataset = data.load_for(config)
    reporting.export_model(model, config, target_uri)
    # metrics.json last: complete; its reports go to the log (stdout: the search's results table)
    evaluate.evaluate_run(model, dataset, config, target_uri, state, report_to=sys.stderr)
