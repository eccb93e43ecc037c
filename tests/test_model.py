"""Model structure: the seed's ResNet50 recipe, freezing, BatchNorm mode, head, preprocessing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_dist import config as C
from fer_dist import model as M
from fer_dist.errors import UserError


@pytest.fixture(scope="module")
def seed_model():
    return M.build(C.resolve("seed", {"weights": "none"}))


def test_seed_freezes_first_143_layers(seed_model):
    trunk = M.trunk_of(seed_model)
    assert len(trunk.layers) == 175
    assert not any(layer.trainable for layer in trunk.layers[:143])
    assert trunk.layers[142].name == "conv4_block6_out"
    assert trunk.layers[143].name == "conv5_block1_1_conv" and trunk.layers[143].trainable


def test_seed_parameter_counts(seed_model):
    trainable, total = M.count_params(seed_model)
    # ResNet50 no-top at 48x48 (23,587,712) + Flatten(2x2x2048) -> Dense 1024 -> Dense 512 -> 7 logits.
    head = (8192 * 1024 + 1024) + 4 * 1024 + (1024 * 512 + 512) + 4 * 512 + (512 * 7 + 7)
    assert total == 23_587_712 + head
    head_trainable = head - 2 * (1024 + 512)  # BatchNorm moving mean/variance are not trained
    conv5_trainable = 14_976_000  # conv5 stage (layers 143-174), BatchNorm gamma/beta included
    assert trainable == conv5_trainable + head_trainable == 23_897_095


def test_seed_head_layers_and_initializers(seed_model):
    names = [layer.name for layer in seed_model.layers]
    assert names[-1] == "logits"
    for i in (1, 2):
        dense = seed_model.get_layer(f"head_dense{i}")
        assert isinstance(dense.kernel_initializer, keras.initializers.HeUniform)
        assert isinstance(seed_model.get_layer(f"head_bn{i}"), keras.layers.BatchNormalization)
        assert seed_model.get_layer(f"head_dropout{i}").rate == 0.5
    assert seed_model.get_layer("head_dense1").units == 1024 and seed_model.get_layer("head_dense2").units == 512
    assert seed_model.output.dtype == "float32" and tuple(seed_model.output.shape) == (None, 7)


def test_frozen_batchnorm_stays_in_inference_mode(seed_model):
    bn = M.trunk_of(seed_model).get_layer("conv2_block1_1_bn")
    assert not bn.trainable
    before = [np.array(v) for v in bn.non_trainable_weights]
    x = tf.random.uniform((4, 48, 48, 3), -100, 100)
    seed_model(x, training=True)  # a training-mode call must not touch frozen BN statistics
    after = [np.array(v) for v in bn.non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_train_batchnorm_false_freezes_every_batchnorm():
    m = M.build(C.resolve("seed", {"weights": "none", "train_batchnorm": "false", "head_units": "8"}))
    trunk_bns = [layer for layer in M.trunk_of(m).layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert trunk_bns and not any(layer.trainable for layer in trunk_bns)


def test_compact_backbone_is_small():
    m = M.build(C.resolve("demo"))
    trainable, total = M.count_params(m)
    assert total < 1_000_000 and trainable > 0.9 * total
    assert tuple(m(tf.zeros((2, 48, 48, 3))).shape) == (2, 7)


def test_preprocess_gray_to_resnet_input():
    cfg = C.resolve("seed", {"image_size": "64"})
    gray = np.full((2, 48, 48), 200, np.uint8)
    x = M.preprocess(tf.constant(gray), cfg).numpy()
    assert x.shape == (2, 64, 64, 3) and x.dtype == np.float32
    # caffe mode: BGR channel means subtracted from 0-255 values.
    np.testing.assert_allclose(x[0, 10, 10], [200 - 103.939, 200 - 116.779, 200 - 123.68], atol=1e-3)


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such weights file"):
        M.build(C.resolve("seed", {"weights": str(tmp_path / "nope.h5")}))


def test_weights_file_is_loaded(tmp_path):
    cfg = C.resolve("seed", {"weights": "none", "head_units": "8"})
    donor = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(48, 48, 3))
    path = str(tmp_path / "resnet50_notop.weights.h5")
    donor.save_weights(path)
    m = M.build(cfg.replace(weights=path))
    np.testing.assert_array_equal(
        M.trunk_of(m).get_layer("conv1_conv").kernel.numpy(), donor.get_layer("conv1_conv").kernel.numpy()
    )
