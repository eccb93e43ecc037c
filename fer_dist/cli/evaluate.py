"""Score trained runs on any data: accuracy, macro-F1, per-class table, confusion matrix.

\b
    python jobs/evaluate.py RUN_DIR --data data/fer2013.csv --split val
    python jobs/evaluate.py RUN1 RUN2 RUN3 --data PATH          # ensemble: mean probabilities
    python jobs/evaluate.py RUN_DIR --data PATH --tta tencrop   # test-time augmentation: none | flip | tencrop

Results go to --output, or by default to RUN_DIR/evaluations/<data>-<split>[-tta_<tta>]
[-ensemble_<id>]/ of the first run (`-tta_` unless the TTA is none; `<id>`: 8 hex digits of
the sha256 of the sorted absolute run URIs, listed as `members` in metrics.json):
metrics.json (with `accuracy` and the `tta` used), <split>_confusion.csv and .png. Nothing is
overwritten: a default directory that already holds metrics.json becomes <dir>-2, -3, ...;
an --output that holds one is an error. The data needs no training split (a file of
PrivateTest rows alone is scored on its test split). Without --tta each run uses its config's
`eval_tta` (none unless the run set it); with an ensemble each model's TTA-averaged
probabilities are averaged; the runs of an ensemble must share their training data.
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs
from fer_dist.config import TTA_MODES

Split = cli.choices("Split", ("train", "val", "test"))
Tta = cli.choices("Tta", TTA_MODES)

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    run_dirs: list[str] = typer.Argument(
        ..., metavar="RUN_DIR", help="One run directory (local or gs://), or several for an ensemble."
    ),
    data: str | None = typer.Option(
        None, "--data", metavar="PATH", help="Data to score on (default: the run's own data)."
    ),
    split: Split | None = typer.Option(
        None, "--split", help="The split to score (default: test if the data has it, else val)."
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        metavar="DIR",
        help="The directory for metrics.json and the confusion matrix (default: RUN_DIR/evaluations/...).",
    ),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Skip malformed CSV rows / images."),
    tta: Tta | None = typer.Option(
        None, "--tta", help="Test-time augmentation: flip averages 2 views, tencrop 10 (default: the run's eval_tta)."
    ),
) -> None:
    import logging

    logs.setup_logging()
    from fer_dist import evaluate

    split, tta = cli.value(split), cli.value(tta)
    log = logging.getLogger("fer_dist.evaluate")
    if output is not None:
        evaluate.check_output_free(output)
    if data is None:
        data = evaluate.load_config(run_dirs[0]).data
    evaluation = evaluate.prepare_evaluation(run_dirs, data, split, skip_bad_rows=skip_bad_rows, tta=tta)
    if output is None:
        base = evaluation.default_output()
        out = evaluate.free_output(base)
        if out != base:
            log.info("%s already holds an evaluation: writing to %s", base, out)
    else:
        out = output
    metrics = evaluation.score()
    name = f"ensemble of {len(run_dirs)} runs" if len(run_dirs) > 1 else run_dirs[0]
    print(evaluate.format_report(metrics, f"{name} on {data} [{evaluation.split}, tta {metrics['tta']}]"))
    if output is None and out != (again := evaluate.free_output(base)):  # another one finished meanwhile
        log.info("%s now holds an evaluation: writing to %s", out, again)
        out = again
    metrics = dict(
        metrics, runs=run_dirs, members=evaluate.members(run_dirs), data=data, split=evaluation.split, output=out
    )
    print(f"wrote {evaluate.write_evaluation(out, metrics, evaluation.split)}")


if __name__ == "__main__":
    app()
