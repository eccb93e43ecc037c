"""The decoded-data cache: decode once per machine, read back memory-mapped, rebuilt when the
files change or the entry is damaged, skipped when it cannot be written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fer_dist import config as C
from fer_dist import data, decoded
from tests.test_datasets import write_folder
from tests.tiny import write_tiny_csv


def entries(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if not n.startswith("."))


def test_a_folder_is_decoded_once_then_mapped(tmp_path, caplog):
    folder = write_folder(tmp_path / "three", {"train": 4, "val": 2})
    root = tmp_path / "cache"
    config = C.resolve("smoke", {"data": folder})
    with caplog.at_level(logging.INFO, logger="fer_dist.decoded"):
        first = decoded.load(config, lambda: data.load_for(config), root=str(root))
        built = data.load_for(config)
        second = decoded.load(config, lambda: pytest.fail("decoded again"), root=str(root))
    assert entries(root) == [decoded.key_of(config)]
    assert isinstance(second.train.images, np.memmap) and isinstance(first.train.images, np.memmap)
    assert (np.asarray(second.train.images) == built.train.images).all()
    assert (second.val.labels == built.val.labels).all() and second.class_names == built.class_names
    assert second.notes == built.notes and second.source == built.source
    assert "decoded before; faces memory-mapped" in caplog.text
    # A changed file is another key: decoded again.
    Path(folder, "train", "joy", "0.png").write_bytes(Path(folder, "train", "joy", "1.png").read_bytes() + b"\0")
    decoded.load(config, lambda: data.load_for(config), root=str(root))
    assert len(entries(root)) == 2
    # Settings that change the faces are part of the key; data_cache=false skips the cache.
    assert decoded.key_of(config.replace(channels="rgb")) != decoded.key_of(config)
    assert decoded.key_of(config.replace(data_cache=False)) is None


def test_a_damaged_entry_is_decoded_again(tmp_path, caplog):
    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=14, n_val=7)
    root = tmp_path / "cache"
    config = C.resolve("smoke", {"data": csv})
    decoded.load(config, lambda: data.load_for(config), root=str(root))
    entry = root / decoded.key_of(config)
    with open(entry / "train_images.npy", "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="fer_dist.decoded"):
        again = decoded.load(config, lambda: data.load_for(config), root=str(root))
    assert "is damaged" in caplog.text and len(again.train) == 14
    assert os.path.getsize(entry / "train_images.npy") > 100  # written whole again


def test_a_cache_that_cannot_be_written_trains_from_memory(tmp_path, caplog):
    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=14, n_val=7)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would go")
    config = C.resolve("smoke", {"data": csv})
    with caplog.at_level(logging.WARNING, logger="fer_dist.decoded"):
        dataset = decoded.load(config, lambda: data.load_for(config), root=str(blocked / "cache"))
    assert "cannot write" in caplog.text and "training from memory" in caplog.text
    assert len(dataset.train) == 14 and not isinstance(dataset.train.images, np.memmap)
