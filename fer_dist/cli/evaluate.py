"""Score trained runs on any data: accuracy, macro-F1, per-class table, confusion matrix.

    python jobs/evaluate.py RUN_DIR --data ../shared/data/fer2013/fer2013.csv.gz --split val
    python jobs/evaluate.py RUN1 RUN2 RUN3 --data PATH          # ensemble: mean probabilities
    python jobs/evaluate.py RUN_DIR --data PATH --tta tencrop   # test-time augmentation: none | flip | tencrop

Results go to --output (default: RUN_DIR/evaluations/<data>-<split>/ of the first run):
metrics.json (with `accuracy` and the `tta` used), <split>_confusion.csv and .png.
Without --tta each run uses its config's `eval_tta` (none unless the run set it); with an
ensemble each model's TTA-averaged probabilities are averaged.
"""

from __future__ import annotations

import os

import typer

from fer_dist import cli, logs

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    run_dirs: list[str] = typer.Argument(..., help="One run directory (local or gs://), or several for an ensemble."),
    data: str | None = typer.Option(None, "--data", help="Data to score on (default: the run's own data)."),
    split: str | None = typer.Option(
        None, "--split", help="train | val | test (default: test if the data has it, else val)."
    ),
    output: str | None = typer.Option(None, "--output", help="Where to write metrics.json and the confusion matrix."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Skip malformed CSV rows / images."),
    tta: str | None = typer.Option(
        None, "--tta", help="Test-time augmentation: none | flip | tencrop (default: the run's eval_tta)."
    ),
) -> None:
    import json

    from fer_dist import evaluate, storage

    logs.setup_logging()
    if data is None:
        data = evaluate.load_run(run_dirs[0])[0].data
    metrics, used_split = evaluate.evaluate_data(run_dirs, data, split, skip_bad_rows=skip_bad_rows, tta=tta)
    stem = os.path.basename(data.rstrip("/")).split(".")[0] or "data"
    title = f"{'ensemble of ' + str(len(run_dirs)) + ' runs' if len(run_dirs) > 1 else run_dirs[0]} on {data} [{used_split}, tta {metrics['tta']}]"
    print(evaluate.format_report(metrics, title))
    out = output or storage.join(run_dirs[0], "evaluations", f"{stem}-{used_split}")
    metrics = dict(metrics, runs=run_dirs, data=data, split=used_split)
    storage.write_text(storage.join(out, evaluate.METRICS_FILE), json.dumps(metrics, indent=2) + "\n")
    evaluate.write_confusion(out, metrics, used_split)
    print(f"wrote {storage.join(out, evaluate.METRICS_FILE)}")


if __name__ == "__main__":
    app()
