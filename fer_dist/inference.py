"""The one inference path: image -> faces -> model input -> class probabilities.

predict (photos, face crops, video frames), evaluate (dataset splits) and the batch path on
Ray all go through here:

1. **image**: `data.open_image` (PIL; JPEG and PNG, local or gs://); video frames come as
   RGB arrays (`fer_dist.video`).
2. **faces**: `fer_dist.faces.find_faces` gives the boxes to read (a detector's, or the whole
   image).
3. **model input**: `data.face_pixels(image, box)`, the written spec: the box, 8-bit gray
   (PIL "L"), 48x48 by PIL's bilinear filter. Training image folders use the same function;
   the SavedModel's TensorFlow port of it (`serving.to_gray`, `serving.resize_like_pil`) is
   held bit-exact to it by tests/test_serving.py.
4. **probabilities**: `predict_probs`: the training pipeline's preprocessing
   (`pipeline.predict_dataset`), the model, softmax, and the mean over test-time
   augmentation views (`augment.tta_views`). The SavedModel does the same in one graph.

`load_run` loads a finished run's model once (local or gs://); `Predictor` holds it with its
config and TTA for callers that score many batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_dist import storage
from fer_dist.config import TTA_MODES
from fer_dist.errors import UserError
from fer_dist.reporting import METRICS_FILE

MODEL_FILE = "model.keras"


def check_tta(tta: str, what: str = "--tta") -> str:
    """`tta` if it is a test-time augmentation mode, else a UserError naming `what`."""
    if tta not in TTA_MODES:
        raise UserError(f"{what} {tta!r}: expected one of {', '.join(TTA_MODES)}")
    return tta


def probability_fn(model, tta: str):
    """The compiled step from a preprocessed batch to its probabilities: the mean of the
    softmax over the TTA views. Build it once per model and reuse it (`Predictor` does)."""
    import tensorflow as tf

    from fer_dist import augment

    check_tta(tta, "tta")

    @tf.function(reduce_retracing=True)
    def probs_of(x):
        views = augment.tta_views(x, tta)
        total = 0.0
        for view in views:
            total += tf.nn.softmax(tf.cast(model(view, training=False), tf.float32), axis=-1)
        return total / float(len(views))

    return probs_of


def predict_probs(model, images: np.ndarray, config, batch_size: int = 256, tta: str = "none", fn=None) -> np.ndarray:
    """Class probabilities [N, classes] of uint8 gray faces [N, H, W], in order.

    tta: "none"; "flip", the mean of the probabilities of each face and its mirror image;
    "tencrop", the mean over 10 views: the model input resized to ~1.1x its side, its four
    corner crops and centre crop, and their mirror images (`augment.tta_views`). Rows sum to 1,
    so ensembles (`average_probs`) average TTA-averaged models. `fn`: a `probability_fn` of
    this model and tta, to reuse."""
    from fer_dist.pipeline import predict_dataset

    fn = fn or probability_fn(model, tta)
    out = [fn(batch).numpy() for batch in predict_dataset(images, config, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def load_config(run_dir: str):
    """The TrainConfig of a run directory (its config.json), local or gs://; no model loaded."""
    from fer_dist.config import TrainConfig

    config_uri = storage.join(run_dir, "config.json")
    if not storage.exists(config_uri):
        raise UserError(f"{run_dir}: not a run directory (no config.json)")
    return TrainConfig.from_json(storage.read_text(config_uri), source=config_uri)


def check_run(run_dir: str):
    """The config of a finished run (local or gs://); UserError when it is not one: no
    config.json, not complete, no model.keras. Loads no model."""
    from fer_dist import runs

    config = load_config(run_dir)
    if storage.exists(storage.join(run_dir, runs.MARKER_FILE)) and not storage.exists(
        storage.join(run_dir, METRICS_FILE)
    ):
        raise UserError(
            f"{run_dir}: the run is not complete (no {METRICS_FILE}: it is training or finishing, or it was stopped); "
            f"`{runs.resume_command(run_dir)}` finishes a stopped one"
        )
    if not storage.exists(storage.join(run_dir, MODEL_FILE)):
        raise UserError(
            f"{run_dir}: no {MODEL_FILE} (is the run still training, or was it stopped? continue a stopped one "
            "with --resume)"
        )
    return config


def load_run(run_dir: str):
    """(config, Keras model) of a finished run, local or gs://."""
    import tempfile

    import keras

    config = check_run(run_dir)
    model_uri = storage.join(run_dir, MODEL_FILE)
    with tempfile.TemporaryDirectory(prefix="fer_dist_model_") as tmp:
        path = f"{tmp}/{MODEL_FILE}"
        with open(path, "wb") as f:
            f.write(storage.read_bytes(model_uri))
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as e:  # a truncated or damaged file: zipfile, h5py and JSON errors alike
            raise UserError(f"{model_uri}: not a readable Keras model ({type(e).__name__}: {e})") from None
    return config, model


@dataclass
class Predictor:
    """A finished run's model, loaded once, and the TTA it scores with."""

    run_dir: str
    config: object
    model: object
    tta: str
    _fn: object = None  # probability_fn(model, tta), built on first use

    @classmethod
    def load(cls, run_dir: str, tta: str | None = None) -> Predictor:
        if tta is not None:
            check_tta(tta)
        config, model = load_run(run_dir)
        return cls(run_dir, config, model, tta or config.eval_tta)

    def probs(self, faces: np.ndarray) -> np.ndarray:
        """float64 [N, classes] of uint8 faces [N, 48, 48]; each row sums to exactly 1."""
        if self._fn is None:
            self._fn = probability_fn(self.model, self.tta)
        probs = predict_probs(self.model, faces, self.config, tta=self.tta, fn=self._fn).astype(np.float64)
        if not np.isfinite(probs).all():
            raise UserError(f"{self.run_dir}: the model gives non-finite probabilities (did its training diverge?)")
        return probs / probs.sum(axis=1, keepdims=True) if len(probs) else probs


__all__ = [
    "MODEL_FILE",
    "Predictor",
    "check_run",
    "check_tta",
    "load_config",
    "load_run",
    "predict_probs",
    "probability_fn",
]
