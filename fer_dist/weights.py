"""Face-recognition ResNet50 weights (VGGFace2) for `weights=PATH`: conversion to Keras.

    python jobs/convert_weights.py resnet50_ft_weight.pkl vggface2_resnet50.weights.h5
    python jobs/train.py --preset best --set weights=vggface2_resnet50.weights.h5 --data ...

The source is the VGGFace2 ResNet-50 of Cao et al. 2018 ("VGGFace2: a dataset for recognising
faces across pose and age"), as released by the VGG group for Caffe and ported to NumPy/PyTorch
by cydonia999/VGGFace2-pytorch: `resnet50_ft_weight.pkl` (trained on MS-Celeb-1M, then
fine-tuned on VGGFace2) or `resnet50_scratch_weight.pkl`. Each is a pickle of a dict from
PyTorch parameter names (`conv1.weight`, `layer1.0.bn2.running_var`, `layer2.0.downsample.0.weight`, ...)
to NumPy arrays, so no PyTorch is needed to read it.

It has exactly the layout of `keras.applications.ResNet50` (v1: the stride sits on the
first 1x1 convolution of each stage's first block; 3-4-6-3 bottleneck blocks). The mapping:

    conv1 / bn1                                   -> conv1_conv / conv1_bn
    layer{S}.{B}.conv{K} / bn{K}  (K = 1, 2, 3)   -> conv{S+1}_block{B+1}_{K}_conv / _bn
    layer{S}.{B}.downsample.0 / .1                -> conv{S+1}_block{B+1}_0_conv / _bn
    fc (8631 identities)                          -> dropped (include_top=False)

Convolution kernels go from PyTorch's [out, in, h, w] to Keras' [h, w, in, out]. The source
convolutions have no bias; Keras' have one, set to 0 except conv1's (below). BatchNorm:
weight -> gamma, bias -> beta, running_mean -> moving_mean, running_var -> moving_variance
(eps 1e-5 there, 1.001e-5 in Keras: a relative difference of 5e-6 in the scale).

Input: both models take BGR images on 0-255 with per-channel means subtracted, but different
means (ImageNet's 103.939, 116.779, 123.68 in Keras' `preprocess_input`, which fer_dist uses; VGGFace2's
91.4953, 103.8827, 131.0912). Since conv1 is linear, the difference is folded into conv1's bias,
so fer_dist's input pipeline is left unchanged: exact for every conv1 output whose 7x7 window
lies inside the image; within 3 pixels of the border the zero padding differs (the two
pipelines pad different values), as the source model's own padding would differ at another size.
Known difference left as is: the source's stem max-pool has no padding and `ceil_mode`, Keras
pads by one; both give the same output size, with windows offset by one pixel.

Faces: VGGFace2 crops are loose (the face plus ~30% margin), FER-2013's are tight; the features
still transfer (Kollias et al. and others fine-tune them for expression), and two-phase
fine-tuning (`unfreeze_epoch`) adapts them.
"""

from __future__ import annotations

import os
import pickle
import re

import numpy as np

from fer_dist.errors import UserError

VGGFACE2_BGR_MEAN = (91.4953, 103.8827, 131.0912)
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.resnet50.preprocess_input
BLOCKS = (3, 4, 6, 3)  # bottleneck blocks of ResNet50's stages conv2..conv5


def keras_name(source_name: str) -> tuple[str, str] | None:
    """PyTorch parameter name -> (Keras layer name, parameter), or None for the dropped classifier."""
    if source_name.startswith("fc.") or source_name.endswith("num_batches_tracked"):
        return None
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", source_name)
    if m:
        return ("conv1_conv" if m.group(1) == "conv1" else "conv1_bn"), m.group(2)
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", source_name)
    if m:
        stage, block, kind, k, param = m.groups()
        return f"conv{int(stage) + 1}_block{int(block) + 1}_{k}_{'conv' if kind == 'conv' else 'bn'}", param
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", source_name)
    if m:
        stage, block, which, param = m.groups()
        return f"conv{int(stage) + 1}_block{int(block) + 1}_0_{'conv' if which == '0' else 'bn'}", param
    raise KeyError(source_name)


def read_source(path: str) -> dict[str, np.ndarray]:
    """The pickled {name: array} of a VGGFace2 ResNet-50; one-line errors for anything else."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise UserError(f"{path}: not a pickled weights dict ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: expected a dict of parameter name -> array, got {type(raw).__name__}")
    out = {}
    for name, value in raw.items():
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        out[str(name)] = array
    return out


def convert(source: dict[str, np.ndarray], path: str = "weights") -> dict[str, list[np.ndarray]]:
    """{Keras layer name: [its weights in Keras order]} for `keras.applications.ResNet50`."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, array in source.items():
        try:
            target = keras_name(name)
        except KeyError:
            raise UserError(f"{path}: unexpected parameter {name!r} (not a ResNet-50 in the VGGFace2 layout)") from None
        if target is not None:
            layers.setdefault(target[0], {})[target[1]] = array
    expected = ["conv1"] + [
        f"conv{stage}_block{block}_{k}"
        for stage, n in zip(range(2, 6), BLOCKS)
        for block in range(1, n + 1)
        for k in ((0, 1, 2, 3) if block == 1 else (1, 2, 3))
    ]
    result: dict[str, list[np.ndarray]] = {}
    for base in expected:
        conv, bn = layers.get(f"{base}_conv", {}), layers.get(f"{base}_bn", {})
        for layer, params, need in (
            (f"{base}_conv", conv, ("weight",)),
            (f"{base}_bn", bn, ("weight", "bias", "running_mean", "running_var")),
        ):
            missing = [p for p in need if p not in params]
            if missing:
                raise UserError(
                    f"{path}: missing {', '.join(missing)} of {layer} (a ResNet-50 needs all 53 conv + BatchNorm pairs)"
                )
        kernel = np.transpose(conv["weight"], (2, 3, 1, 0)).astype(np.float32)  # [o,i,h,w] -> [h,w,i,o]
        bias = conv["bias"].astype(np.float32) if "bias" in conv else np.zeros(kernel.shape[-1], np.float32)
        result[f"{base}_conv"] = [kernel, bias]
        result[f"{base}_bn"] = [bn[p].astype(np.float32) for p in ("weight", "bias", "running_mean", "running_var")]
    # Fold the mean difference into conv1: conv(x - m_vgg) = conv(x - m_imagenet) + conv(m_imagenet - m_vgg).
    kernel, bias = result["conv1_conv"]
    shift = np.asarray(IMAGENET_BGR_MEAN, np.float64) - np.asarray(VGGFACE2_BGR_MEAN, np.float64)
    result["conv1_conv"][1] = (bias + np.einsum("hwio,i->o", kernel.astype(np.float64), shift)).astype(np.float32)
    return result


def check_output(out_path: str) -> None:
    """A new Keras weights file: `.weights.h5`, not there yet (nothing is ever overwritten)."""
    if not out_path.endswith(".weights.h5"):
        raise UserError(f"OUTPUT {out_path!r}: must end in .weights.h5 (a Keras weights file)")
    if os.path.exists(out_path):
        raise UserError(f"OUTPUT {out_path}: already exists; remove it or choose another name")


def convert_file(source_path: str, out_path: str) -> tuple[int, int]:
    """`jobs/convert_weights.py`: checks OUTPUT first, then reads, converts and writes; (layers, values)."""
    check_output(out_path)
    converted = convert(read_source(source_path), path=source_path)
    return len(converted), write_keras_weights(converted, out_path, path=source_path)


def write_keras_weights(converted: dict[str, list[np.ndarray]], out_path: str, path: str = "weights") -> int:
    """Builds `keras.applications.ResNet50(include_top=False)`, sets the converted weights and saves
    them as a Keras weights file (`.weights.h5`) that `weights=PATH` loads; returns the parameter count."""
    import keras

    check_output(out_path)
    trunk = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    count = 0
    for layer in trunk.layers:
        if not layer.weights:
            continue
        if layer.name not in converted:  # pragma: no cover - convert() checks every layer
            raise UserError(f"{path}: nothing for layer {layer.name}")
        values = converted[layer.name]
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise UserError(f"{path}: {layer.name} expects {tuple(variable.shape)}, the file has {value.shape}")
        layer.set_weights(values)
        count += sum(int(v.size) for v in values)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    trunk.save_weights(out_path)
    return count


# ---------------------------------------------------------------------------------
# Checking `weights=` before a run writes anything.
# ---------------------------------------------------------------------------------
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # keras.applications.ResNet50's own check
NO_IMAGENET_HINT = (
    "pass --set weights=none (random weights), or --set weights=PATH of a ResNet50 (no-top) Keras "
    "weights file (e.g. one made by jobs/convert_weights.py)"
)


def check(backbone: str, weights: str) -> None:
    """Raises UserError unless `weights` can be loaded: `none`, an existing file, or the ImageNet
    file in Keras's cache (downloaded now if needed, as keras.applications.ResNet50 would)."""
    if backbone != "resnet50" or weights.lower() == "none":
        return
    if weights.lower() != "imagenet":
        if not os.path.isfile(weights):
            raise UserError(f"weights={weights!r}: no such weights file (use imagenet, none or a path)")
        return
    import keras

    try:
        keras.utils.get_file(
            IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL, cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5
        )
    except Exception as e:  # keras raises a bare Exception("URL fetch failure on ...")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"weights=imagenet: the ImageNet weights cannot be downloaded ({first}); {NO_IMAGENET_HINT}"
        ) from None
