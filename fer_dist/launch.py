"""Ray Train: the trainer factory that runs the same training loop on N workers under
MultiWorkerMirroredStrategy (`ray_worker` is the worker side, `ray_cluster` the choice of cluster).

    python jobs/train.py --workers 2                                      # local Ray, 2 CPU workers
    python jobs/train.py --workers 8 --gpus-per-worker 1 \\
        --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/runs  # on a Ray cluster

`run_on_ray` builds a Train V2 `DataParallelTrainer` whose backend (`ray_backend`) sets TF_CONFIG
on every worker (what Ray's `TensorflowTrainer` does, without its import of TensorFlow in the
driver and Train's controller); `train.make_strategy` turns it into MWMS. Checkpoints are ours, not Ray's: the chief
publishes each one through `checkpoint.publish` (storage's retries, the run's fence, the
manifest exclusively) to `<storage>/<name>/checkpoints/`, and `ray.train.report` carries
metrics only. `FailureConfig(max_failures)` restarts a failed worker group, and the chief
resumes from the newest whole checkpoint in storage; `--resume` does the same after a driver
loss. The driver holds the run's lease; its workers get its `exclusive.Fence`.
"""

from __future__ import annotations

import dataclasses
import logging

from fer_dist import exclusive, storage
from fer_dist.config import TrainConfig
from fer_dist.ray_cluster import worker_env, worker_resources

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3  # worker-group restarts before a run fails (--max-failures)


@dataclasses.dataclass(frozen=True)
class Workers:
    """A Ray Train worker count: fixed (`N`) or elastic (`MIN:MAX`, Train V2's
    `ScalingConfig(num_workers=(MIN, MAX))`: the run starts with what the cluster can give, at
    least MIN, carries on with fewer after a node is lost and grows back when nodes return, each
    resize a restart from the latest checkpoint)."""

    min: int
    max: int

    @classmethod
    def parse(cls, text: str | int, flag: str = "--workers") -> Workers:
        """'N' or 'MIN:MAX' (UserError naming `flag` otherwise)."""
        from fer_dist.errors import UserError

        parts = str(text).strip().split(":")
        try:
            low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
        except ValueError:
            low = high = None
        if low is None or low < 0 or high < low or (low == 0 and high > 0):
            raise UserError(f"{flag} {text}: expected N or MIN:MAX with 1 <= MIN <= MAX (0: no Ray)")
        return cls(low, high)

    @property
    def elastic(self) -> bool:
        return self.min != self.max

    def scaling(self) -> int | tuple[int, int]:
        """ScalingConfig's num_workers."""
        return (self.min, self.max) if self.elastic else self.max

    def __bool__(self) -> bool:
        return self.max > 0

    def __str__(self) -> str:
        return f"{self.min}:{self.max}" if self.elastic else str(self.max)


def make_trainer(
    config: TrainConfig,
    *,
    storage_uri: str,
    name: str,
    num_workers: int | str | Workers,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
    callbacks=None,
    record_workers: bool = False,
    fence: exclusive.Fence | None = None,
):
    """The Ray Train trainer for one run; `tune.py` calls this for every trial (with
    `record_workers`, so that `stop_run` can end it). `fence`: the lease its writes are fenced by."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from fer_dist.errors import UserError
    from fer_dist.ray_backend import MultiWorkerConfig

    workers = num_workers if isinstance(num_workers, Workers) else Workers.parse(num_workers)
    if config.global_batch_size < workers.max:  # any size splits it (pipeline.pipeline_slice), if not too small
        raise UserError(f"global_batch_size={config.global_batch_size} is smaller than --workers {workers}")
    if storage.is_gcs(storage_uri):
        storage.check_bucket(storage_uri)  # Ray's StorageContext would create a missing bucket
    fs, path = storage.filesystem(storage_uri)
    run_dir = storage.join(storage_uri, name)
    forget_ray_snapshot(run_dir)
    resources = worker_resources(cpus_per_worker, gpus_per_worker)
    env = worker_env()
    from fer_dist.ray_worker import train_loop_per_worker

    return DataParallelTrainer(
        train_loop_per_worker,
        backend_config=MultiWorkerConfig(),
        train_loop_config={
            "config_json": config.to_json(),
            "run_dir": run_dir,
            "run_name": name,
            "cpus_per_worker": cpus_per_worker,
            "record_workers": record_workers,
            "fence": dataclasses.asdict(fence) if fence else None,
        },
        scaling_config=ScalingConfig(
            num_workers=workers.scaling(), use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(
                max_failures=max_failures,
                # Spot preemptions (a drained node, `preemption.RayNoticeWatcher`) have a budget of
                # their own: unlimited, each one costs at most `vote_every_steps` steps. The just-in-
                # time checkpoint (about a second for the seed recipe, on every worker's schedule)
                # fits well inside the 25 s notice, so the preempted workers are still alive for
                # the collectives (no relaxing needed) and the run restarts at the deadline.
                max_preemption_failures=-1,
                relax_collectives_on_preemption=False,
                preemption_grace_s=0.0,
            ),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Train V2's list of the checkpoints reported to it


def forget_ray_snapshot(run_dir: str) -> None:
    """A resumed run starts without Ray's record of earlier reports: a run of an earlier fer_dist
    (when Ray registered checkpoints) listed checkpoints there, and Ray refuses to start when one
    it lists is gone. Ray registers none now; `RaySession.restore_dir` resumes from storage."""
    uri = storage.join(run_dir, RAY_SNAPSHOT)
    if storage.exists(uri):
        fs, path = storage.filesystem(uri)
        fs.delete_file(path)
        log.debug("Ray Train: starting without its earlier run snapshot; resuming from the checkpoints in %s", run_dir)


def run_on_ray(
    config: TrainConfig,
    *,
    storage_uri: str,
    name: str,
    num_workers: int | str | Workers,
    gpus_per_worker: float = 0.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
    fence: exclusive.Fence | None = None,
) -> dict:
    """Trains on the Ray cluster this process joined (`experiment.prepare` connected and checked
    it); returns the final metrics that rank 0 wrote to `<storage>/<name>/metrics.json`. A
    worker's UserError (bad data, a lost lease) ends the job as that one error."""
    import json

    workers = num_workers if isinstance(num_workers, Workers) else Workers.parse(num_workers)
    trainer = make_trainer(
        config,
        storage_uri=storage_uri,
        name=name,
        num_workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_failures=max_failures,
        fence=fence,
    )
    log.info(
        "Ray Train: %s worker(s)%s, %s GPU each, storage %s",
        workers,
        " (elastic)" if workers.elastic else "",
        gpus_per_worker or "no",
        storage_uri,
    )
    from ray.train import TrainingFailedError

    try:
        trainer.fit()
    except TrainingFailedError as e:
        raise user_error_in(e) or e from None
    return json.loads(storage.read_text(storage.join(storage_uri, name, "metrics.json")))


def user_error_in(error: BaseException):
    """The UserError a Ray worker raised, found in a Train error (`WorkerGroupError`'s
    `worker_failures`, causes), as a UserError of the driver; None when there is none."""
    from fer_dist.errors import UserError

    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return UserError(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        if type(e).__name__ == "InsufficientClusterResourcesError":  # Ray's: the cluster's maximum is too small
            return UserError(" ".join(str(e).split()))
        todo += list((getattr(e, "worker_failures", None) or {}).values())
        todo += [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__, e.__context__]
    return None
