"""Train a facial-emotion model: one process, or N Ray Train workers.

python jobs/train.py                                  # demo: built-in data, CPU, a few minutes
python jobs/train.py --data ../shared/data/fer2013/fer2013.csv.gz --preset seed
python jobs/train.py --workers 2                      # local Ray, 2 CPU workers
python jobs/train.py --resume --name NAME             # continue a run from its last checkpoint
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs
from fer_dist.launch import DEFAULT_MAX_FAILURES

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    data: str | None = typer.Option(
        None, "--data", help="'builtin', a FER-2013 CSV (.csv/.csv.gz, path or gs://), or an image folder."
    ),
    preset: str | None = typer.Option(None, "--preset", help="seed | best | smoke | demo | quick (default demo)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="key=value for any config field; repeatable."),
    config_file: str | None = typer.Option(None, "--config", help="A config.json (e.g. a search's best_config.json)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Shorthand for --set epochs=N."),
    output: str = typer.Option(
        "./runs", "--output", "--storage", help="Where runs go: a directory or gs://bucket/prefix."
    ),
    name: str | None = typer.Option(None, "--name", help="The run's directory name (generated when absent)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run --name from its last checkpoint."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Skip malformed CSV rows / images, and list them."
    ),
    workers: int = typer.Option(0, "--workers", help="Ray Train workers (0: this process, no Ray)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs for each Ray worker."),
    max_failures: int = typer.Option(
        DEFAULT_MAX_FAILURES, "--max-failures", help="Ray worker-group restarts before the run fails."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    from fer_dist import experiment, values

    logs.setup_logging()
    sets = values.parse_overrides(overrides)
    if data is not None:
        sets["data"] = data
    if epochs is not None:
        sets["epochs"] = str(epochs)
    if skip_bad_rows:
        sets["skip_bad_rows"] = "true"
    if workers < 0:
        raise cli.UserError(f"--workers {workers}: must be >= 0")
    if gpus_per_worker < 0:
        raise cli.UserError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")
    if max_failures < -1:
        raise cli.UserError(f"--max-failures {max_failures}: must be >= -1 (-1: unlimited)")
    experiment.train(
        preset=preset,
        overrides=sets,
        config_file=config_file,
        output=output,
        name=name,
        resume=resume,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_failures=max_failures,
        progress=not quiet,
    )


if __name__ == "__main__":
    app()
