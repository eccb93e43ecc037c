"""Tiny learnable data for loop tests: a bright horizontal band whose row encodes the class."""

from __future__ import annotations

import numpy as np

from fer_dist.data import Dataset, Split


def tiny_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 7
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 6 * y + 2 : 6 * y + 7, :] = 230
    return Split(images, labels)


def tiny_dataset(n_train: int = 448, n_val: int = 112, n_test: int = 70) -> Dataset:
    return Dataset(
        train=tiny_split(n_train, 1), val=tiny_split(n_val, 2), test=tiny_split(n_test, 3), source="tiny", notes=()
    )


def write_tiny_csv(path, n_train: int = 140, n_val: int = 70, n_test: int = 0, seed: int = 0) -> str:
    """The same data as a FER-2013 CSV (Training + PublicTest, and PrivateTest if n_test)."""
    rows = ["emotion,pixels,Usage"]
    for usage, n, s in (
        ("Training", n_train, seed + 1),
        ("PublicTest", n_val, seed + 2),
        ("PrivateTest", n_test, seed + 3),
    ):
        split = tiny_split(n, s)
        for img, y in zip(split.images, split.labels):
            rows.append(f"{y},{' '.join(map(str, img.reshape(-1)))},{usage}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)
