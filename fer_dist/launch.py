"""Ray Train: the same training loop on N workers under MultiWorkerMirroredStrategy.

    python jobs/train.py --workers 2                                      # local Ray, 2 CPU workers
    python jobs/train.py --workers 8 --gpus-per-worker 1 \\
        --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/runs  # on a Ray cluster

`run_on_ray` builds a Train V2 `TensorflowTrainer` (Ray sets TF_CONFIG on every worker;
`train.make_strategy` turns that into MWMS). Checkpoints go through `ray.train.report`
to `RunConfig(storage_path, storage_filesystem)`: a local directory or `gs://` (the
emulator too, via STORAGE_EMULATOR_HOST), kept best-K by val_accuracy plus the latest.
`FailureConfig(max_failures)` restarts a failed worker group from the latest checkpoint;
rerunning with the same storage and name (`--resume`) continues after a driver loss,
because Train V2 reloads its checkpoint manager from `<storage>/<name>`.
"""

from __future__ import annotations

import logging
import os

from fer_dist import checkpoint, storage
from fer_dist.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3  # worker-group restarts before a run fails (--max-failures)
PG_KEY = "fer_dist/placement_group/{run}"
# Environment that Ray workers must share with the driver.
PROPAGATED_ENV = (
    "STORAGE_EMULATOR_HOST",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_CPP_MIN_LOG_LEVEL",
    "GOOGLE_CLOUD_PROJECT",
    "FER_DIST_STORAGE_RETRY_S",
)


class RaySession:
    """A `sessions.Session` inside a Ray Train worker: checkpoints go through `ray.train.report`
    to `<run_dir>/checkpoint_epoch_NNNN`; the chief then applies the one retention policy."""

    show_progress = False

    def __init__(self, run_dir: str, keep_checkpoints: int):
        self.run_dir = run_dir
        self.keep = keep_checkpoints

    def restore_dir(self) -> str | None:
        """The chief chooses the newest whole checkpoint in storage and every worker takes that one.

        Ray's latest registered checkpoint is one of them, but not always the newest (a worker
        killed after its upload, before the controller registered the report) and not always
        whole (`ray.train.get_checkpoint()` returns a damaged one on every restart), so the
        choice is made from storage, verified against each checkpoint's manifest."""
        import ray.train
        from ray.train.collective import broadcast_from_rank_zero

        from fer_dist.steps import is_chief

        choice, local = None, None
        if is_chief(ray.train.get_context().get_world_rank()):
            fetched = checkpoint.fetch_to_resume(self.run_dir, checkpoint.RAY_PREFIX)
            registered = ray.train.get_checkpoint()
            if fetched is not None:
                choice, local = fetched[0].uri, fetched[1]
                if registered is None or not registered.path.endswith(choice.rsplit("/", 1)[1]):
                    log.info("resuming from %s (Ray registered %s)", choice, registered.path if registered else "none")
        choice = broadcast_from_rank_zero(choice)
        if local is not None or choice is None:  # the chief's copy is already here and verified
            return local
        return checkpoint.download(choice)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint.ray_name(metrics["epoch"]))
        if checkpoint_dir:  # only the chief passes a checkpoint
            checkpoint.prune(self.run_dir, checkpoint.RAY_PREFIX, self.keep)


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import tensorflow as tf

    from fer_dist import logs, reporting, train
    from fer_dist.steps import is_chief

    logs.setup_logging()
    threads = max(1, round(loop_config["cpus_per_worker"]))
    if threads:  # 2 workers on 2 cores must not each take every core
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    config = TrainConfig.from_json(loop_config["config_json"])
    if loop_config.get("in_tune") and is_chief(ray.train.get_context().get_world_rank()):
        record_placement_group(loop_config["run_name"])
    result = train.fit(config, RaySession(loop_config["run_dir"], config.keep_checkpoints))
    if result.model is not None:  # the chief
        reporting.finish(result, config, loop_config["run_dir"])


def ensure_ray(num_cpus: int | None = None) -> None:
    """Joins the cluster in RAY_ADDRESS / the one `ray start` made, or starts a local one."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
    runtime_env = {"worker_process_setup_hook": "fer_dist.launch.quiet_ray_loggers"}
    if env:
        runtime_env["env_vars"] = env
    ray.init(runtime_env=runtime_env, log_to_driver=True, num_cpus=num_cpus)


# Ray Train V2's PlacementGroupCleaner asks the State API (served by the dashboard, which
# `ray[train,tune]` does not install) whether the Train controller lives, once a second,
# and logs a warning each time it cannot: a screenful per minute that says nothing about
# the run. The controller's own messages (worker failures, restarts) are kept.
QUIETED_RAY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_ray_loggers() -> None:
    """Ray `worker_process_setup_hook`: runs in every Ray worker process of the job."""
    import logging

    for name in QUIETED_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def make_trainer(
    config: TrainConfig,
    *,
    storage_uri: str,
    name: str,
    num_workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
    callbacks=None,
):
    """The TensorflowTrainer for one run; `tune.py` calls this for every trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from fer_dist.errors import UserError

    if config.global_batch_size % num_workers:
        raise UserError(
            f"global_batch_size={config.global_batch_size} is not divisible by --workers {num_workers}: "
            f"per_worker_batch_size must be a whole number"
        )
    if storage.is_gcs(storage_uri):
        storage.check_bucket(storage_uri)  # Ray's StorageContext would create a missing bucket
    fs, path = storage.filesystem(storage_uri)
    run_dir = storage.join(storage_uri, name)
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config_json": config.to_json(),
            "run_dir": run_dir,
            "run_name": name,
            "cpus_per_worker": cpus_per_worker,
            "in_tune": bool(callbacks),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=max_failures),
            # Ray keeps every checkpoint it registers; the chief applies the one retention
            # policy (checkpoint.kept: best K by val_accuracy plus the latest) after each report.
            checkpoint_config=CheckpointConfig(checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def run_on_ray(
    config: TrainConfig,
    *,
    storage_uri: str,
    name: str,
    num_workers: int,
    gpus_per_worker: float = 0.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> dict:
    """Trains on Ray; returns the final metrics that rank 0 wrote to `<storage>/<name>/metrics.json`."""
    import json

    ensure_ray()
    trainer = make_trainer(
        config,
        storage_uri=storage_uri,
        name=name,
        num_workers=num_workers,
        gpus_per_worker=gpus_per_worker,
        max_failures=max_failures,
    )
    log.info("Ray Train: %d worker(s), %s GPU each, storage %s", num_workers, gpus_per_worker or "no", storage_uri)
    result = trainer.fit()
    if result.error:
        raise result.error
    return json.loads(storage.read_text(storage.join(storage_uri, name, "metrics.json")))


# ---------------------------------------------------------------------------------
# ray-project/ray#54305: when Tune stops a Train V2 trial, the placement group of its worker
# group is not released and the next trial waits forever. Each trial's rank-0 worker records
# its placement group id in Ray's KV store; `tune.ReleaseTrialPlacementGroups` removes exactly
# that group when the trial completes or fails (safe with concurrent trials).
# ---------------------------------------------------------------------------------
def record_placement_group(run_name: str) -> None:
    """Called by a trial's rank-0 Train worker: remember its worker placement group."""
    import ray
    from ray.experimental import internal_kv

    pg = ray.util.get_current_placement_group()
    if pg is not None and internal_kv._internal_kv_initialized():
        internal_kv._internal_kv_put(PG_KEY.format(run=run_name), pg.id.hex(), overwrite=True)


def release_placement_group(run_name: str) -> bool:
    """Removes the recorded worker placement group of a finished trial; True if one was removed."""
    import ray
    from ray.experimental import internal_kv
    from ray.util.placement_group import PlacementGroup

    key = PG_KEY.format(run=run_name)
    pg_hex = internal_kv._internal_kv_get(key)
    if not pg_hex:
        return False
    internal_kv._internal_kv_del(key)
    pg_id = pg_hex.decode() if isinstance(pg_hex, bytes) else pg_hex
    state = ray.util.placement_group_table().get(pg_id, {}).get("state")
    if state in (None, "REMOVED"):
        return False
    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
    log.info("released the leftover worker placement group of %s (ray-project/ray#54305)", run_name)
    return True
