"""Predict the emotions of the faces in images and videos with a trained run.

\b
    python jobs/predict.py photo.jpg --run runs/NAME --annotate out/
    python jobs/predict.py faces/ --run runs/NAME --format json --tta flip
    python jobs/predict.py clip.mp4 --run runs/NAME --fps 2 --format csv --plot clip.png > clip.csv
    python jobs/predict.py gs://bucket/images/ --run RUN --workers 4 --output gs://bucket/emotions/

IMAGE_OR_DIR is an image (.jpg/.jpeg/.png, any size, gray or colour), a video
(.mp4/.avi/.mov/.mkv/.webm/.m4v), or a directory of them. Faces are found by a detector
(MTCNN) in photos and frames, or read whole (face crops); each face is converted to gray,
resized to 48x48 and scored by the run's model. One row per face, on stdout; an image
without a face gets a row saying so. --run is a run directory (local or gs://).

With --workers N the images of a directory are scored on a Ray cluster (Ray Data, the model
loaded once per worker) into Parquet parts under --output; the same command again resumes,
scoring only what is not done.
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs
from fer_dist.cli.evaluate import Tta

Format = cli.choices("Format", ("table", "json", "jsonl", "csv"))  # fer_dist.predict.FORMATS
Faces = cli.choices("Faces", ("auto", "detect", "whole"))  # fer_dist.faces.FACE_MODES

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    image_or_dir: str = typer.Argument(
        ..., metavar="IMAGE_OR_DIR", help="An image or video file, or a directory of them."
    ),
    run: str = typer.Option(..., "--run", metavar="RUN_DIR", help="The trained run's directory (local or gs://)."),
    fmt: Format = typer.Option(
        "table", "--format", help="A table for people, JSON, JSON lines or CSV (one row per face)."
    ),
    faces: Faces = typer.Option(
        "auto",
        "--faces",
        help="detect: faces found by the detector; whole: each image is one face crop; auto: small images "
        "whole, others detected (a square-ish image without a detected face is read whole, and says so).",
    ),
    top_k: int = typer.Option(1, "--top-k", metavar="K", help="Also list each face's K most likely emotions."),
    fps: float = typer.Option(2.0, "--fps", metavar="F", help="Video frames read per second of video."),
    annotate: str | None = typer.Option(
        None, "--annotate", metavar="DIR", help="Write each image (and video frame) with its faces drawn, to DIR."
    ),
    plot: str | None = typer.Option(
        None, "--plot", metavar="FILE.png", help="Plot a video's emotions over time (the largest face per frame)."
    ),
    tta: Tta | None = typer.Option(None, "--tta", help="Test-time augmentation (default: the run's eval_tta)."),
    workers: int | None = typer.Option(
        None, "--workers", metavar="N", help="Score a directory of images on N Ray workers (needs --output)."
    ),
    output: str | None = typer.Option(
        None, "--output", metavar="DIR", help="Where --workers writes its Parquet parts (local or gs://)."
    ),
    shard_files: int = typer.Option(500, "--shard-files", metavar="N", help="Files per unit of work with --workers."),
    address: str | None = typer.Option(
        None, "--address", metavar="ADDR", help="The Ray cluster for --workers (default: RAY_ADDRESS, else a new one)."
    ),
    gpus_per_worker: float = typer.Option(
        0, "--gpus-per-worker", metavar="G", help="GPUs per --workers worker (0: one CPU each)."
    ),
) -> None:
    logs.setup_logging()
    from fer_dist import predict

    options = predict.Options(
        tta=cli.value(tta), faces=cli.value(faces), top_k=top_k, fps=fps, annotate=annotate, plot=plot
    )
    batch_args = dict(
        workers=workers, output=output, shard_files=shard_files, address=address, gpus_per_worker=gpus_per_worker
    )
    print(predict.run_job(image_or_dir, run, options, cli.value(fmt), batch_args), flush=True)


if __name__ == "__main__":
    app()
