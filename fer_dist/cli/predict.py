"""Predict the emotions of face images with a trained run: all 7 probabilities and the top one.

\b
    python jobs/predict.py face.jpg --run runs/NAME
    python jobs/predict.py faces/ --run runs/NAME --format json --tta flip

IMAGE_OR_DIR is one image or a directory of .jpg/.jpeg/.png faces, of any size, gray or
colour (converted to gray and resized to 48x48). --run is a run directory (local or gs://)
with model.keras. --tta: none | flip | tencrop (default: the run's eval_tta).
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs
from fer_dist.cli.evaluate import Tta

Format = cli.choices("Format", ("table", "json"))  # fer_dist.predict.FORMATS

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    image_or_dir: str = typer.Argument(..., metavar="IMAGE_OR_DIR", help="An image file, or a directory of images."),
    run: str = typer.Option(..., "--run", metavar="RUN_DIR", help="The trained run's directory (local or gs://)."),
    fmt: Format = typer.Option("table", "--format", help="A table for people, or JSON (one object per image)."),
    tta: Tta | None = typer.Option(None, "--tta", help="Test-time augmentation (default: the run's eval_tta)."),
) -> None:
    logs.setup_logging()
    from fer_dist import predict

    fmt, tta = cli.value(fmt), cli.value(tta)
    if fmt not in predict.FORMATS:
        raise cli.UserError(f"--format {fmt!r}: expected one of {', '.join(predict.FORMATS)}")
    frame = predict.predict(image_or_dir, run, tta)
    print(predict.render(frame, fmt), flush=True)


if __name__ == "__main__":
    app()
