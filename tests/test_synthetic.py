"""The built-in synthetic dataset: format, determinism, balance, and difficulty for a linear model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fer_dist import NUM_CLASSES
from fer_dist.synthetic import generate

N_TRAIN, N_TEST = 8000, 2000


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    return generate(700, seed=3)


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray]:
    return generate(N_TRAIN + N_TEST, seed=11)


def test_shapes_dtypes_and_range(sample):
    images, labels = sample
    assert images.shape == (700, 48, 48) and images.dtype == np.uint8
    assert labels.shape == (700,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(NUM_CLASSES))
    assert images.min() < 30 and images.max() > 225  # uses the 0-255 range


def test_empty():
    images, labels = generate(0)
    assert images.shape == (0, 48, 48) and labels.shape == (0,)


def test_same_seed_same_data_other_seed_other_data():
    images, labels = generate(50, seed=5)
    again_images, again_labels = generate(50, seed=5)
    other_images, other_labels = generate(50, seed=6)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other_images)
    assert not np.array_equal(labels, other_labels)


@pytest.mark.parametrize("n", [1, 7, 703])
def test_balanced_classes(n):
    _assert_balanced(generate(n, seed=1)[1], n)


def test_balanced_classes_large(large):
    _assert_balanced(large[1], N_TRAIN + N_TEST)


def _assert_balanced(labels: np.ndarray, n: int) -> None:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert len(counts) == NUM_CLASSES and counts.sum() == n
    assert counts.min() == n // NUM_CLASSES and counts.max() <= n // NUM_CLASSES + 1


def test_labels_are_shuffled(sample):
    labels = sample[1]
    assert not np.array_equal(labels, np.sort(labels))
    assert not np.array_equal(labels[:NUM_CLASSES], np.arange(NUM_CLASSES))


def test_images_are_not_trivial(sample):
    images, labels = sample
    pixels = images.reshape(len(images), -1).astype(np.float64)
    stds = pixels.std(axis=1)
    assert stds.min() > 4 and np.median(stds) > 25
    # Mean brightness does not tell the classes apart: the class means sit within a
    # fraction of the spread between images, and the nearest class mean is a poor guess.
    brightness = pixels.mean(axis=1)
    class_means = np.array([brightness[labels == c].mean() for c in range(NUM_CLASSES)])
    assert np.ptp(class_means) < 0.5 * brightness.std()
    predicted = np.abs(brightness[:, None] - class_means[None, :]).argmin(axis=1)
    assert (predicted == labels).mean() < 0.25


def test_generation_is_fast():
    start = time.process_time()  # CPU time, so that other work on the machine does not count
    generate(2000, seed=2)
    assert time.process_time() - start < 4.0  # ~0.9 s on this project's 2-core CPU


@pytest.mark.slow  # over 15 s on a 2-core CPU
def test_a_linear_softmax_classifier_stays_below_60_percent(large):
    images, labels = large
    x = images.reshape(len(images), -1).astype(np.float32)
    mean, std = x[:N_TRAIN].mean(axis=0), x[:N_TRAIN].std(axis=0) + 1e-6
    x = (x - mean) / std
    weights, bias = _fit_softmax(x[:N_TRAIN], labels[:N_TRAIN])
    predicted = (x @ weights + bias).argmax(axis=1)
    train_accuracy = float((predicted[:N_TRAIN] == labels[:N_TRAIN]).mean())
    test_accuracy = float((predicted[N_TRAIN:] == labels[N_TRAIN:]).mean())
    print(
        f"linear softmax on pixels: train {train_accuracy:.3f}, test {test_accuracy:.3f}, chance {1 / NUM_CLASSES:.3f}"
    )
    assert train_accuracy > 0.25  # the classifier did fit (so the bound below means something)
    assert test_accuracy > 1.2 / NUM_CLASSES  # and the classes carry some linear signal
    assert test_accuracy < 0.60


def _fit_softmax(
    x: np.ndarray, labels: np.ndarray, steps: int = 200, learning_rate: float = 1e-3, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch Adam on the cross-entropy."""
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    params = [np.zeros((x.shape[1], NUM_CLASSES), np.float32), np.zeros(NUM_CLASSES, np.float32)]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        weights, bias = params
        logits = x @ weights + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        error = (probs - onehot) / len(x)
        grads = [x.T @ error + l2 * weights, error.sum(axis=0)]
        for param, grad, m, v in zip(params, grads, first, second):
            m += 0.1 * (grad - m)
            v += 0.001 * (grad * grad - v)
            param -= learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params[0], params[1]
