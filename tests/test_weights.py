"""VGGFace2 ResNet-50 -> Keras weights conversion (fer_dist/weights.py, jobs/convert_weights.py)."""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest

from fer_dist import config as C
from fer_dist import model as M
from fer_dist import weights as W
from tests.jobs_helpers import assert_user_error, run


def _source_from_keras(trunk) -> dict[str, np.ndarray]:
    """A pickle-layout dict (PyTorch names, [o, i, h, w] kernels, no conv biases) of a Keras ResNet50."""
    out = {}
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.Conv2D):
            torch_prefix = _torch_prefix(layer.name)
            out[f"{torch_prefix}.weight"] = np.transpose(layer.get_weights()[0], (3, 2, 0, 1)).copy()
        elif isinstance(layer, keras.layers.BatchNormalization):
            torch_prefix = _torch_prefix(layer.name)
            gamma, beta, mean, var = layer.get_weights()
            out.update(
                {
                    f"{torch_prefix}.weight": gamma,
                    f"{torch_prefix}.bias": beta,
                    f"{torch_prefix}.running_mean": mean,
                    f"{torch_prefix}.running_var": var,
                }
            )
    out["fc.weight"] = np.zeros((8631, 2048), np.float32)  # the identity classifier, dropped
    out["fc.bias"] = np.zeros(8631, np.float32)
    return out


def _torch_prefix(keras_name: str) -> str:
    if keras_name.startswith("conv1_"):
        return "conv1" if keras_name.endswith("conv") else "bn1"
    stage, block, k, kind = keras_name.split("_")  # conv3_block2_1_bn
    s, b = int(stage[4:]) - 1, int(block[5:]) - 1
    if k == "0":
        return f"layer{s}.{b}.downsample.{0 if kind == 'conv' else 1}"
    return f"layer{s}.{b}.{kind}{k}"


@pytest.fixture(scope="module")
def source_trunk():
    keras.utils.set_random_seed(7)
    trunk = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for layer in trunk.layers:  # distinct BatchNorm statistics, so that a swap would show
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                    if i in (0, 3)
                    else rng.normal(0, 0.1, w.shape).astype(np.float32)
                    for i, w in enumerate(layer.get_weights())
                ]
            )
    return trunk


def test_names_map_onto_keras_resnet50():
    assert W.keras_name("conv1.weight") == ("conv1_conv", "weight")
    assert W.keras_name("bn1.running_var") == ("conv1_bn", "running_var")
    assert W.keras_name("layer1.0.conv2.weight") == ("conv2_block1_2_conv", "weight")
    assert W.keras_name("layer3.5.bn3.bias") == ("conv4_block6_3_bn", "bias")
    assert W.keras_name("layer4.0.downsample.0.weight") == ("conv5_block1_0_conv", "weight")
    assert W.keras_name("layer4.0.downsample.1.running_mean") == ("conv5_block1_0_bn", "running_mean")
    assert W.keras_name("fc.weight") is None
    with pytest.raises(KeyError):
        W.keras_name("features.0.weight")


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_converted_file_loads_through_weights_path_with_every_value_in_place(tmp_path, source_trunk):
    source = _source_from_keras(source_trunk)
    path = str(tmp_path / "pickled.pkl")
    with open(path, "wb") as f:
        pickle.dump(source, f)
    out = str(tmp_path / "vggface2.weights.h5")
    proc = run("convert_weights.py", path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and "106 layers" in proc.stdout

    cfg = C.resolve("seed", {"weights": out, "feature_cache": "false"})
    trunk = M.trunk_of(M.build(cfg))
    shift = np.subtract(W.IMAGENET_BGR_MEAN, W.VGGFACE2_BGR_MEAN)
    checked = 0
    for layer in source_trunk.layers:
        if not layer.weights:
            continue
        got, want = trunk.get_layer(layer.name).get_weights(), layer.get_weights()
        if isinstance(layer, keras.layers.Conv2D):
            np.testing.assert_array_equal(got[0], want[0], err_msg=layer.name)
            expected_bias = np.zeros_like(got[1])  # the source has no conv biases
            if layer.name == "conv1_conv":
                expected_bias = np.einsum("hwio,i->o", want[0].astype(np.float64), shift)
            np.testing.assert_allclose(got[1], expected_bias, rtol=1e-5, atol=1e-4, err_msg=layer.name)
        else:
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w, err_msg=layer.name)
        checked += 1
    assert checked == 106  # 53 convolutions + 53 BatchNorms

    again = run("convert_weights.py", path, out)  # never overwrites
    assert_user_error(again, out, "already exists")


def test_stem_matches_the_source_model_on_its_own_preprocessing(tmp_path, source_trunk):
    """conv1 + bn1 computed the PyTorch way in NumPy (VGGFace2 mean, [o,i,h,w] kernel, pad 3, stride 2)
    equals the converted Keras stem on Keras' ImageNet preprocessing, away from the border."""
    source = _source_from_keras(source_trunk)
    converted = W.convert(source)
    stem = keras.Model(source_trunk.input, source_trunk.get_layer("conv1_bn").output)
    stem.get_layer("conv1_conv").set_weights(converted["conv1_conv"])
    stem.get_layer("conv1_bn").set_weights(converted["conv1_bn"])

    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    got = stem(keras.applications.resnet50.preprocess_input(rgb.copy()), training=False).numpy()

    x = rgb[..., ::-1] - np.asarray(W.VGGFACE2_BGR_MEAN, np.float32)  # BGR, VGGFace2 means
    x = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    kernel = source["conv1.weight"]  # [o, i, h, w]
    out = np.zeros((2, 16, 16, kernel.shape[0]))
    for oy in range(16):
        for ox in range(16):
            window = x[:, 2 * oy : 2 * oy + 7, 2 * ox : 2 * ox + 7, :]  # [b, h, w, i]
            out[:, oy, ox, :] = np.einsum("bhwi,oihw->bo", window, kernel)
    gamma, beta = source["bn1.weight"], source["bn1.bias"]
    mean, var = source["bn1.running_mean"], source["bn1.running_var"]
    want = gamma * (out - mean) / np.sqrt(var + 1e-5) + beta
    interior = slice(2, 15)  # outputs whose 7x7 window lies inside the 32x32 image
    np.testing.assert_allclose(got[:, interior, interior], want[:, interior, interior], rtol=2e-4, atol=2e-3)
    assert np.abs(got[:, 0] - want[:, 0]).max() > 1e-2  # the border differs (padding), as documented


def test_bad_sources_are_one_line_errors(tmp_path, source_trunk):
    out = str(tmp_path / "w.weights.h5")
    assert_user_error(run("convert_weights.py", str(tmp_path / "absent.pkl"), out), "absent.pkl", "no such file")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    assert_user_error(run("convert_weights.py", str(junk), out), "junk.pkl", "not a pickled weights dict")
    partial = _source_from_keras(source_trunk)
    del partial["layer2.3.bn2.running_var"]
    path = tmp_path / "partial.pkl"
    path.write_bytes(pickle.dumps(partial))
    assert_user_error(run("convert_weights.py", str(path), out), "partial.pkl", "running_var of conv3_block4_2_bn")
    alien = {"features.0.weight": np.zeros((3, 3))}
    path = tmp_path / "alien.pkl"
    path.write_bytes(pickle.dumps(alien))
    assert_user_error(run("convert_weights.py", str(path), out), "alien.pkl", "features.0.weight")
    assert_user_error(run("convert_weights.py", str(path), str(tmp_path / "w.h5")), "w.h5", ".weights.h5")
    assert not (tmp_path / "w.weights.h5").exists()
