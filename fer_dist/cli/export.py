"""Export a trained run's serving model to TensorFlow Lite.

\b
    python jobs/export.py runs/NAME --tflite model.tflite
    python jobs/export.py gs://BUCKET/runs/NAME --tflite fer.tflite

RUN_DIR is a run directory (local or gs://) with saved_model/, the serving SavedModel that
training writes (fer_dist/serving.py). --tflite converts its `serving_gray48` signature:
float32 `images` [N, 48, 48, 1] (gray, 0-255; [N, 48, 48, 3] for a run trained on colour) ->
`probabilities` [N, K] (the run's K classes, in the order of saved_model/assets.extra/labels.txt)
and `classes` [N]. The decoding, colour conversion and 48x48 resize of a face stay with the app
that runs it.
"""

from __future__ import annotations

import os
import tempfile

import typer

from fer_dist import cli, logs

app = cli.App()

SAVED_MODEL = "saved_model"


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="The trained run's directory (local or gs://)."),
    tflite: str = typer.Option(
        ..., "--tflite", metavar="FILE", help="Where to write the .tflite model (local or gs://)."
    ),
) -> None:
    logs.setup_logging()
    from fer_dist import storage

    saved_uri = storage.join(run_dir, SAVED_MODEL)
    if not storage.exists(storage.join(saved_uri, "saved_model.pb")):
        raise cli.UserError(
            f"{run_dir}: no {SAVED_MODEL}/ (not a finished run directory; training writes it at the end)"
        )
    if storage.is_dir(tflite):
        raise cli.UserError(f"--tflite {tflite}: a directory (give the path of the .tflite file to write)")
    from fer_dist import inference, serving  # TensorFlow: after the checks of the input

    with tempfile.TemporaryDirectory(prefix="fer_dist_export_") as tmp:
        local = storage.local_path(saved_uri) or storage.download_dir(saved_uri, os.path.join(tmp, SAVED_MODEL))
        out = os.path.join(tmp, "model.tflite")
        size = serving.export_tflite(local, out)
        with open(out, "rb") as f:
            storage.write_bytes(tflite, f.read())
    config = inference.load_config(run_dir)
    channels = 3 if config.input_channels == "rgb" else 1
    print(
        f"wrote {tflite} ({size / 1024:.0f} KiB): {serving.SIGNATURE_GRAY48} float32 {serving.INPUT_NAME} "
        f"[N, 48, 48, {channels}] -> probabilities [N, {len(config.classes)}] ({', '.join(config.classes)}), "
        "classes [N]",
        flush=True,
    )


if __name__ == "__main__":
    app()
