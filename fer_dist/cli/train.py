"""Train a facial-emotion model: one process, or N Ray Train workers.

\b
    python jobs/train.py                                  # demo: built-in data, CPU, a few minutes
    python jobs/train.py --data data/fer2013.csv --preset seed
    python jobs/train.py --workers 2                      # a private local Ray cluster, 2 CPU workers
    python jobs/train.py --workers 1 --gpus-per-worker 1 --address auto \\
        --storage gs://BUCKET/fer/runs                    # one GPU of the cluster `ray start` made here
    python jobs/train.py --resume --name NAME             # continue a run from its last checkpoint

Runs go to <storage>/<name>/: config.json, history.csv, metrics.json, confusion matrices,
curves.png, tensorboard/, checkpoints, model.keras and saved_model/.
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs
from fer_dist.launch import DEFAULT_MAX_FAILURES
from fer_dist.presets import DEFAULT_PRESET, PRESETS

Preset = cli.choices("Preset", PRESETS)

ADDRESS_HELP = (
    "The Ray cluster of --workers: HOST:PORT, 'auto' (the cluster `ray start` made on this machine), "
    "ray://HOST:10001, or 'local' (a private one). Default: RAY_ADDRESS if set, else a private "
    "local cluster started for this job."
)

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    data: str | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="'builtin', a FER-2013 CSV (.csv/.csv.gz, path or gs://), an image folder "
        "(<root>/train/<class>/*.jpg) or a manifest CSV (path,label[,split]).",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        metavar="VOTES.csv",
        help="FER+ votes (fer2013new.csv) for a FER-2013 --data CSV; shorthand for --set labels=... "
        "(label_mode=majority|probability, contempt=true|false).",
    ),
    preset: Preset | None = typer.Option(
        None,
        "--preset",
        help=f"The recipe (fer_dist/presets.py): seed (the ResNet50 recipe), best, finetune (GPU), "
        f"smoke (seconds), demo, quick. Default {DEFAULT_PRESET}.",
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="key=value for any config field; repeatable."
    ),
    config_file: str | None = typer.Option(
        None, "--config", metavar="FILE", help="A config.json (e.g. a search's best_config.json)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", metavar="N", help="Shorthand for --set epochs=N."),
    storage_uri: str = typer.Option(
        "./runs",
        "--storage",
        metavar="DIR",
        help="Where runs go: a directory or gs://bucket/prefix (as in jobs/tune.py).",
    ),
    output: str | None = typer.Option(None, "--output", hidden=True, help="The old name of --storage."),
    name: str | None = typer.Option(
        None, "--name", metavar="NAME", help="The run's directory name (generated when absent)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run --name from its last checkpoint."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Skip malformed CSV rows / images, and list them."
    ),
    workers: str = typer.Option(
        "0",
        "--workers",
        metavar="N|MIN:MAX",
        help="Ray Train workers: N, or MIN:MAX for an elastic run that starts with what the cluster gives "
        "(at least MIN) and survives lost nodes (0: this process, no Ray).",
    ),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", metavar="N", help="GPUs for each Ray worker (0: CPU)."
    ),
    max_failures: int = typer.Option(
        DEFAULT_MAX_FAILURES,
        "--max-failures",
        metavar="N",
        help="Ray worker-group restarts before the run fails (-1: unlimited).",
    ),
    address: str | None = typer.Option(None, "--address", metavar="ADDRESS", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars (log lines only)."),
) -> None:
    logs.setup_logging()
    from fer_dist import experiment, values

    sets = values.parse_overrides(overrides)
    if data is not None:
        sets["data"] = data
    if labels is not None:
        sets["labels"] = labels
    if epochs is not None:
        sets["epochs"] = str(epochs)
    if skip_bad_rows:
        sets["skip_bad_rows"] = "true"
    if output is not None:
        if storage_uri != "./runs" and storage_uri != output:
            raise cli.UserError(f"--output {output} and --storage {storage_uri}: --output is the old name of --storage")
        storage_uri = output
    from fer_dist.launch import Workers

    parsed = Workers.parse(workers)
    if gpus_per_worker < 0:
        raise cli.UserError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")
    if max_failures < -1:
        raise cli.UserError(f"--max-failures {max_failures}: must be >= -1 (-1: unlimited)")
    if address is not None and not parsed:
        raise cli.UserError(f"--address {address}: only with --workers N (without it, training runs in this process)")
    experiment.train(
        preset=cli.value(preset),
        overrides=sets,
        config_file=config_file,
        output=storage_uri,
        name=name,
        resume=resume,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_failures=max_failures,
        progress=not quiet,
        address=address,
    )


if __name__ == "__main__":
    app()
