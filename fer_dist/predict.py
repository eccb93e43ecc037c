"""Emotion probabilities of face images from a trained run.

    python jobs/predict.py face.jpg --run runs/NAME
    python jobs/predict.py faces/ --run runs/NAME --format json --tta flip

`predict(path, run_dir, tta)` reads one image file, or every .jpg/.jpeg/.png file directly
in a directory (sorted by name; other files there are left alone), of any size, gray or
colour: each is converted to 8-bit gray and resized to 48x48 as the training images
(`data.decode_image`, PIL, bilinear). It loads the run with `evaluate.load_run` (local or
gs://) and returns one row per image: the image, the top emotion and its probability, and
the probabilities of all 7 emotions (each row sums to 1). `tta` is the test-time
augmentation (`evaluate.predict_probs`): None uses the run's `eval_tta`.

`format_table` and `format_json` render the rows. A missing path, an unreadable or non-image
file, or a directory without images is a `UserError` naming the path.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fer_dist import EMOTIONS, storage
from fer_dist.errors import UserError

FORMATS = ("table", "json")


def image_paths(path: str) -> list[str]:
    """[path] for a file, the image files directly in a directory (sorted); UserError otherwise."""
    from fer_dist.data import IMAGE_SUFFIXES

    if not path or not storage.exists(path):
        raise UserError(f"{path}: no such file or directory")
    if not storage.is_dir(path):
        return [path]
    names = [n for n in storage.listdir(path) if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
    files = [storage.join(path, n) for n in names if not storage.is_dir(storage.join(path, n))]
    if not files:
        raise UserError(f"{path}: no images in this directory (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def read_faces(paths: list[str]) -> np.ndarray:
    """uint8 gray faces [N, 48, 48]; UserError naming the first file that is not a readable image."""
    from fer_dist.data import decode_image

    faces = []
    for path in paths:
        face = decode_image(path)
        if isinstance(face, str):
            raise UserError(f"{path}: {face}")
        faces.append(face)
    return np.stack(faces)


def predict(path: str, run_dir: str, tta: str | None = None) -> pd.DataFrame:
    """One row per image: image, emotion (the top one), probability (its), then one column per emotion."""
    from fer_dist import evaluate

    if tta is not None:
        evaluate.check_tta(tta)
    paths = image_paths(path)
    faces = read_faces(paths)  # before the model loads: bad input fails fast
    config, model = evaluate.load_run(run_dir)
    probs = evaluate.predict_probs(model, faces, config, tta=tta or config.eval_tta).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)  # exactly 1 in float64 (softmax is float32)
    top = probs.argmax(axis=1)
    frame = pd.DataFrame(probs, columns=list(EMOTIONS))
    frame.insert(0, "probability", probs[np.arange(len(top)), top])
    frame.insert(0, "emotion", [EMOTIONS[i] for i in top])
    frame.insert(0, "image", paths)
    frame.attrs.update(run=run_dir, tta=tta or config.eval_tta)
    return frame


def format_table(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda x: f"{x:.3f}")


def format_json(frame: pd.DataFrame) -> str:
    """{"run", "tta", "predictions": [{"image", "emotion", "probability", "probabilities": {emotion: p}}]}."""
    predictions = [
        {
            "image": row["image"],
            "emotion": row["emotion"],
            "probability": float(row["probability"]),
            "probabilities": {name: float(row[name]) for name in EMOTIONS},
        }
        for _, row in frame.iterrows()
    ]
    return json.dumps(
        {"run": frame.attrs.get("run"), "tta": frame.attrs.get("tta"), "predictions": predictions}, indent=2
    )


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return format_json(frame) if fmt == "json" else format_table(frame)


__all__ = ["predict", "image_paths", "read_faces", "format_table", "format_json", "render", "FORMATS"]
