"""`python jobs/predict.py IMAGE_OR_DIR --run RUN` (fer_dist/predict.py), and `--tta` of jobs/evaluate.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fer_dist import EMOTIONS, NUM_CLASSES, inference
from tests import jobs_helpers
from tests.saved_run import save_untrained_run
from tests.tiny import write_tiny_csv

ROOT = jobs_helpers.ROOT
run, assert_user_error = jobs_helpers.run, jobs_helpers.assert_user_error


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_untrained_run(tmp_path_factory.mktemp("runs") / "r")


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    """Three faces of different sizes and modes, a non-image file and a hidden file."""
    d = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").save(d / "a_gray48.png")
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), "RGB").save(d / "b_rgb100x80.png")
    Image.fromarray(rng.integers(0, 256, (200, 200), dtype=np.uint8), "L").save(d / "c_gray200.jpg")
    (d / "notes.txt").write_text("not a face")
    (d / ".hidden.png").write_bytes(b"junk")
    return d


def test_predict_json_on_a_directory(run_dir, faces_dir):
    proc = run("predict.py", str(faces_dir), "--run", run_dir, "--format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["run"] == run_dir and out["tta"] == "none"
    preds = out["predictions"]
    assert [os.path.basename(p["image"]) for p in preds] == ["a_gray48.png", "b_rgb100x80.png", "c_gray200.jpg"]
    for p in preds:
        probs = p["probabilities"]
        assert list(probs) == list(EMOTIONS)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 <= v <= 1.0 for v in probs.values())
        assert p["emotion"] == max(probs, key=probs.get) and p["probability"] == probs[p["emotion"]]


def test_predict_table_on_one_file_with_tta(run_dir, faces_dir):
    proc = run("predict.py", str(faces_dir / "b_rgb100x80.png"), "--run", run_dir, "--tta", "tencrop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # auto: no face detected in a square-ish 100x80 image: read whole, and the row says so
    assert lines[0].split() == [
        "image",
        "face",
        "x",
        "y",
        "width",
        "height",
        "note",
        "emotion",
        "probability",
        *EMOTIONS,
    ]
    assert len(lines) == 2 and "b_rgb100x80.png" in lines[1] and "no face detected: read whole" in lines[1]


def test_predict_matches_evaluate_on_the_decoded_faces(run_dir, faces_dir):
    from fer_dist import predict

    frame = predict.predict(str(faces_dir), run_dir, predict.Options(tta="flip", faces="whole"))
    config, model = inference.load_run(run_dir)
    faces = predict.read_faces(predict.image_paths(str(faces_dir)))
    assert faces.shape == (3, 48, 48) and faces.dtype == np.uint8
    want = inference.predict_probs(model, faces, config, tta="flip")
    np.testing.assert_allclose(frame[list(EMOTIONS)].to_numpy(), want, atol=1e-6)
    assert list(frame["emotion"]) == [EMOTIONS[i] for i in want.argmax(axis=1)]
    # The RGB face is read as its gray conversion, resized like the training images.
    rgb = Image.open(faces_dir / "b_rgb100x80.png").convert("L").resize((48, 48), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(faces[1], np.asarray(rgb))
    assert len(want[0]) == NUM_CLASSES


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_predict_errors(run_dir, faces_dir, tmp_path):
    assert_user_error(run("predict.py", str(faces_dir / "notes.txt"), "--run", run_dir), "notes.txt: not an image file")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    assert_user_error(run("predict.py", str(broken), "--run", run_dir), f"{broken}: not a readable image")
    assert_user_error(run("predict.py", str(tmp_path / "missing.png"), "--run", run_dir), "missing.png: no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert_user_error(run("predict.py", str(empty), "--run", run_dir), f"{empty}: no images")
    assert_user_error(run("predict.py", str(faces_dir), "--run", str(tmp_path)), "not a run directory")
    assert_user_error(run("predict.py", str(faces_dir), "--run", run_dir, "--tta", "twice"), "--tta 'twice'")
    assert_user_error(run("predict.py", str(faces_dir), "--run", run_dir, "--format", "xml"), "--format 'xml'")


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_evaluate_job_tta_flag(run_dir, tmp_path):
    data = write_tiny_csv(tmp_path / "tiny.csv", n_train=70, n_val=21)
    assert_user_error(
        run("evaluate.py", run_dir, "--data", data, "--tta", "sideways"), "--tta 'sideways'", "none, flip, tencrop"
    )
    proc = run(
        "evaluate.py", run_dir, "--data", data, "--split", "val", "--tta", "flip", "--output", str(tmp_path / "ev")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tta flip" in proc.stdout
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["tta"] == "flip" and metrics["split"] == "val" and 0.0 <= metrics["accuracy"] <= 1.0
