"""The served model (fer_dist/serving.py): a run's saved_model/ that plain TensorFlow scores raw
face images with, the same probabilities as `fer_dist.predict`; its TFLite export (jobs/export.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fer_dist import EMOTIONS, NUM_CLASSES
from tests import jobs_helpers
from tests.conftest import FER2013_CSV

run, assert_user_error = jobs_helpers.run, jobs_helpers.assert_user_error

# The run: a compact model, input resized to 64 (preprocess's resize), tencrop TTA (10 views).
CONFIG = {"eval_tta": "tencrop", "image_size": "64"}
LOGIT_SCALE = 25.0  # sharpens the untrained model's near-uniform probabilities: inputs matter

# Served in a process that has only TensorFlow, NumPy and PIL: what a server has.
SERVER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from PIL import Image

saved, faces = sys.argv[1], sys.argv[2]
model = tf.saved_model.load(saved)
labels = open(os.path.join(saved, "assets.extra", "labels.txt")).read().split()
out = {"labels": labels, "signatures": sorted(model.signatures), "images": {}}
for name in sorted(os.listdir(faces)):
    pixels = np.asarray(Image.open(os.path.join(faces, name)))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    batch = pixels[None]  # [1, H, W, C] as decoded: gray, RGB or RGBA
    row = {"shape": list(batch.shape)}
    for key, images in (("serving_default", tf.constant(batch, tf.float32)), ("serving_uint8", tf.constant(batch))):
        result = model.signatures[key](images=images)
        row[key] = {k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()] for k, v in result.items()}
    out["images"][name] = row
out["fer_dist_imported"] = "fer_dist" in sys.modules
print(json.dumps(out))
"""


def real_faces(n: int) -> tuple[np.ndarray, str]:
    """n uint8 gray faces [n, 48, 48]: FER-2013's first ones when ../shared has it, else tiny's."""
    if FER2013_CSV.is_file():
        import pandas as pd

        rows = pd.read_csv(FER2013_CSV, nrows=n)
        faces = np.stack([np.array(p.split(), dtype=np.uint8).reshape(48, 48) for p in rows["pixels"]])
        return faces, "fer2013"
    from tests.tiny import tiny_split

    return tiny_split(n, 7).images, "tiny"


def write_face_pngs(directory, faces: np.ndarray) -> None:
    """The faces as the files a server gets: gray 48x48, RGB 100x80 (tinted: R, G, B differ), RGBA
    64x64 (alpha ignored), gray 200x170 (downscaled) and gray 37x29 (upscaled)."""
    os.makedirs(directory, exist_ok=True)
    Image.fromarray(faces[0], "L").save(os.path.join(directory, "a_gray48.png"))
    big = np.asarray(Image.fromarray(faces[1], "L").resize((100, 80), Image.Resampling.BICUBIC), np.float64)
    rgb = np.stack([big, big * 0.7 + 40, 255 - big * 0.9], axis=-1).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(os.path.join(directory, "b_rgb100x80.png"))
    mid = np.asarray(Image.fromarray(faces[2], "L").resize((64, 64), Image.Resampling.BICUBIC))
    alpha = np.random.default_rng(0).integers(0, 256, mid.shape, dtype=np.uint8)
    rgba = np.stack([mid, np.roll(mid, 3, axis=1), 255 - mid, alpha], axis=-1)
    Image.fromarray(rgba, "RGBA").save(os.path.join(directory, "c_rgba64.png"))
    Image.fromarray(faces[3], "L").resize((200, 170), Image.Resampling.BICUBIC).save(
        os.path.join(directory, "d_gray200x170.png")
    )
    Image.fromarray(faces[4], "L").resize((37, 29), Image.Resampling.BILINEAR).save(
        os.path.join(directory, "e_gray37x29.png")
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run directory written by `reporting.export_model` (config.json, model.keras, saved_model/)
    and a directory of face PNGs; {"run_dir", "faces_dir", "source"}."""
    import keras

    from fer_dist import config as C
    from fer_dist import model as model_lib
    from fer_dist import reporting

    config = C.resolve("smoke", CONFIG)
    keras.utils.set_random_seed(config.seed)
    model = model_lib.build(config)
    logits = model.get_layer("logits")
    logits.kernel.assign(logits.kernel * LOGIT_SCALE)
    run_dir = str(tmp_path_factory.mktemp("runs") / "r")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config.to_json())
    reporting.export_model(model, config, run_dir)
    keras.backend.clear_session()
    faces, source = real_faces(5)
    faces_dir = str(tmp_path_factory.mktemp("faces"))
    write_face_pngs(faces_dir, faces)
    return {"run_dir": run_dir, "faces_dir": faces_dir, "source": source}


@pytest.fixture(scope="module")
def saved_model(exported):
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(exported["run_dir"], "saved_model"))


def test_export_model_writes_a_readable_serving_saved_model(exported):
    from fer_dist import serving

    run_dir = exported["run_dir"]
    saved = os.path.join(run_dir, "saved_model")
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    assert serving.signature_keys(saved) == sorted(serving.SIGNATURES)
    with open(os.path.join(saved, serving.LABELS_FILE)) as f:
        assert f.read().splitlines() == list(EMOTIONS)
    mask = os.umask(0)
    os.umask(mask)
    readable = 0o444 & ~mask  # what write_bytes gives every file: others (a server) can read them
    for root, _, files in os.walk(run_dir):
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode & readable == readable, (name, oct(mode))


def test_saved_model_stores_each_weight_once(exported):
    """The SavedModel's variables hold as many values as the model has weights, not twice as many."""
    import keras
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(exported["run_dir"], "saved_model", "variables", "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(shape)) for key, shape in shapes.items() if key != "_CHECKPOINTABLE_OBJECT_GRAPH")
    model = keras.models.load_model(os.path.join(exported["run_dir"], "model.keras"), compile=False)
    assert stored == model.count_params()


@pytest.mark.slow  # over 15 s on a 2-core CPU: exports, then a TensorFlow subprocess
def test_plain_tensorflow_scores_face_files_as_fer_dist_predict(exported):
    from fer_dist import predict

    proc = subprocess.run(
        [sys.executable, "-c", SERVER, os.path.join(exported["run_dir"], "saved_model"), exported["faces_dir"]],
        cwd=exported["faces_dir"],  # nothing of the repository on its path but what is installed
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["fer_dist_imported"] is False
    assert served["labels"] == list(EMOTIONS)
    assert served["signatures"] == ["serving_default", "serving_gray48", "serving_uint8"]

    # face crops, read whole as the SavedModel reads its images; the run's TTA: tencrop
    frame = predict.predict(exported["faces_dir"], exported["run_dir"], predict.Options(faces="whole"))
    assert frame.attrs["tta"] == "tencrop"
    names = [os.path.basename(p) for p in frame["image"]]
    assert names == sorted(served["images"]) and len(names) == 5
    want = frame[list(EMOTIONS)].to_numpy()
    assert want.std(axis=0).max() > 0.02, f"the probabilities hardly depend on the face: {want}"
    shapes = {name: served["images"][name]["shape"] for name in names}
    assert shapes["b_rgb100x80.png"] == [1, 80, 100, 3] and shapes["c_rgba64.png"] == [1, 64, 64, 4]
    for key in ("serving_default", "serving_uint8"):
        probs = np.array([served["images"][name][key]["probabilities"][0] for name in names])
        classes = np.array([served["images"][name][key]["classes"][0] for name in names])
        assert probs.shape == (5, NUM_CLASSES)
        np.testing.assert_allclose(probs, want, atol=1e-4, err_msg=f"{key} on {exported['source']} faces")
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(classes, probs.argmax(axis=1))
        assert [EMOTIONS[c] for c in classes] == list(frame["emotion"])
        assert [served["images"][name][key]["labels"][0] for name in names] == list(frame["emotion"])


def test_gray_conversion_and_resize_are_pils(saved_model):
    """serving's integer arithmetic reproduces PIL's convert("L") and bilinear resize exactly."""
    import tensorflow as tf

    from fer_dist import serving

    rng = np.random.default_rng(1)
    for height, width, channels in ((48, 48, 1), (80, 100, 3), (64, 64, 4), (170, 200, 1), (29, 37, 3), (1, 5, 1)):
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, {1: "L", 3: "RGB", 4: "RGBA"}[channels])
        want = np.asarray(image.convert("L").resize((48, 48), Image.Resampling.BILINEAR))
        levels = serving.to_levels(tf.constant(pixels[None]))
        got = serving.resize_like_pil(serving.to_gray(levels)).numpy()[0]
        np.testing.assert_array_equal(got, want, err_msg=f"{height}x{width}x{channels}")
    # Float input: clipped and rounded to 8-bit levels, as uint8 input of those levels.
    x = np.array([[-3.0, 0.4, 0.5, 254.6, 300.0]], np.float32)[None, ..., None]
    np.testing.assert_array_equal(serving.to_levels(tf.constant(x)).numpy().ravel(), [0, 0, 1, 255, 255])
    # Two channels: an error naming the count, not a silent guess.
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"):
        saved_model.signatures["serving_default"](images=tf.zeros([1, 10, 10, 2]))


def _tflite_interpreter(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = getattr(tf.lite, "Interpreter", None)
        if Interpreter is None:
            pytest.skip("no TFLite interpreter (ai_edge_litert or tf.lite.Interpreter) in this environment")
    with warnings.catch_warnings():  # tf.lite.Interpreter: "deprecated, use ai_edge_litert"
        warnings.simplefilter("ignore", UserWarning)
        return Interpreter(model_path=path)


@pytest.mark.slow  # over 15 s on a 2-core CPU: the export job converts in a subprocess
def test_tflite_export_matches_serving_gray48(exported, saved_model, tmp_path):
    import tensorflow as tf

    if getattr(tf.lite, "TFLiteConverter", None) is None:
        pytest.skip(f"TensorFlow {tf.__version__} has no TFLite converter")
    out = tmp_path / "out" / "fer.tflite"
    proc = run("export.py", exported["run_dir"], "--tflite", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout and out.stat().st_size > 0

    faces, _ = real_faces(5)
    x = faces[..., None].astype(np.float32)
    want = saved_model.signatures["serving_gray48"](images=tf.constant(x))
    runner = _tflite_interpreter(str(out)).get_signature_runner("serving_gray48")
    got = runner(images=x)
    assert got["probabilities"].shape == (5, NUM_CLASSES)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(got["classes"], want["classes"].numpy())


def test_export_job_without_saved_model_is_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    proc = run("export.py", str(tmp_path), "--tflite", str(tmp_path / "x.tflite"))
    assert_user_error(proc, str(tmp_path), "no saved_model/")
    assert not (tmp_path / "x.tflite").exists()


def test_export_tflite_refuses_a_saved_model_without_the_serving_signatures(tmp_path):
    """A saved_model/ of an older fer_dist (plain `model.export`: preprocessed input) says so."""
    import tensorflow as tf

    from fer_dist import serving
    from fer_dist.errors import UserError

    module = tf.Module()
    module.f = tf.function(lambda x: {"logits": x * 2.0}, input_signature=[tf.TensorSpec([None, 7], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "old"), signatures={"serve": module.f})
    with pytest.raises(UserError, match="no serving_gray48 signature \\(it has serve\\)"):
        serving.export_tflite(str(tmp_path / "old"), str(tmp_path / "x.tflite"))
    with pytest.raises(UserError, match="not a SavedModel"):
        serving.export_tflite(str(tmp_path), str(tmp_path / "x.tflite"))
