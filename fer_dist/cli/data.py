"""Look at a dataset before training on it.

\b
    python jobs/data.py inspect data/fer2013.csv.gz
    python jobs/data.py inspect my_faces/ --output reports/my_faces    # + report.json, samples.png, class_balance.png
    python jobs/data.py inspect gs://BUCKET/faces/manifest.csv --format json

DATA is what `jobs/train.py --data` takes: a FER-2013 CSV, an image folder
(<root>/train/<class>/*.jpg, optional val/ and test/, class order from a classes.txt),
a manifest CSV (path,label[,split]) or `builtin`. `inspect` prints each split's class
counts and balance, how the images are stored, and the exact duplicates: groups of
identical faces, those spanning splits (an evaluation face that is also a training face)
and those whose labels disagree. `--set dedupe=eval` on a training run drops the training
faces that an evaluation split holds too.
"""

from __future__ import annotations

import json

import typer

from fer_dist import cli, logs

Format = cli.choices("Format", ("text", "json"))

app = cli.App(help=__doc__)


@app.command("inspect", help="Class counts and balance per split, stored size and colour, duplicates, sample grids.")
@cli.user_errors_exit
def inspect_command(
    data: str = typer.Argument(..., metavar="DATA", help="A FER-2013 CSV, image folder, manifest CSV or builtin."),
    output: str | None = typer.Option(
        None,
        "--output",
        metavar="DIR",
        help="Also write report.json, samples.png (a sample grid per class) and class_balance.png here.",
    ),
    fmt: Format = typer.Option("text", "--format", help="text (a table) or json (the whole report)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Skip malformed CSV rows / images."),
    labels: str | None = typer.Option(
        None,
        "--labels",
        metavar="VOTES.csv",
        help="FER+ votes (fer2013new.csv) for a FER-2013 CSV: its majority labels.",
    ),
    contempt: bool = typer.Option(True, "--contempt/--no-contempt", help="With --labels: contempt is a class."),
) -> None:
    logs.setup_logging()
    from fer_dist import data_report
    from fer_dist.data import VoteLabels

    if output is not None:
        data_report.check_output_free(output)
    votes = VoteLabels(labels, "majority", contempt) if labels else None
    report, splits = data_report.inspect(data, skip_bad_rows=skip_bad_rows, votes=votes)
    if cli.value(fmt) == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(data_report.format_report(report, splits.names))
    if output is not None:
        for uri in data_report.write(report, splits, output):
            print(f"wrote {uri}")


@app.callback()
def _group() -> None:
    """Subcommands: inspect."""


if __name__ == "__main__":
    app()
