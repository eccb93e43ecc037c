"""Search hyper-parameters with Ray Tune; every trial is a Ray Train run.

\b
    python jobs/tune.py                                            # small local search, built-in data
    python jobs/tune.py --preset seed --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/tune \\
        --gpus-per-worker 1 --samples 16 --max-concurrent 4      # 4 trials at once, one GPU each
    python jobs/tune.py --space dropout=0.3:0.6 --space global_batch_size=16,32 --space learning_rate=off
    python jobs/tune.py --resume --name NAME                       # continue a killed search

Results in <storage>/<name>/: results.csv, <metric>_curves.png, best_config.json, best_model/,
and every trial's run in trials/ (tensorboard --logdir <storage>/<name>/trials).
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs, runs
from fer_dist.cli.train import ADDRESS_HELP, Preset

Metric = cli.choices("Metric", ("val_accuracy", "val_loss"))
Searcher = cli.choices("Searcher", ("random", "optuna"))

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    data: str | None = typer.Option(
        None, "--data", metavar="PATH", help="As in jobs/train.py (default: built-in data)."
    ),
    preset: Preset | None = typer.Option(
        None,
        "--preset",
        help="Base recipe of every trial (as in jobs/train.py); also picks the search space (default quick).",
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="key=value for the base config; repeatable."
    ),
    space: list[str] | None = typer.Option(
        None,
        "--space",
        metavar="KEY=V1,V2,...",
        help="key=a,b,c (one drawn per trial) | key=grid:a,b,c (every value) | key=lo:hi | key=log:lo:hi | key=off.",
    ),
    samples: int = typer.Option(
        8, "--samples", metavar="N", help="Trials to run (with grid: dims, each sample runs the whole grid)."
    ),
    workers_per_trial: str = typer.Option(
        "1",
        "--workers-per-trial",
        metavar="N|MIN:MAX",
        help="Ray Train workers of each trial: N, or MIN:MAX (elastic). 1 by default: for FER-sized models "
        "the gradient all-reduce costs more than a worker saves (README 'Scaling'), so trials run side by side.",
    ),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", metavar="N", help="GPUs of each worker (0: CPU); on a cluster, 1 per GPU node."
    ),
    cpus_per_worker: float = typer.Option(
        0.95,
        "--cpus-per-worker",
        metavar="N",
        help="CPUs of each worker; a little under 1 leaves room for the trial drivers (0.01 each).",
    ),
    max_concurrent: int = typer.Option(2, "--max-concurrent", metavar="N", help="Trials running at once."),
    metric: Metric | None = typer.Option(
        None,
        "--metric",
        help="Shorthand for --set monitor=...: the one metric the trials' early stopping and checkpoints, "
        "ASHA and the ranking go by: val_loss (lowest) or val_accuracy (highest). Default: the preset's (val_loss).",
    ),
    grace_period: int = typer.Option(
        2,
        "--grace-period",
        metavar="N",
        help="ASHA: epochs before a trial can be stopped (epoch-1 scores are mostly noise).",
    ),
    reduction_factor: int = typer.Option(
        2, "--reduction-factor", metavar="N", help="ASHA: keep 1/N of trials at each rung."
    ),
    searcher: Searcher = typer.Option(
        "random", "--searcher", help='random search, or optuna (model-based; pip install -e ".[tune]").'
    ),
    storage_uri: str = typer.Option(
        "./runs/tune",
        "--storage",
        metavar="DIR",
        help="Where searches go: a directory or gs://bucket/prefix (as in jobs/train.py).",
    ),
    name: str | None = typer.Option(
        None, "--name", metavar="NAME", help="The search's directory name (generated when absent)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue search --name without rerunning finished trials."),
    address: str | None = typer.Option(
        None, "--address", metavar="ADDRESS", help=ADDRESS_HELP.replace("of --workers", "of the trials")
    ),
) -> None:
    logs.setup_logging()
    from fer_dist import tune as tune_lib
    from fer_dist import values

    preset, metric, searcher = cli.value(preset), cli.value(metric), cli.value(searcher)
    from fer_dist.launch import Workers

    checks = [
        (
            bool(Workers.parse(workers_per_trial, "--workers-per-trial")),
            "--workers-per-trial 0: must be >= 1",
        ),
        (samples >= 1, f"--samples {samples}: must be >= 1"),
        (gpus_per_worker >= 0, f"--gpus-per-worker {gpus_per_worker}: must be >= 0"),
        (cpus_per_worker > 0, f"--cpus-per-worker {cpus_per_worker}: must be > 0"),
        (max_concurrent >= 1, f"--max-concurrent {max_concurrent}: must be >= 1"),
        (grace_period >= 1, f"--grace-period {grace_period}: must be >= 1"),
        (reduction_factor >= 2, f"--reduction-factor {reduction_factor}: must be >= 2"),
        (searcher in ("random", "optuna"), f"--searcher {searcher!r}: expected random or optuna"),
    ]
    for ok, message in checks:
        if not ok:
            raise cli.UserError(message)
    if resume and not name:
        raise cli.UserError("--resume needs --name NAME (the search to continue)")
    sets = values.parse_overrides(overrides)
    if data is not None:
        sets["data"] = data
    if metric is not None:
        if sets.get("monitor", metric) != metric:
            raise cli.UserError(f"--metric {metric} and --set monitor={sets['monitor']}: give one of them")
        sets["monitor"] = metric
    base, search_space = tune_lib.resolve_search(preset, sets, space, storage_uri, name, resume)
    tune_lib.check_space(base, search_space, workers_per_trial, searcher)
    if searcher == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise cli.UserError('--searcher optuna needs optuna: pip install -e ".[tune]"') from None
    spec = tune_lib.SearchSpec(
        samples=samples,
        workers_per_trial=workers_per_trial,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        max_concurrent=max_concurrent,
        metric=base.monitor,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        searcher=searcher,
    )
    tune_lib.search(
        base,
        search_space,
        spec,
        storage_uri=storage_uri,
        name=name or runs.new_run_name("search"),
        resume=resume,
        address=address,
    )


if __name__ == "__main__":
    app()
