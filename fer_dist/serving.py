"""The served model: raw faces in, emotion probabilities out, in one SavedModel.

    python jobs/train.py --preset smoke            # writes runs/NAME/saved_model/
    python -c "import tensorflow as tf; m = tf.saved_model.load('runs/NAME/saved_model'); \\
               print(m.signatures['serving_uint8'](images=tf.zeros([1, 100, 80, 3], tf.uint8)))"

`export(model, config, directory)` writes a SavedModel (via `keras.export.ExportArchive`) whose
graphs hold every step between an image and its probabilities, so a server needs TensorFlow
only (no `fer_dist`, no Keras, no preprocessing code of its own). Its signatures:

| signature | input `images` | |
|---|---|---|
| `serving_default` | float32 [N, H, W, C], values 0-255 | any size; C = 1 (gray), 3 (RGB) or 4 (RGBA) |
| `serving_uint8` | uint8 [N, H, W, C] | the same, as decoded image bytes |
| `serving_gray48` | float32 [N, 48, 48, 1], values 0-255 | fixed size: what the TFLite export takes; [N, 48, 48, 3] for an RGB run |

each returning `probabilities` float32 [N, K] (rows sum to 1, in the order of the run's K
classes: `config.classes`, FER-2013's seven emotions for FER-2013) and `classes` int64 [N]
(their argmax); the two any-size signatures also return `labels`, string [N] (the argmax's
class name). The class names, one per line in class order, are in
`assets.extra/labels.txt` beside the graph (the SavedModel format's place for extra files).

`export_tflite(saved_model_dir, path)` converts `serving_gray48` to TensorFlow Lite
(`python jobs/export.py runs/NAME --tflite model.tflite`): same inputs and outputs, 48x48
gray faces only (the image decoding, gray conversion and resize stay with the caller).

Inside, each face goes exactly the way `fer_dist.predict` takes an image file (PIL's
`convert("L")` then, unless already 48x48, PIL's bilinear resize to 48x48 as uint8;
`data.face_pixels`), then the training pipeline (`model.preprocess`: resize to
`image_size`, 3 channels, ImageNet `caffe` preprocessing), the model in inference mode, the
run's `eval_tta` views and softmax (`inference.predict_probs`):

- float input is clipped to [0, 255] and rounded to the nearest integer level (the training
  faces are 8-bit); uint8 input is used as is;
- RGB -> gray with PIL's ITU-R 601-2 luma in its fixed-point form,
  `(19595 R + 38470 G + 7471 B + 32768) >> 16` (RGBA: the alpha channel is ignored, as PIL does);
  a run trained on colour (`channels` rgb) takes PIL's `convert("RGB")` instead (gray
  repeated, alpha dropped) and resizes each band alone, as PIL does;
- the resize to 48x48 reproduces PIL's `Image.resize(..., BILINEAR)` bit for bit: its
  antialiasing triangle filter (support scaled by the downscale factor), its 22-bit
  fixed-point coefficients, and its two passes (horizontal, then vertical) rounded to uint8.
  The arithmetic is integer-exact in float64, so the 48x48 face equals PIL's.
"""

from __future__ import annotations

import tensorflow as tf

from fer_dist import IMAGE_PIXELS
from fer_dist.config import TrainConfig

SIGNATURE_FLOAT = "serving_default"
SIGNATURE_UINT8 = "serving_uint8"
SIGNATURE_GRAY48 = "serving_gray48"  # fixed [N, 48, 48, 1] float32 (3 channels: RGB runs): the TFLite export's input
SIGNATURES = (SIGNATURE_FLOAT, SIGNATURE_UINT8, SIGNATURE_GRAY48)
INPUT_NAME = "images"
OUTPUTS = ("probabilities", "classes", "labels")  # labels: not in serving_gray48 (TFLite has no strings)
LABELS_FILE = "assets.extra/labels.txt"  # relative to the SavedModel directory

# Pillow's fixed-point constants (libImaging/Convert.c rgb2l, libImaging/Resample.c).
_LUMA = (19595.0, 38470.0, 7471.0)
_PRECISION_BITS = 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)


def to_levels(images: tf.Tensor) -> tf.Tensor:
    """float32 0-255 or uint8 -> float32 integer levels 0..255 (clipped, rounded half up)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32)
    return tf.floor(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0) + 0.5)


def to_gray(levels: tf.Tensor) -> tf.Tensor:
    """[N, H, W, C] integer levels -> [N, H, W] gray levels as PIL's `convert("L")`: C = 1 as is,
    C = 3 (RGB) or 4 (RGBA, alpha ignored) by ITU-R 601-2 luma in PIL's 16-bit fixed point.
    Any other channel count is an InvalidArgumentError naming it."""
    channels = tf.shape(levels)[-1]
    check = tf.debugging.Assert(
        tf.reduce_any(tf.equal(channels, [1, 3, 4])),
        ["images must have 1 (gray), 3 (RGB) or 4 (RGBA) channels; got", channels],
    )
    with tf.control_dependencies([check]):

        def luma():
            r, g, b = levels[..., 0], levels[..., 1], levels[..., 2]
            # Integers below 2**24: exact in float32; the division by 2**16 too.
            return tf.floor((r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 32768.0) / 65536.0)

        return tf.cond(tf.equal(channels, 1), lambda: levels[..., 0], luma)


def to_rgb(levels: tf.Tensor) -> tf.Tensor:
    """[N, H, W, C] integer levels -> [N, H, W, 3] as PIL's `convert("RGB")`: gray repeated,
    RGBA's alpha dropped."""
    channels = tf.shape(levels)[-1]
    check = tf.debugging.Assert(
        tf.reduce_any(tf.equal(channels, [1, 3, 4])),
        ["images must have 1 (gray), 3 (RGB) or 4 (RGBA) channels; got", channels],
    )
    with tf.control_dependencies([check]):
        return tf.cond(tf.equal(channels, 1), lambda: tf.repeat(levels[..., :1], 3, axis=-1), lambda: levels[..., :3])


def pil_bilinear_weights(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """[out_size, in_size] float64: Pillow's 8-bit bilinear resampling coefficients (integers,
    in units of 2**-22) along one axis of `in_size` pixels (`precompute_coeffs` and
    `normalize_coeffs_8bpc` of libImaging/Resample.c, the same double arithmetic)."""
    n = tf.cast(in_size, tf.float64)
    scale = n / float(out_size)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ss = 1.0 / filterscale
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)[:, tf.newaxis]
    xmax = tf.minimum(tf.floor(center + support + 0.5), n)[:, tf.newaxis]
    x = tf.cast(tf.range(in_size), tf.float64)[tf.newaxis, :]
    w = tf.maximum(1.0 - tf.abs((x - center[:, tf.newaxis] + 0.5) * ss), 0.0)
    w = tf.where((x >= xmin) & (x < xmax), w, 0.0)
    w = tf.math.divide_no_nan(w, tf.reduce_sum(w, axis=1, keepdims=True))
    return tf.floor(w * _ONE + 0.5)


def _clip8(acc: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.floor((acc + _ONE / 2) / _ONE), 0.0, 255.0)


def resize_like_pil(gray: tf.Tensor, size: int = IMAGE_PIXELS) -> tf.Tensor:
    """[N, H, W] gray levels -> [N, size, size] float32 levels, as Pillow's
    `Image.resize((size, size), BILINEAR)` of the 8-bit image: horizontal pass, uint8, vertical
    pass, uint8. An axis already `size` long passes through unchanged (identity coefficients)."""
    x = tf.cast(gray, tf.float64)
    kx = pil_bilinear_weights(tf.shape(x)[2], size)
    x = _clip8(tf.einsum("nhw,ow->nho", x, kx))
    ky = pil_bilinear_weights(tf.shape(x)[1], size)
    x = _clip8(tf.einsum("nhw,oh->now", x, ky))
    return tf.cast(x, tf.float32)


class Served:
    """The serving computation of one trained model: `faces(images)` for any size and channel
    count, `gray48(faces)` for 48x48 gray faces; both return {"probabilities", "classes"}."""

    def __init__(self, model, config: TrainConfig):
        self.model = model
        self.config = config

    def gray48(self, faces: tf.Tensor) -> dict:
        """[N, 48, 48, C] (or [N, 48, 48] gray) float32 0-255 or uint8 faces -> outputs; C is the
        run's: 1 (gray) or 3 (an RGB run's)."""
        from fer_dist import augment
        from fer_dist.model import preprocess

        levels = to_levels(faces)
        if levels.shape.rank == 3:
            levels = levels[..., tf.newaxis]
        x = preprocess(levels, self.config)
        views = augment.tta_views(x, self.config.eval_tta)
        # One model call on every view at once (the graph holds the model once, not once per
        # view: a tencrop export traces and stores it 1x, not 10x), then as
        # inference.predict_probs: the mean of the views' softmax, summed in view order.
        logits = self.model(tf.concat(views, axis=0), training=False)
        per_view = tf.split(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), len(views), axis=0)
        total = 0.0
        for probs in per_view:
            total += probs
        probabilities = tf.ensure_shape(total / float(len(views)), [None, len(self.config.classes)])
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

    def faces(self, images: tf.Tensor) -> dict:
        """[N, H, W, C] float32 0-255 or uint8, C in (1, 3, 4), any H and W >= 1 -> outputs."""
        levels = to_levels(images)
        if self.config.input_channels == "rgb":  # PIL's "RGB", then each band resized alone (as PIL does)
            rgb = to_rgb(levels)
            face = tf.stack([resize_like_pil(rgb[..., c]) for c in range(3)], axis=-1)
            face = tf.ensure_shape(face, [None, IMAGE_PIXELS, IMAGE_PIXELS, 3])
        else:
            face = tf.ensure_shape(resize_like_pil(to_gray(levels)), [None, IMAGE_PIXELS, IMAGE_PIXELS])
            face = face[..., tf.newaxis]
        out = self.gray48(face)
        out["labels"] = tf.gather(tf.constant(list(self.config.classes)), out["classes"])
        return out


def export(model, config: TrainConfig, directory: str) -> None:
    """Writes the serving SavedModel of `model` (trained with `config`) to a local `directory`."""
    import os

    import keras

    served = Served(model, config)
    channels = 3 if config.input_channels == "rgb" else 1
    # Not archive.track(model): the endpoints track the variables they use, and tracking the model
    # as well stores every weight twice (Keras's variable and the tf.Variable under it).
    archive = keras.export.ExportArchive()
    any_size = [None, None, None, None]
    archive.add_endpoint(
        SIGNATURE_FLOAT, served.faces, input_signature=[tf.TensorSpec(any_size, tf.float32, name=INPUT_NAME)]
    )
    archive.add_endpoint(
        SIGNATURE_UINT8, served.faces, input_signature=[tf.TensorSpec(any_size, tf.uint8, name=INPUT_NAME)]
    )
    archive.add_endpoint(
        SIGNATURE_GRAY48,
        served.gray48,
        input_signature=[tf.TensorSpec([None, IMAGE_PIXELS, IMAGE_PIXELS, channels], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(directory, verbose=False)
    labels = os.path.join(directory, LABELS_FILE)
    os.makedirs(os.path.dirname(labels), exist_ok=True)
    with open(labels, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in config.classes))


def signature_keys(saved_model_dir: str) -> list[str]:
    """The signature names of a local SavedModel, read from its saved_model.pb (nothing loaded;
    TensorFlow's internal `__...__` entries left out); UserError if it holds no SavedModel."""
    import os

    from tensorflow.core.protobuf import saved_model_pb2

    from fer_dist.errors import UserError

    pb = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(pb):
        raise UserError(f"{saved_model_dir}: not a SavedModel (no saved_model.pb)")
    from google.protobuf.message import DecodeError

    proto = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        try:
            proto.ParseFromString(f.read())
        except DecodeError as e:
            raise UserError(f"{pb}: damaged or truncated ({e}); export the run again") from None
    keys = {key for graph in proto.meta_graphs for key in graph.signature_def}
    return sorted(key for key in keys if not key.startswith("__"))  # not __saved_model_init_op


def export_tflite(saved_model_dir: str, path: str) -> int:
    """Converts the `serving_gray48` signature of a local serving SavedModel (`export`) to a
    TensorFlow Lite model at the local `path`; returns its size in bytes. Its one signature,
    `serving_gray48`, takes float32 `images` [N, 48, 48, C] (0-255; C = 1, or 3 for an RGB run)
    and returns `probabilities` [N, K] and `classes` [N], as the SavedModel's. UserError when the SavedModel has no such
    signature (one exported before the serving signatures) or TFLite cannot convert it."""
    import os

    from fer_dist.errors import UserError

    keys = signature_keys(saved_model_dir)
    if SIGNATURE_GRAY48 not in keys:
        raise UserError(
            f"{saved_model_dir}: no {SIGNATURE_GRAY48} signature (it has {', '.join(keys) or 'none'}); "
            "a SavedModel of an older fer_dist: export the run again with this version"
        )
    converter_class = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter_class is None:
        raise UserError(f"TensorFlow {tf.__version__} has no TFLite converter (tf.lite.TFLiteConverter)")
    converter = converter_class.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE_GRAY48])
    try:
        flat = converter.convert()
    except Exception as e:  # tf.lite's ConverterError and kin: report the converter's first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{saved_model_dir}: TFLite conversion failed ({first})") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flat)
    return len(flat)


__all__ = [
    "export",
    "export_tflite",
    "signature_keys",
    "Served",
    "to_levels",
    "to_gray",
    "pil_bilinear_weights",
    "resize_like_pil",
    "SIGNATURES",
    "SIGNATURE_FLOAT",
    "SIGNATURE_UINT8",
    "SIGNATURE_GRAY48",
    "INPUT_NAME",
    "OUTPUTS",
    "LABELS_FILE",
]
