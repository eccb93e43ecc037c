"""Export a trained run's serving model to TensorFlow Lite.

    python jobs/export.py runs/NAME --tflite model.tflite
    python jobs/export.py gs://BUCKET/runs/NAME --tflite fer.tflite

RUN_DIR is a run directory (local or gs://) with saved_model/, the serving SavedModel that
training writes (fer_dist/serving.py). --tflite converts its `serving_gray48` signature:
float32 `images` [N, 48, 48, 1] (gray, 0-255) -> `probabilities` [N, 7] and `classes` [N].
"""

from fer_dist.cli.export import app

if __name__ == "__main__":
    app()
