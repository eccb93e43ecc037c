"""Frozen-trunk feature cache: train only the trainable remainder on precomputed features.

    python jobs/train.py --data data/fer2013.csv --preset seed --set weights=none
    python jobs/train.py ... --set feature_cache=false                # train the full model on images
    python jobs/train.py ... --set feature_cache_dir=gs://BUCKET/fer/features

With the resnet50 backbone and `freeze_layers=N > 0`, every layer before N is frozen:
`trainable=False`, and a frozen BatchNormalization runs in inference mode (Keras 3), and
the input has no random augmentation (`config_reason` refuses the cache when `augment_*`
or mixup is on; class weighting only weights the loss and is fine). The output of that
frozen prefix is therefore a fixed function of each image, so it is computed once per split (a batched
predict over `model.preprocess` + the prefix), stored, and the loop trains the remainder
(the trunk layers after the cut, then the head) on it.

Where the cut goes: ResNet50's residual connections must not cross it. `clean_cut` takes the
last trunk layer index k <= N such that no layer at or after k reads a tensor made before
layer k-1; the prefix is `layers[:k]` and its output `layers[k-1].output` is the only thing
the rest reads. For the seed's N=143 that is k=143 exactly (`conv4_block6_out`, the input of
conv5_block1). For an N inside a residual block, the cut moves back to the block boundary
before N and the frozen layers in [k, N) run inside the remainder (still frozen, still in
inference mode), which keeps the result exact. Nothing is cached when no boundary k >= 2
exists (logged).

The remainder (`split_model`) is a Keras model built from the *same layer objects* as the
full model, so it holds the very same variables: training it trains the full model, and
checkpoints, early-stopping restores, the final evaluation and the export all keep using the
full model unchanged. Its logits equal the full model's (bit-identical in float32 on CPU;
see tests/test_features.py).

Cache key: a SHA-256 over the backbone, image size, freeze_layers, the cut layer, the
weights' identity ("imagenet", "none" + seed, or the weights file's SHA-256) *and* a SHA-256
of the prefix's actual weight values (so a different random init or a resumed checkpoint can
never hit a stale entry), the Keras version, the compute dtype policy, the storage dtype,
the split sizes and a SHA-256 of each split's uint8 images. The key is a function of the
data's *content*, never of its path: the same CSV reached by another path, copied to gs://
or gzipped hits the same entry (the path of the run that wrote it is kept in meta.json as
`source`, for `fer-cache list`). Entries live in
`<feature_cache_dir or ~/.cache/fer_dist/features>/<key>/{train,val}.npy` + `meta.json`
(written last: an entry without it is incomplete) + `last_used`. Every worker of a
multi-worker run loads the entry or, when absent, computes it itself and writes it atomically
(temp file + rename; one upload on gs://), so concurrent writers never leave a partial file.
Computing an entry logs its progress (images done, images/s, ETA) every `PROGRESS_EVERY_S`.

Size cap, least recently used first: every load or write of an entry rewrites its `last_used`
(a timestamp); then, while the cache holds more than `feature_cache_max_gb` (default 4 GB;
0 = no cap), the entry used longest ago is deleted, one log line each. The entry the run is
using is never evicted, nor an incomplete entry younger than `INCOMPLETE_GRACE_S` (it may be
being written). A FER-2013 entry at 48 px is 595 MB (568 MiB: 28709 + 3589 images x
3x3x1024 float16), 1.12 GB with the flipped train features. See and empty the cache with

    fer-cache list                      # python jobs/cache.py list [--dir gs://BUCKET/fer/features]
    fer-cache clear [KEY]               # one entry (a unique prefix of its key), or all of them

`augment_flip=true` is the one augmentation the cache keeps exact: a flip has two outcomes,
so the features of the horizontally flipped train images are cached too (`train_flip.npy` in
the same entry, computed on first use) and each epoch picks one of the two per example with
probability 1/2, drawn from (seed, epoch) like the epoch's order. Any other augmentation or mixup
turns the cache off.

Storage dtype `feature_dtype=float16` (default) halves memory and disk (FER-2013 train at
48 px: 28709 x 3x3x1024 = 529 MB instead of 1.06 GB); it changes the logits by ~4e-4 of their
scale (measured; weights=none). When a value would overflow float16 the entry is stored as
float32 instead. `feature_dtype=float32` is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import time

import numpy as np

from fer_dist import storage
from fer_dist.config import TrainConfig, image_augmentations

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the key no longer holds the data's path (only its content)
META_FILE = "meta.json"  # written last
LAST_USED_FILE = "last_used"  # a timestamp (seconds since the epoch), rewritten on every use
FLIP_FILE = "train_flip.npy"  # features of the flipped train images, added on first use (augment_flip)
FLOAT16_MAX = 60000.0  # above this a float16 entry would overflow (max 65504): store float32
PREDICT_BATCH = 128
PROGRESS_EVERY_S = 10.0  # a progress line while computing features at most this often
INCOMPLETE_GRACE_S = 3600.0  # an entry without meta.json younger than this may be being written
GB = 10**9


def default_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "fer_dist", "features")


def cache_root(config: TrainConfig) -> str:
    root = config.feature_cache_dir.strip()
    return os.path.expanduser(root) if root else default_root()


def config_reason(config: TrainConfig) -> str | None:
    """Why the config alone rules the cache out, or None when it may apply."""
    if not config.feature_cache:
        return "feature_cache=false"
    if config.backbone != "resnet50":
        return f"backbone={config.backbone} (the cache is for the frozen resnet50 trunk)"
    if config.freeze_layers <= 0:
        return "freeze_layers=0: no frozen layers, every layer trains"
    # Input augmentation makes the prefix's output a random function of each image: a cached
    # feature would be that of the unaugmented image, so the cache would train on other inputs.
    # Horizontal flip alone is the exception: it has two outcomes, so both are cached
    # (`train_flip.npy`) and each epoch picks one per example.
    augmentations = [a for a in image_augmentations(config) if a != "augment_flip=true"]
    if augmentations:
        return f"input augmentation is on ({', '.join(augmentations)})"
    # Mixup mixes images before the trunk; mixing cached features instead is another method.
    if config.mixup_alpha > 0:
        return f"mixup is on (mixup_alpha={config.mixup_alpha:g}): it mixes images before the trunk"
    # Class weighting only weights the loss: it is exact on cached features.
    return None


# ---------------------------------------------------------------------------------
# Splitting the model.
# ---------------------------------------------------------------------------------
def _producers(layer, index_of: dict[int, int]) -> list[int]:
    """Trunk indices of the layers whose outputs `layer` reads (within the trunk graph)."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    out = []
    for tensor in nodes[0].input_tensors:
        producer = tensor._keras_history.operation
        out.append(index_of[id(producer)])
    return out


def clean_cut(trunk, freeze_layers: int) -> int:
    """The largest k in [2, min(freeze_layers, len)] with no edge crossing from layers[:k-1]
    into layers[k:]; 0 when there is none."""
    layers = trunk.layers
    n = min(freeze_layers, len(layers))
    index_of = {id(layer): i for i, layer in enumerate(layers)}
    blocked = np.zeros(len(layers) + 2, dtype=bool)  # blocked[k]: cut k is crossed by an edge
    for j, layer in enumerate(layers):
        for p in _producers(layer, index_of):
            if p + 2 <= j:  # edge p -> j crosses every cut k with p + 2 <= k <= j
                blocked[p + 2 : j + 1] = True
    for k in range(n, 1, -1):
        if not blocked[k] and all(not layers[i].trainable for i in range(k)):
            return k
    return 0


@dataclasses.dataclass
class Split:
    """The full model split at `cut`: `prefix` (preprocessed images -> features) and
    `remainder` (features -> logits), both sharing the full model's layers and variables."""

    cut: int  # trunk index of the first layer of the remainder
    cut_name: str  # the prefix's last layer, e.g. conv4_block6_out
    prefix: object
    remainder: object
    trained_layers: int  # trunk layers after the cut + head layers
    frozen_in_remainder: int  # frozen trunk layers in [cut, freeze_layers)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.prefix.output.shape[1:])


def split_model(model, config: TrainConfig) -> tuple[Split | None, str]:
    """(Split, "") or (None, why not). `model` is `model.build(config)`'s full model."""
    import keras

    from fer_dist.model import trunk_of

    trunk = trunk_of(model)
    k = clean_cut(trunk, config.freeze_layers)
    if k < 2:
        return None, f"no residual-block boundary at or before freeze_layers={config.freeze_layers}"
    cut_tensor = trunk.layers[k - 1].output
    prefix = keras.Model(trunk.input, cut_tensor, name="frozen_prefix")
    after_trunk = model.layers[model.layers.index(trunk) + 1]  # the head's first layer (pooling)
    head = keras.Model(after_trunk.input, model.output, name="head_part")
    features = keras.Input(tuple(cut_tensor.shape[1:]), name="features")
    if k < len(trunk.layers):
        tail = keras.Model(cut_tensor, trunk.output, name="trunk_tail")
        logits = head(tail(features))
    else:
        logits = head(features)
    remainder = keras.Model(features, logits, name="remainder")

    full_trainable = {id(v) for v in model.trainable_variables}
    if {id(v) for v in remainder.trainable_variables} != full_trainable:
        return None, "the remainder's trainable variables differ from the full model's"
    full_vars = {id(v) for v in model.variables}
    if not {id(v) for v in remainder.variables} <= full_vars:
        return None, "the remainder has variables the full model lacks"
    if any(v.trainable for v in prefix.variables):
        return None, "a layer before the cut is trainable"
    n = min(config.freeze_layers, len(trunk.layers))
    split = Split(
        cut=k,
        cut_name=trunk.layers[k - 1].name,
        prefix=prefix,
        remainder=remainder,
        trained_layers=(len(trunk.layers) - k) + (len(model.layers) - model.layers.index(trunk) - 1),
        frozen_in_remainder=max(0, n - k),
    )
    return split, ""


# ---------------------------------------------------------------------------------
# The cache.
# ---------------------------------------------------------------------------------
def _sha256_array(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_identity(config: TrainConfig) -> str:
    w = config.weights.strip()
    if w.lower() == "imagenet":
        return "imagenet"
    if w.lower() == "none":
        return f"none:seed={config.seed}"
    return f"file:sha256={_sha256_file(w)}" if os.path.exists(w) else f"file:{w}"


def prefix_weights_sha256(prefix) -> str:
    h = hashlib.sha256()
    for v in prefix.weights:
        h.update(v.path.encode())
        h.update(_sha256_array(np.asarray(v.numpy())).encode())
    return h.hexdigest()


def cache_key(config: TrainConfig, split: Split, dataset) -> tuple[str, dict]:
    import keras

    description = {
        "version": CACHE_VERSION,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "freeze_layers": config.freeze_layers,
        "cut": split.cut,
        "cut_layer": split.cut_name,
        "weights": weights_identity(config),
        "prefix_weights_sha256": prefix_weights_sha256(split.prefix),
        "keras": keras.__version__,
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "feature_dtype": config.feature_dtype,
        # The data by content only (never its path): the same images hit the same entry.
        "splits": {
            name: {"size": len(part), "images_sha256": _sha256_array(part.images)}
            for name, part in (("train", dataset.train), ("val", dataset.val))
        },
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]
    return key, description


def compute_features(
    prefix, images: np.ndarray, config: TrainConfig, batch_size: int = PREDICT_BATCH, label: str = "features"
) -> np.ndarray:
    """Prefix outputs of uint8 faces [N, H, W], in order, as `config.feature_dtype`
    (float32 when float16 would overflow). Logs its progress (`label`, e.g. "train features")
    at most every PROGRESS_EVERY_S seconds, and once when done."""
    import tensorflow as tf

    from fer_dist.pipeline import predict_dataset

    @tf.function
    def run(x):
        return tf.cast(prefix(x, training=False), tf.float32)

    shape = (len(images),) + tuple(prefix.output.shape[1:])
    out = np.empty(shape, np.float16 if config.feature_dtype == "float16" else np.float32)
    n = len(images)
    log.info("feature cache: computing %s of %d images through the frozen prefix", label, n)
    start = last = time.perf_counter()
    at = 0
    for batch in predict_dataset(images, config, batch_size):
        f = run(batch).numpy()
        if out.dtype == np.float16 and np.abs(f).max(initial=0.0) > FLOAT16_MAX:
            log.warning("feature cache: a feature exceeds float16's range; storing float32 instead")
            out = out.astype(np.float32)
        out[at : at + len(f)] = f
        at += len(f)
        now = time.perf_counter()
        if at < n and now - last >= PROGRESS_EVERY_S:
            last = now
            rate = at / max(now - start, 1e-9)
            log.info(
                "feature cache: %s %d/%d (%d%%), %.0f images/s, ETA %.0f s",
                label,
                at,
                n,
                100 * at // n,
                rate,
                (n - at) / rate,
            )
    seconds = time.perf_counter() - start
    log.info("feature cache: %s %d/%d done in %.1f s (%.0f images/s)", label, at, n, seconds, at / max(seconds, 1e-9))
    return out


def _save(uri: str, array: np.ndarray) -> None:
    local = storage.local_path(uri)
    if local is None:
        buf = io.BytesIO()
        np.save(buf, array)
        storage.write_bytes(uri, buf.getvalue())
        return
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=os.path.dirname(local))
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(uri: str) -> np.ndarray:
    """A cached array: memory-mapped when the cache is local (its pages are the page cache's,
    and the pipeline gathers batches from it), else read whole."""
    local = storage.local_path(uri)
    if local is not None:
        return np.load(local, mmap_mode="r")
    return np.load(io.BytesIO(storage.read_bytes(uri)))


@dataclasses.dataclass
class Cached:
    """What the loop needs to train on features."""

    split: Split
    train: np.ndarray  # features of dataset.train, in order
    val: np.ndarray  # features of dataset.val, in order
    train_flipped: np.ndarray | None  # features of the horizontally flipped train images (augment_flip)
    uri: str  # the cache entry
    hit: bool  # train/val features loaded (True) or computed now (False)
    seconds: float  # time to load or compute (flipped features included)
    flipped_hit: bool = True  # train_flipped loaded (True) or computed now (False)


def prepare(config: TrainConfig, model, dataset) -> tuple[Cached | None, str]:
    """(Cached, "") when the loop can train on cached features, else (None, why not).
    Loads the cache entry, or computes and stores it."""
    reason = config_reason(config)
    if reason:
        return None, reason
    split, reason = split_model(model, config)
    if split is None:
        return None, reason
    start = time.perf_counter()
    key, description = cache_key(config, split, dataset)
    root = cache_root(config)
    entry = storage.join(root, key)
    meta_uri = storage.join(entry, META_FILE)
    if storage.exists(meta_uri):
        try:
            train, val = _load(storage.join(entry, "train.npy")), _load(storage.join(entry, "val.npy"))
            if train.shape == (len(dataset.train),) + split.feature_shape and len(val) == len(dataset.val):
                flipped, flipped_hit = _flipped(config, split, dataset, entry, train)
                _used(entry)
                if not flipped_hit:
                    evict(root, config.feature_cache_max_gb, keep=key)
                cached = Cached(split, train, val, flipped, entry, True, time.perf_counter() - start, flipped_hit)
                return cached, ""
            log.warning("feature cache: entry %s has unexpected shapes; recomputing it", entry)
        except (OSError, ValueError) as e:
            log.warning("feature cache: cannot read %s (%s); recomputing it", entry, e)
    log.info("feature cache: no entry %s in %s; computing it", key, root)
    train = compute_features(split.prefix, dataset.train.images, config, label="train features")
    val = compute_features(split.prefix, dataset.val.images, config, label="val features")
    seconds = time.perf_counter() - start
    _save(storage.join(entry, "train.npy"), train)
    _save(storage.join(entry, "val.npy"), val)
    meta = dict(
        description,
        source=dataset.source,  # for people (`fer-cache list`) only: not part of the key
        feature_shape=list(split.feature_shape),
        stored_dtype=str(train.dtype),
        compute_seconds=round(seconds, 2),
    )
    storage.write_text(meta_uri, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if storage.local_path(entry):  # from here on read as later runs read it: memory-mapped
        train, val = _load(storage.join(entry, "train.npy")), _load(storage.join(entry, "val.npy"))
    flipped, _ = _flipped(config, split, dataset, entry, train)
    _used(entry)
    evict(root, config.feature_cache_max_gb, keep=key)
    return Cached(split, train, val, flipped, entry, False, time.perf_counter() - start, False), ""


def _flipped(
    config: TrainConfig, split: Split, dataset, entry: str, train: np.ndarray
) -> tuple[np.ndarray | None, bool]:
    """(features of the horizontally flipped train images, loaded?) when augment_flip is on, else
    (None, True). Kept in the entry as `train_flip.npy`, written atomically on first use."""
    if not config.augment_flip:
        return None, True
    uri = storage.join(entry, FLIP_FILE)
    if storage.exists(uri):
        try:
            flipped = _load(uri)
            if flipped.shape == train.shape:
                return flipped, True
            log.warning("feature cache: %s has an unexpected shape; recomputing it", uri)
        except (OSError, ValueError) as e:
            log.warning("feature cache: cannot read %s (%s); recomputing it", uri, e)
    images = np.ascontiguousarray(dataset.train.images[:, :, ::-1])
    flipped = compute_features(split.prefix, images, config, label="flipped train features")
    _save(uri, flipped)
    return flipped, False


# ---------------------------------------------------------------------------------
# Entries: last use, size, least-recently-used eviction, list and clear.
# ---------------------------------------------------------------------------------
def _used(entry: str) -> None:
    """Marks an entry as used now (its `last_used`); a read-only cache only logs why not."""
    try:
        storage.write_text(storage.join(entry, LAST_USED_FILE), f"{time.time():.3f}\n")
    except OSError as e:
        log.warning("feature cache: cannot mark %s as used (%s)", entry, e)


@dataclasses.dataclass
class Entry:
    """One cache entry as `list_entries` sees it."""

    key: str
    uri: str
    size: int  # bytes, every file of the entry (temporary files of a write in progress too)
    last_used: float  # seconds since the epoch: `last_used`, else the newest file's time
    complete: bool  # has meta.json
    files: tuple[str, ...]  # names of its files
    meta: dict  # meta.json ({} when incomplete or unreadable)


def _scan(root: str) -> dict[str, dict]:
    """{key: {"size", "mtime", "files"}} of the directories directly under `root`, from one
    recursive listing (local or gs://); files directly in `root` are ignored."""
    import pyarrow.fs as pafs

    if not storage.is_dir(root):
        return {}
    fs, path = storage.filesystem(root)
    base = path.rstrip("/") + "/"
    found: dict[str, dict] = {}
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.path.startswith(base):
            continue
        parts = info.path[len(base) :].replace(os.sep, "/").split("/")
        if len(parts) < 2:
            continue
        e = found.setdefault(parts[0], {"size": 0, "mtime": 0.0, "files": []})
        e["size"] += info.size or 0
        e["mtime"] = max(e["mtime"], info.mtime.timestamp() if info.mtime else 0.0)
        e["files"].append("/".join(parts[1:]))
    return found


def list_entries(root: str, read_meta: bool = True) -> list[Entry]:
    """The entries under `root`, least recently used first ([] when there is no cache)."""
    entries = []
    for key, found in _scan(root).items():
        uri = storage.join(root, key)
        files = tuple(sorted(found["files"]))
        last_used = found["mtime"]
        if LAST_USED_FILE in files:
            try:
                last_used = float(storage.read_text(storage.join(uri, LAST_USED_FILE)).strip())
            except (OSError, ValueError):
                pass
        meta = {}
        if read_meta and META_FILE in files:
            try:
                meta = json.loads(storage.read_text(storage.join(uri, META_FILE)))
            except (OSError, ValueError):
                meta = {}
        entries.append(Entry(key, uri, found["size"], last_used, META_FILE in files, files, meta))
    return sorted(entries, key=lambda e: (e.last_used, e.key))


def human_size(n: float) -> str:
    """Bytes in decimal units (the cap is in GB = 10**9 bytes): 568.2 MB, 1.14 GB."""
    for unit, scale in (("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def evict(root: str, max_gb: float, keep: str = "") -> list[Entry]:
    """Deletes the least recently used entries until `root` holds at most `max_gb` GB (0: no
    cap); never `keep` (the entry in use), nor an incomplete entry younger than
    INCOMPLETE_GRACE_S. One log line per eviction; returns the evicted entries."""
    if max_gb <= 0:
        return []
    cap = max_gb * GB
    entries = list_entries(root, read_meta=False)
    total = sum(e.size for e in entries)
    if total <= cap:
        return []
    now = time.time()
    evictable = [
        e for e in entries if e.key != keep and (e.complete or now - e.last_used > INCOMPLETE_GRACE_S)
    ]  # least recently used first
    evicted = []
    for e in evictable:
        if total <= cap:
            break
        try:
            storage.delete_dir(e.uri)
        except OSError as err:
            if storage.exists(e.uri):
                log.warning("feature cache: cannot evict %s (%s)", e.uri, err)
                continue
            # else another worker of the run (or another run) deleted it at the same time
        total -= e.size
        evicted.append(e)
        log.info(
            "feature cache: evicted %s (%s, last used %s) to stay under feature_cache_max_gb=%g; %s left",
            e.key,
            human_size(e.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)),
            max_gb,
            human_size(total),
        )
    if total > cap:
        log.warning(
            "feature cache: %s holds %s, over feature_cache_max_gb=%g, with nothing left to evict "
            "(the entry in use is kept)",
            root,
            human_size(total),
            max_gb,
        )
    return evicted


def clear(root: str, key: str | None = None) -> list[Entry]:
    """Deletes one entry (`key`: its key or a unique prefix of it) or, with no key, every entry
    under `root`; returns what it deleted. An unknown or ambiguous key is a UserError."""
    from fer_dist.errors import UserError

    entries = list_entries(root, read_meta=False)
    if key is not None:
        matches = [e for e in entries if e.key == key] or [e for e in entries if key and e.key.startswith(key)]
        if not matches:
            raise UserError(f"no feature cache entry {key!r} in {root} (fer-cache list --dir {root} shows them)")
        if len(matches) > 1:
            raise UserError(f"{key!r} names {len(matches)} feature cache entries in {root}: give more of the key")
        entries = matches
    for e in entries:
        storage.delete_dir(e.uri)
    return entries


__all__ = [
    "prepare",
    "split_model",
    "clean_cut",
    "compute_features",
    "cache_key",
    "config_reason",
    "Cached",
    "Split",
    "Entry",
    "list_entries",
    "evict",
    "clear",
    "human_size",
    "default_root",
]
