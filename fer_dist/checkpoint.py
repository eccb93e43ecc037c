"""The one checkpoint format: variables by name, the loop state, the config and a manifest.

A checkpoint is a directory (local, or a prefix on `gs://`):

    model.npz       every model variable, keyed by its Keras path (`stem_conv/kernel`)
    optimizer.npz   every optimizer variable, keyed by its path
    best.npz        (when the best epoch is not the last) the best epoch's model variables
    config.json     the resolved TrainConfig
    state.json      the loop state (epoch, step within the epoch, schedule, history) and format_version
    manifest.json   written last: the format version, epoch, step within the epoch, val_accuracy,
                    and the size and SHA-256 of every other file

A checkpoint is complete when its manifest exists and every file matches it (`verify`): Ray
uploads a checkpoint's files concurrently in no fixed order, so "the file written last" proves
nothing there; sizes and hashes do. Variables are matched by name on load, and the first
variable that is missing, extra or of another shape is named in the error.

Checkpoints written before format 1 (positional `arr_0..arr_N` arrays, `state.json` holding
the loop state itself, no manifest) are migrated on load: matched by position and shape, as
they were written, with a warning.

One retention policy (`kept`): the best `keep` checkpoints by val_accuracy, plus the latest.
It serves the local run, the Ray run (the chief prunes after each report) and the Tune export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from fer_dist import storage
from fer_dist.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.npz"
OPTIMIZER_FILE = "optimizer.npz"
BEST_FILE = "best.npz"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
LOCAL_PARENT = "checkpoints"  # a local session's checkpoints: <run_dir>/checkpoints/epoch_NNNN
RAY_PREFIX = "checkpoint_"  # Ray Train's: <run_dir>/checkpoint_epoch_NNNN
EPOCH_PREFIX = "epoch_"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: damaged, incomplete, or of another model."""


@dataclasses.dataclass(frozen=True)
class Info:
    """What a checkpoint's manifest says about it."""

    uri: str
    epoch: int
    step: int  # steps done in epoch `epoch + 1` (0: at an epoch boundary)
    val_accuracy: float | None


def name(epoch: int, step: int = 0) -> str:
    """The directory name of a checkpoint in a local run: `epoch_0003` after epoch 3, and
    `epoch_0004_step_000017` 17 steps into epoch 4 (a step checkpoint: a preemption's). The
    two never collide, and `listing` orders them by (epoch, step) from their manifests."""
    if step:
        return f"{EPOCH_PREFIX}{epoch + 1:04d}_step_{step:06d}"
    return f"{EPOCH_PREFIX}{epoch:04d}"


def ray_name(epoch: int, step: int = 0) -> str:
    """The directory name Ray Train gives a checkpoint (`checkpoint_dir_name`)."""
    return RAY_PREFIX + name(epoch, step)


# ---------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------
def variable_names(variables, owner: str = "") -> list[str]:
    """Stable, unique names of `variables`: their Keras paths without the `owner/` prefix (the
    optimizer's name: Adam and the fused Adam share slots), with Keras's process-wide numbering
    of seed generators (`seed_generator_7/...`) dropped, and a `#k` suffix on the k-th repeat."""
    seen: dict[str, int] = {}
    names = []
    for v in variables:
        path = getattr(v, "path", None) or v.name
        if owner and path.startswith(owner + "/"):
            path = path[len(owner) + 1 :]
        path = _SEED_GENERATOR.sub("seed_generator/", path)
        count = seen.get(path, 0)
        seen[path] = count + 1
        names.append(path if count == 0 else f"{path}#{count}")
    return names


_SEED_GENERATOR = re.compile(r"^seed_generator(_\d+)?/")


def _npz_bytes(named: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **named)
    return buf.getvalue()


def _named(variables, values=None, owner: str = "") -> dict[str, np.ndarray]:
    arrays = values if values is not None else [np.asarray(v.numpy()) for v in variables]
    return dict(zip(variable_names(variables, owner), arrays))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(directory: str, *, model, optimizer, loop: dict, config_json: str, best=None) -> None:
    """Writes a checkpoint into the local `directory`; every file atomically, the manifest last.

    `loop` holds the loop state (`epoch`, `step`, `metrics`, ...); `best`, when given, is the
    best epoch's model values in `model.variables` order."""
    files = {
        MODEL_FILE: _npz_bytes(_named(model.variables)),
        OPTIMIZER_FILE: _npz_bytes(_named(optimizer.variables, owner=optimizer.name)),
        CONFIG_FILE: config_json.encode(),
        STATE_FILE: (json.dumps(dict(loop, format_version=FORMAT_VERSION), indent=1) + "\n").encode(),
    }
    if best is not None:
        files[BEST_FILE] = _npz_bytes(_named(model.variables, best))
    os.makedirs(directory, exist_ok=True)
    for file_name, data in files.items():
        storage.write_bytes(os.path.join(directory, file_name), data)
    manifest = {
        "format_version": FORMAT_VERSION,
        "epoch": loop["epoch"],
        "step": loop.get("step", 0),
        # a step checkpoint has no validation of its own: it stays out of the best-K ranking
        "val_accuracy": None if loop.get("step") else (loop.get("metrics") or {}).get("val_accuracy"),
        "files": {n: {"size": len(d), "sha256": _sha256(d)} for n, d in sorted(files.items())},
    }
    storage.write_text(os.path.join(directory, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n")


def upload(local_dir: str, target_uri: str) -> None:
    """Copies a checkpoint to storage: its files first, the manifest (or legacy state) last."""
    last = MANIFEST_FILE if os.path.exists(os.path.join(local_dir, MANIFEST_FILE)) else STATE_FILE
    for entry in sorted(os.listdir(local_dir)):
        if entry != last:
            storage.write_bytes(storage.join(target_uri, entry), _read(os.path.join(local_dir, entry)))
    storage.write_bytes(storage.join(target_uri, last), _read(os.path.join(local_dir, last)))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------
# Verifying and reading.
# ---------------------------------------------------------------------------------
def _manifest(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_text(storage.join(uri, MANIFEST_FILE)))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"damaged": True}


def verify(uri: str) -> str | None:
    """None when the checkpoint at `uri` is whole, else why not (one phrase)."""
    manifest = _manifest(uri)
    if manifest is None:
        return None if _is_legacy(uri) else "no manifest.json (incomplete)"
    if manifest.get("damaged") or "files" not in manifest:
        return "manifest.json is damaged"
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        return f"format {manifest['format_version']} is newer than this fer_dist reads ({FORMAT_VERSION})"
    for file_name, want in manifest["files"].items():
        try:
            data = storage.read_bytes(storage.join(uri, file_name))
        except FileNotFoundError:
            return f"{file_name} is missing"
        if len(data) != want["size"] or _sha256(data) != want["sha256"]:
            return f"{file_name} does not match its manifest (size {len(data)}, expected {want['size']})"
    return None


def _is_legacy(uri: str) -> bool:
    """A checkpoint of the format before 1: its state.json (written last) has no format_version."""
    try:
        return "format_version" not in json.loads(storage.read_text(storage.join(uri, STATE_FILE)))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return False


def info(uri: str) -> Info | None:
    """The manifest's facts of the checkpoint at `uri` (legacy: from state.json); None if absent."""
    manifest = _manifest(uri)
    if manifest is not None and not manifest.get("damaged"):
        return Info(uri, int(manifest["epoch"]), int(manifest.get("step", 0)), manifest.get("val_accuracy"))
    try:
        state = json.loads(storage.read_text(storage.join(uri, STATE_FILE)))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return Info(
        uri, int(state.get("epoch", 0)), int(state.get("step", 0)), (state.get("metrics") or {}).get("val_accuracy")
    )


def listing(parent_uri: str, prefix: str) -> list[Info]:
    """The checkpoints named `prefix...` under `parent_uri` that have a manifest, oldest first."""
    if not storage.exists(parent_uri):
        return []
    found = []
    for entry in storage.listdir(parent_uri):
        if entry.startswith(prefix):
            facts = info(storage.join(parent_uri, entry))
            if facts is not None:
                found.append(facts)
    return sorted(found, key=lambda i: (i.epoch, i.step, i.uri))


def newest_whole(parent_uri: str, prefix: str) -> Info | None:
    """The newest checkpoint under `parent_uri` that verifies; logs each one skipped."""
    for facts in reversed(listing(parent_uri, prefix)):
        reason = verify(facts.uri)
        if reason is None:
            return facts
        log.warning("skipping checkpoint %s: %s", facts.uri, reason)
    return None


def fetch_to_resume(parent_uri: str, prefix: str) -> tuple[Info, str] | None:
    """(the checkpoint a restart resumes from, a local copy of it): newest first, the first whose
    copy verifies, each one skipped logged; None when there is none at all (a fresh run). Each
    candidate is read once: downloaded, then verified where it lies. Raises CheckpointError when
    checkpoints exist but none is whole: starting over would silently lose them."""
    found = listing(parent_uri, prefix)
    for facts in reversed(found):
        local = download(facts.uri)
        reason = verify(local)
        if reason is None:
            return facts, local
        shutil.rmtree(local, ignore_errors=True)
        log.warning("skipping checkpoint %s: %s", facts.uri, reason)
    if found:
        raise CheckpointError(
            f"no whole checkpoint to resume from in {parent_uri}: every one is damaged or incomplete (see the log)"
        )
    return None


def download(uri: str) -> str:
    """A fresh local copy of the checkpoint at `uri`; the caller removes it."""
    target = tempfile.mkdtemp(prefix="fer_dist_restore_")
    try:
        return storage.download_dir(uri, target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def _is_positional(arrays: dict[str, np.ndarray]) -> bool:
    return bool(arrays) and set(arrays) == {f"arr_{i}" for i in range(len(arrays))}


def _values_for(variables, arrays: dict[str, np.ndarray], where: str, what: str, owner: str = "") -> list[np.ndarray]:
    """`arrays` in `variables` order, matched by name (or by position in the legacy format)."""
    mismatch = f"checkpoint {where}: its {what} does not match this config's model (was the config changed?)"
    if _is_positional(arrays):
        values = [arrays[f"arr_{i}"] for i in range(len(arrays))]
        if len(values) != len(variables):
            raise CheckpointError(f"{mismatch}: {len(values)} arrays in the checkpoint, {len(variables)} variables")
        for v, a in zip(variables, values):
            if a.shape != tuple(v.shape):
                raise CheckpointError(
                    f"{mismatch}: first mismatch {v.path}: {a.shape} in the checkpoint, {tuple(v.shape)}"
                )
        return values
    names = variable_names(variables, owner)
    for n, v in zip(names, variables):
        if n not in arrays:
            raise CheckpointError(f"{mismatch}: first mismatch {n}: missing from the checkpoint")
        if arrays[n].shape != tuple(v.shape):
            raise CheckpointError(
                f"{mismatch}: first mismatch {n}: {arrays[n].shape} in the checkpoint, {tuple(v.shape)} in the model"
            )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise CheckpointError(f"{mismatch}: first mismatch {extra[0]}: in the checkpoint, not in the model")
    return [arrays[n] for n in names]


def load(directory: str, *, model, optimizer) -> tuple[dict, list | None]:
    """Restores model and optimizer variables from a local checkpoint directory.

    Returns the loop state's fields and the best epoch's values (`model.variables` order, or
    None). Raises CheckpointError naming the first variable that does not match."""
    reason = verify(directory)
    if reason is not None:
        raise CheckpointError(f"checkpoint {directory}: {reason}")
    model_arrays = _load_npz(os.path.join(directory, MODEL_FILE))
    legacy = _is_positional(model_arrays)
    if legacy:
        log.warning(
            "checkpoint %s is in the positional format of fer_dist before format 1: matched by position", directory
        )
    model_values = _values_for(model.variables, model_arrays, directory, "model")
    optimizer_values = _values_for(
        optimizer.variables,
        _load_npz(os.path.join(directory, OPTIMIZER_FILE)),
        directory,
        "optimizer state",
        owner=optimizer.name,
    )
    for v, a in zip(model.variables, model_values):
        v.assign(a)
    for v, a in zip(optimizer.variables, optimizer_values):
        v.assign(a)
    best = None
    if os.path.exists(os.path.join(directory, BEST_FILE)):
        best = _values_for(model.variables, _load_npz(os.path.join(directory, BEST_FILE)), directory, "best weights")
    with open(os.path.join(directory, STATE_FILE)) as f:
        state = json.load(f)
    state.pop("format_version", None)
    return state, best


def load_model_weights(uri: str, model) -> None:
    """Assigns a stored checkpoint's model variables (by name) to `model`; verifies it first."""
    reason = verify(uri)
    if reason is not None:
        raise CheckpointError(f"checkpoint {uri}: {reason}")
    with np.load(io.BytesIO(storage.read_bytes(storage.join(uri, MODEL_FILE)))) as saved:
        arrays = {k: saved[k] for k in saved.files}
    for v, a in zip(model.variables, _values_for(model.variables, arrays, uri, "model")):
        v.assign(a)


# ---------------------------------------------------------------------------------
# Retention: one policy.
# ---------------------------------------------------------------------------------
def kept(checkpoints: list[Info], keep: int) -> set[str]:
    """The URIs to keep: the best `keep` by val_accuracy (ties: the newer), plus the latest."""
    if not checkpoints:
        return set()
    newest = max(checkpoints, key=lambda i: (i.epoch, i.step))
    scored = [i for i in checkpoints if i.val_accuracy is not None]
    best = sorted(scored, key=lambda i: (i.val_accuracy, i.epoch, i.step), reverse=True)[:keep]
    return {i.uri for i in best} | {newest.uri}


def prune(parent_uri: str, prefix: str, keep: int) -> list[str]:
    """Deletes the checkpoints under `parent_uri` that `kept` does not keep; returns their URIs."""
    found = listing(parent_uri, prefix)
    keep_uris = kept(found, keep)
    gone = [i.uri for i in found if i.uri not in keep_uris]
    for uri in gone:
        storage.delete_dir(uri)
    return gone
