"""The decoded-data cache: a dataset decoded once per machine, read back memory-mapped.

    python jobs/train.py --data my_faces/ ...          # the first run decodes; the next ones map the cache
    python jobs/train.py --data my_faces/ --set data_cache=false ...   # decode into memory every time

`load(config, build)` returns the run's `data.Dataset`: from `<root>/<key>/` when an entry is
there and whole, else `build()` (the readers), written to a new entry and returned as it reads
back. Each split's arrays are `.npy` files opened with `mmap_mode="r"`: their pages belong to the
page cache (shared by every process of the machine that maps them, dropped under memory pressure),
not to a process's anonymous memory; the input pipeline gathers its batches from them
(`pipeline.gather_fn`). Labels, targets and rows are mapped the same way.

The key is the sha256 of what decides the faces: the data's URI and its files' listing (relative
path, size, modification time: a folder's every file, or the CSV/manifest file itself), a FER+
votes file's, and the settings the readers take (channels, skip_bad_rows, dedupe, the votes'
label mode, and for a carved validation split val_fraction and the seed). A manifest's images are
trusted to change only with the manifest. Entries are written to a temporary directory and renamed
into place (several processes may build one at once: one wins, the others read it); `meta.json`
is written last and names every file with its size, so a damaged or partial entry is rebuilt.
A cache that cannot be written (a full disk, no permission) is skipped with a warning: the run
trains from memory. Builtin data is generated, never cached. The root is
`~/.cache/fer_dist/decoded` (`FER_DIST_DATA_CACHE` sets another); entries are not evicted:
`rm -r ~/.cache/fer_dist/decoded` empties it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

from fer_dist import data, storage

log = logging.getLogger(__name__)

VERSION = 1
META_FILE = "meta.json"
ARRAYS = ("images", "labels", "targets", "rows")


def default_root() -> str:
    return os.environ.get("FER_DIST_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fer_dist", "decoded"
    )


def _listing(uri: str) -> list:
    """What tells whether the files at `uri` changed: (path, size, mtime) of each."""
    if storage.is_dir(uri):
        return [list(entry) for entry in storage.file_stats(uri)]
    fs, path = storage.retried_filesystem(uri)
    info = fs.get_file_info(path)
    return [[uri, info.size, info.mtime_ns]]


def key_of(config) -> str | None:
    """The cache key of a TrainConfig's data, None when it is not cached (builtin, data_cache off)."""
    if config.data == "builtin" or not config.data_cache:
        return None
    try:
        files = _listing(config.data)
        votes = [storage.absolute(config.labels), _listing(config.labels)] if config.labels else None
    except OSError:  # unreadable: not cached; the readers say what is wrong, in one line
        return None
    described = {
        "version": VERSION,
        "data": storage.absolute(config.data),
        "files": files,
        "labels": votes,
        "settings": {
            "channels": config.channels,
            "skip_bad_rows": config.skip_bad_rows,
            "dedupe": config.dedupe,
            "label_mode": config.label_mode if config.labels else None,
            "contempt": config.contempt if config.labels else None,
            "val_fraction": config.val_fraction,
            "seed": config.seed,
        },
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]
    del described, files
    _return_freed_memory()  # the listing (a few hundred bytes per file) is garbage now
    return key


def _return_freed_memory() -> None:
    """Hands memory that Python freed back to the system (glibc's malloc_trim), where there is one."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_for(config) -> data.Dataset:
    """`data.load_for(config)` through the cache."""
    return load(config, lambda: data.load_for(config))


def load(config, build: Callable[[], data.Dataset], root: str | None = None) -> data.Dataset:
    """The dataset of `config`: read from its cache entry (memory-mapped faces), else built and cached."""
    key = key_of(config)
    if key is None:
        return build()
    entry = os.path.join(root or default_root(), key)
    found = _read(entry)
    if found is not None:
        log.info("data cache: %s from %s (decoded before; faces memory-mapped)", config.data, entry)
        return found
    dataset = build()
    try:
        _write(entry, dataset)
    except OSError as e:
        log.warning("data cache: cannot write %s (%s); training from memory", entry, " ".join(str(e).split()))
        return dataset
    found = _read(entry)
    return found if found is not None else dataset


def _write(entry: str, dataset) -> None:
    root = os.path.dirname(entry)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(entry)}-", dir=root)
    try:
        files = {}
        for name in ("train", "val", "test"):
            split = getattr(dataset, name)
            if split is None:
                continue
            for array in ARRAYS:
                value = getattr(split, array)
                if value is None:
                    continue
                path = os.path.join(tmp, f"{name}_{array}.npy")
                np.save(path, np.ascontiguousarray(value))
                files[f"{name}_{array}.npy"] = os.path.getsize(path)
        meta = {
            "version": VERSION,
            "source": dataset.source,
            "notes": list(dataset.notes),
            "class_names": list(dataset.class_names),
            "files": files,
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        try:
            os.rename(tmp, entry)  # another process may have put the same entry there first
        except OSError:
            if not os.path.exists(os.path.join(entry, META_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(entry: str) -> data.Dataset | None:
    """The dataset an entry holds, None when there is none or it is not whole (then removed)."""
    meta_path = os.path.join(entry, META_FILE)
    if not os.path.exists(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        for name, size in meta["files"].items():
            if os.path.getsize(os.path.join(entry, name)) != size:
                raise ValueError(f"{name} is not {size} bytes")
        splits = {}
        for name in ("train", "val", "test"):
            if f"{name}_images.npy" not in meta["files"]:
                splits[name] = None
                continue
            parts = {}
            for array in ARRAYS:
                path = os.path.join(entry, f"{name}_{array}.npy")
                if f"{name}_{array}.npy" in meta["files"]:
                    parts[array] = np.load(path, mmap_mode="r")
            splits[name] = data.Split(**parts)
    except (OSError, ValueError, KeyError) as e:
        log.warning("data cache: %s is damaged (%s); decoding again", entry, e)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return data.Dataset(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        source=meta["source"],
        notes=tuple(meta["notes"]),
        class_names=tuple(meta["class_names"]),
    )


__all__ = ["default_root", "key_of", "load", "load_for"]
