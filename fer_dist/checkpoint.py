"""The one checkpoint format: variables by name, the loop state, the config and a manifest.

A checkpoint is a directory (local, or a prefix on `gs://`):

    model.npz       every model variable, keyed by its Keras path (`stem_conv/kernel`)
    optimizer.npz   every optimizer variable, keyed by its path (without the optimizer's name:
                    `iteration`; a loss scaler's own under `loss_scale/`, fer_dist/optim.py)
    best.npz        (when the best epoch is not the last) the best epoch's model variables
    config.json     the resolved TrainConfig
    state.json      the loop state (epoch, step within the epoch, schedule, history) and format_version
    manifest.json   written last: the format version, epoch, step within the epoch, val_accuracy,
                    and the size and SHA-256 of every other file

A checkpoint is complete when its manifest exists and every file matches it (`verify`): sizes
and hashes prove it whole wherever it lies. Variables are matched by name on load, and the
first variable that is missing, extra or of another shape is named in the error.

One owner: the chief writes every checkpoint through `publish` (its files through `storage`,
with retries and the run's fence, then the manifest exclusively: `O_EXCL` / `ifGenerationMatch=0`),
in a plain process and on Ray alike, always to `<run_dir>/checkpoints/`. Ray hears metrics only.
A second writer can never publish over a checkpoint that is already whole.

Checkpoints written before format 1 (positional `arr_0..arr_N` arrays, `state.json` holding
the loop state itself, no manifest) are migrated on load: matched by position and shape, as
they were written, with a warning.

One verified listing (`whole`) serves resume, retention, Tune's best and export. One retention
policy (`kept`): of the whole checkpoints, the best `keep` by the run's monitored metric
(`config.monitor`, fer_dist/monitor.py) plus the newest. A
checkpoint that does not verify never counts; one older than the newest whole one (it can
never be resumed from) is removed, a newer one is left alone (it is named in the log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile

import numpy as np

from fer_dist import monitor, optim, storage
from fer_dist.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.npz"
OPTIMIZER_FILE = "optimizer.npz"
BEST_FILE = "best.npz"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
LOCAL_PARENT = "checkpoints"  # every run's checkpoints: <run_dir>/checkpoints/epoch_NNNN
RAY_PREFIX = "checkpoint_"  # Ray runs of fer_dist before it owned them: <run_dir>/checkpoint_epoch_NNNN (read)
EPOCH_PREFIX = "epoch_"
TEMP_PREFIX = ".tmp-"  # storage.write_bytes's temporary files, left by a killed write


class CheckpointError(UserError):
    """A checkpoint that cannot be used: damaged, incomplete, or of another model."""


@dataclasses.dataclass(frozen=True)
class Info:
    """What a checkpoint's manifest says about it."""

    uri: str
    epoch: int
    step: int  # steps done in epoch `epoch + 1` (0: at an epoch boundary)
    val_accuracy: float | None
    metrics: dict = dataclasses.field(default_factory=dict, compare=False)  # the epoch's metrics (manifest)
    published: bool = True  # it has a manifest (whole or not) or is a legacy one; False: a write cut short


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
        OPTIMIZER_FILE: _npz_bytes(_named(optimizer.variables, owner=optim.inner(optimizer).name)),
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
        "metrics": {} if loop.get("step") else _scalars(loop.get("metrics") or {}),
        "files": {n: {"size": len(d), "sha256": _sha256(d)} for n, d in sorted(files.items())},
    }
    storage.write_text(os.path.join(directory, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n")


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def upload(local_dir: str, target_uri: str) -> None:
    """Copies a checkpoint to storage: its files first, the manifest (or legacy state) last.
    The manifest is published exclusively: `CheckpointError` if a whole checkpoint is already
    there (another writer's), and a damaged or incomplete one in its place is replaced."""
    last = MANIFEST_FILE if os.path.exists(os.path.join(local_dir, MANIFEST_FILE)) else STATE_FILE
    if last == MANIFEST_FILE and storage.exists(target_uri):
        if verify(target_uri) is None:
            raise CheckpointError(
                f"checkpoint {target_uri} is already published (by another writer of this run?): not overwriting it"
            )
        log.info("replacing the incomplete or damaged checkpoint %s", target_uri)
        storage.delete_dir(target_uri)
    for entry in sorted(os.listdir(local_dir)):
        if entry != last:
            storage.write_bytes(storage.join(target_uri, entry), _read(os.path.join(local_dir, entry)))
    data = _read(os.path.join(local_dir, last))
    if last != MANIFEST_FILE:
        storage.write_bytes(storage.join(target_uri, last), data)
        return
    from fer_dist import exclusive

    storage.check_fence(target_uri)
    if not exclusive.create_exclusive(storage.join(target_uri, last), data):
        raise CheckpointError(f"checkpoint {target_uri} was published by another writer meanwhile: not overwriting it")
    # This process wrote every byte it lists (each upload checked by its store): retention need not
    # read it back. Any later change to its files changes the key, and it is read again.
    _verified[(target_uri, storage.file_stats(target_uri))] = None


def publish(local_dir: str, run_dir: str, epoch: int, step: int = 0) -> str:
    """The one way a checkpoint is stored: `local_dir` (from `save`) to
    `<run_dir>/checkpoints/<name(epoch, step)>`; returns its URI."""
    target = storage.join(run_dir, LOCAL_PARENT, name(epoch, step))
    upload(local_dir, target)
    return target


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------
# Verifying and reading.
# ---------------------------------------------------------------------------------
def _manifest(uri: str) -> dict | None:
    """The manifest of the checkpoint at `uri`; None if absent; {"damaged": True} if it is not
    one (not JSON, or JSON of another shape)."""
    try:
        manifest = json.loads(storage.read_text(storage.join(uri, MANIFEST_FILE)))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, IsADirectoryError):
        return {"damaged": True}
    return manifest if _well_formed(manifest) else {"damaged": True}


def _state_metrics(uri: str) -> dict:
    """The epoch's metrics from the checkpoint's state.json ({} when unreadable)."""
    try:
        metrics = json.loads(storage.read_text(storage.join(uri, STATE_FILE))).get("metrics") or {}
    except (FileNotFoundError, ValueError, UnicodeDecodeError, AttributeError, IsADirectoryError):
        return {}
    return _scalars(metrics) if isinstance(metrics, dict) else {}


def _well_formed(manifest) -> bool:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return False
    try:
        int(manifest.get("epoch")), int(manifest.get("step", 0)), int(manifest.get("format_version", 0))
        accuracy = manifest.get("val_accuracy")
        if accuracy is not None:
            float(accuracy)
    except (TypeError, ValueError):
        return False
    if not isinstance(manifest.get("metrics", {}), dict):
        return False
    return all(
        isinstance(f, dict) and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)
        for f in manifest["files"].values()
    )


_verified: dict[tuple, str | None] = {}  # (uri, its files' sizes and times): verify's answer


def verify(uri: str) -> str | None:
    """None when the checkpoint at `uri` is whole, else why not (one phrase). Each checkpoint is
    read whole once per process: the answer is kept while its files' sizes and modification
    times (one listing) stay the same."""
    key = (uri, storage.file_stats(uri))
    if key not in _verified:
        _verified[key] = _verify(uri)
    return _verified[key]


def _verify(uri: str) -> str | None:
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
        except (FileNotFoundError, IsADirectoryError):
            return f"{file_name} is missing"
        if len(data) != want["size"] or _sha256(data) != want["sha256"]:
            return f"{file_name} does not match its manifest (size {len(data)}, expected {want['size']})"
    return None


def _is_legacy(uri: str) -> bool:
    """A checkpoint of the format before 1: its state.json (written last) has no format_version."""
    try:
        state = json.loads(storage.read_text(storage.join(uri, STATE_FILE)))
    except (FileNotFoundError, ValueError, UnicodeDecodeError, IsADirectoryError):
        return False
    return isinstance(state, dict) and "format_version" not in state


def info(uri: str) -> Info | None:
    """The manifest's facts of the checkpoint at `uri` (legacy: from state.json); None if absent."""
    manifest = _manifest(uri)
    if manifest is not None and not manifest.get("damaged"):
        accuracy = manifest.get("val_accuracy")
        metrics = manifest.get("metrics")
        if metrics is None and not int(manifest.get("step", 0)):  # a manifest written before it had them
            metrics = _state_metrics(uri)
        return Info(
            uri,
            int(manifest["epoch"]),
            int(manifest.get("step", 0)),
            None if accuracy is None else float(accuracy),
            dict(metrics or {}),
        )
    try:  # no manifest, or a damaged one: what state.json says (legacy checkpoints, damaged ones)
        state = json.loads(storage.read_text(storage.join(uri, STATE_FILE)))
        metrics = state.get("metrics") or {}
        metrics = metrics if isinstance(metrics, dict) else {}
        published = manifest is not None or _is_legacy(uri)
        epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
        return Info(uri, epoch, step, metrics.get("val_accuracy"), metrics, published)
    except (FileNotFoundError, ValueError, UnicodeDecodeError, TypeError, AttributeError):
        return None


def listing(parent_uri: str, prefix: str) -> list[Info]:
    """The checkpoints named `prefix...` under `parent_uri` that have a manifest or a state.json
    (whole or not: see `verify`), oldest first."""
    if not storage.exists(parent_uri):
        return []
    found = []
    for entry in storage.listdir(parent_uri):
        if entry.startswith(prefix):
            facts = info(storage.join(parent_uri, entry))
            if facts is not None:
                found.append(facts)
    return sorted(found, key=_order)


def _order(i: Info) -> tuple:
    return (i.epoch, i.step, i.uri)


def of_run(run_dir: str) -> list[Info]:
    """Every checkpoint of a run, oldest first: `checkpoints/epoch_*`, and the
    `checkpoint_epoch_*` that Ray runs of earlier fer_dist versions hold."""
    return sorted(listing(storage.join(run_dir, LOCAL_PARENT), EPOCH_PREFIX) + listing(run_dir, RAY_PREFIX), key=_order)


def whole(found: list[Info]) -> list[Info]:
    """The checkpoints of `found` that verify (oldest first): what resume, retention, Tune's best
    and export choose from."""
    return [i for i in found if verify(i.uri) is None]


def newest_whole(parent_uri: str, prefix: str) -> Info | None:
    """The newest checkpoint under `parent_uri` that verifies; logs each one skipped."""
    for facts in reversed(listing(parent_uri, prefix)):
        reason = verify(facts.uri)
        if reason is None:
            return facts
        log.warning("skipping checkpoint %s: %s", facts.uri, reason)
    return None


def fetch_to_resume(found: list[Info], where: str) -> tuple[Info, str] | None:
    """(the checkpoint a restart resumes from, a local copy of it), of the run's checkpoints
    `found` (`of_run`): newest first, the first whose copy verifies, each one skipped logged;
    None when there is none at all (a fresh run, or only writes cut short before their manifest).
    Each candidate is read once: downloaded, then verified where it lies. Raises CheckpointError
    when published checkpoints exist but none is whole: starting over would silently lose them."""
    for facts in reversed(found):
        local = download(facts.uri)
        reason = verify(local)
        if reason is None:
            return facts, local
        shutil.rmtree(local, ignore_errors=True)
        log.warning("skipping checkpoint %s: %s", facts.uri, reason)
    if any(facts.published for facts in found):  # only writes cut short before their manifest: nothing lost
        raise CheckpointError(
            f"no whole checkpoint to resume from in {where}: every one is damaged or incomplete (see the log)"
        )
    return None


def newest_config(found: list[Info]) -> tuple[Info, str] | None:
    """(checkpoint, its config.json text) of the newest of `found` whose config.json matches its
    manifest (read alone: cheap on gs://); None when none does."""
    for facts in reversed(found):
        manifest = _manifest(facts.uri)
        want = (manifest or {}).get("files", {}).get(CONFIG_FILE) if manifest and not manifest.get("damaged") else None
        if want is None:
            continue
        try:
            data = storage.read_bytes(storage.join(facts.uri, CONFIG_FILE))
        except FileNotFoundError:
            continue
        if len(data) == want["size"] and _sha256(data) == want["sha256"]:
            return facts, data.decode("utf-8")
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


def _values_for(
    variables, arrays: dict[str, np.ndarray], where: str, what: str, owner: str = "", optional: str = ""
) -> list[np.ndarray | None]:
    """`arrays` in `variables` order, matched by name (or by position in the legacy format). A
    variable whose name starts with `optional` and that the checkpoint lacks gets None."""
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
        if n not in arrays and optional and n.startswith(optional):
            continue
        if n not in arrays:
            raise CheckpointError(f"{mismatch}: first mismatch {n}: missing from the checkpoint")
        if arrays[n].shape != tuple(v.shape):
            raise CheckpointError(
                f"{mismatch}: first mismatch {n}: {arrays[n].shape} in the checkpoint, {tuple(v.shape)} in the model"
            )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise CheckpointError(f"{mismatch}: first mismatch {extra[0]}: in the checkpoint, not in the model")
    return [arrays.get(n) for n in names]


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
        owner=optim.inner(optimizer).name,
        optional=optim.LOSS_SCALE_NAME + "/",  # mixed-precision checkpoints written before the loss scaler
    )
    for v, a in zip(model.variables, model_values):
        v.assign(a)
    for v, a in zip(optimizer.variables, optimizer_values):
        if a is not None:
            v.assign(a)
    if any(a is None for a in optimizer_values):
        log.warning(
            "checkpoint %s holds no loss scale (written before fer_dist scaled the loss): it starts afresh", directory
        )
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
def monitored(facts: Info, metric: str) -> float | None:
    """The checkpoint's value of the monitored `metric` (None: a step checkpoint, no validation)."""
    if facts.step:
        return None
    value = facts.metrics.get(metric)
    if value is None and metric == "val_accuracy":
        value = facts.val_accuracy  # checkpoints whose manifest has no metrics
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def ranked(checkpoints: list[Info], metric: str) -> list[Info]:
    """The checkpoints that have a value of the monitored `metric` (fer_dist/monitor.py), best
    first (ties: the newer first): the one ranking of retention and of Tune's best."""
    sign = -1.0 if monitor.mode(metric) == "min" else 1.0
    scored = [
        (sign * v, i.epoch, i.step, n) for n, i in enumerate(checkpoints) if (v := monitored(i, metric)) is not None
    ]
    return [checkpoints[n] for *_, n in sorted(scored, reverse=True)]


def kept(checkpoints: list[Info], keep: int, metric: str = "val_loss") -> set[str]:
    """The URIs to keep of the whole `checkpoints`: the best `keep` by the monitored `metric`
    (`ranked`), plus the newest."""
    if not checkpoints:
        return set()
    newest = max(checkpoints, key=lambda i: (i.epoch, i.step))
    return {i.uri for i in ranked(checkpoints, metric)[:keep]} | {newest.uri}


_NAME = re.compile(r"^(?:checkpoint_)?epoch_(\d+)(?:_step_(\d+))?$")


def _position(entry: str) -> tuple[int, int] | None:
    """(epoch, step) of a checkpoint directory's name (`name`), None for other names."""
    match = _NAME.match(entry)
    if match is None:
        return None
    epoch, step = int(match.group(1)), int(match.group(2) or 0)
    return (epoch - 1, step) if step else (epoch, 0)


def prune(parent_uri: str, prefix: str, keep: int, metric: str = "val_loss") -> list[str]:
    """The one retention policy over the checkpoints under `parent_uri`; returns the URIs deleted.

    Only whole checkpoints count (`kept` of `whole`): the newest whole one is never deleted. A
    checkpoint that does not verify, or a directory with neither manifest nor state (a write
    killed early), is deleted when it is older than the newest whole one (nothing can resume
    from it) and left alone otherwise. Temporary files of killed writes go too."""
    if not storage.exists(parent_uri):
        return []
    found = listing(parent_uri, prefix)
    good = whole(found)
    keep_uris = kept(good, keep, metric)
    newest = max(((i.epoch, i.step) for i in good), default=None)
    gone = []
    for facts in found:
        reason = None if facts in good else verify(facts.uri)
        if reason is None and facts.uri in keep_uris:
            _drop_temporary_files(facts.uri)
            continue
        if reason is not None and (newest is None or (facts.epoch, facts.step) >= newest):
            log.info("leaving checkpoint %s (%s): no whole checkpoint is newer", facts.uri, reason)
            continue
        if reason is not None:
            log.warning("removing checkpoint %s (%s): a newer whole checkpoint exists", facts.uri, reason)
        storage.delete_dir(facts.uri)
        gone.append(facts.uri)
    listed = {i.uri for i in found}
    for entry in storage.listdir(parent_uri):  # directories with nothing readable in them
        uri, position = storage.join(parent_uri, entry), _position(entry)
        if entry.startswith(prefix) and uri not in listed and position and newest and position < newest:
            log.warning("removing checkpoint %s (incomplete): a newer whole checkpoint exists", uri)
            storage.delete_dir(uri)
            gone.append(uri)
    return gone


def prune_run(run_dir: str, keep: int, metric: str = "val_loss") -> list[str]:
    """`prune` over a run's checkpoints (`<run_dir>/checkpoints/`)."""
    return prune(storage.join(run_dir, LOCAL_PARENT), EPOCH_PREFIX, keep, metric)


def _drop_temporary_files(uri: str) -> None:
    """A local checkpoint's `.tmp-*` files, left by a write killed before its rename."""
    path = storage.local_path(uri)
    if path is None or not os.path.isdir(path):
        return
    for entry in os.listdir(path):
        if entry.startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, entry))
