"""Predict the emotions of face images with a trained run: all 7 probabilities and the top one.

    python jobs/predict.py face.jpg --run runs/NAME
    python jobs/predict.py faces/ --run runs/NAME --format json --tta flip

IMAGE_OR_DIR is one image or a directory of .jpg/.jpeg/.png faces, of any size, gray or
colour (converted to gray and resized to 48x48). --run is a run directory (local or gs://)
with model.keras. --tta: none | flip | tencrop (default: the run's eval_tta).
"""

from fer_dist.cli.predict import app

if __name__ == "__main__":
    app()
