"""The Ray Train worker side: what runs on every worker of a run (`train_loop_per_worker`) and
its session (`RaySession`).

The chief publishes each checkpoint itself (`checkpoint.publish`: storage's retries, the run's
fence, the manifest exclusively) to `<run_dir>/checkpoints/`, and `ray.train.report` carries
metrics only; after a worker-group restart the chief resumes from the newest whole checkpoint
in storage and every worker takes its choice. The driver holds the run's lease; the workers
check its `exclusive.Fence` before they start and before every write.
"""

from __future__ import annotations

import logging

from fer_dist import checkpoint, exclusive, preemption, storage
from fer_dist.config import TrainConfig
from fer_dist.rank import worker_rank

log = logging.getLogger(__name__)


class RaySession:
    """A `sessions.Session` inside a Ray Train worker: the chief publishes each checkpoint to
    `<run_dir>/checkpoints/` and applies the one retention policy; `ray.train.report` carries
    every worker's metrics only."""

    show_progress = False

    def __init__(
        self,
        run_dir: str,
        keep_checkpoints: int,
        vote_every_steps: int = 20,
        poll_seconds: float = 10.0,
        monitor: str = "val_loss",
    ):
        self.run_dir = run_dir
        self.keep = keep_checkpoints
        self.monitor = monitor
        self.vote_every_steps = vote_every_steps
        self.poll_seconds = poll_seconds

    def restore_dir(self) -> str | None:
        """The chief chooses the newest whole checkpoint in storage (verified against its
        manifest) and every worker takes that one."""
        from ray.train.collective import broadcast_from_rank_zero

        from fer_dist.rank import is_chief

        choice, local = None, None
        if is_chief():
            fetched = checkpoint.fetch_to_resume(checkpoint.of_run(self.run_dir), self.run_dir)
            if fetched is not None:
                choice, local = fetched[0].uri, fetched[1]
        choice = broadcast_from_rank_zero(choice)
        if local is not None or choice is None:  # the chief's copy is already here and verified
            return local
        return checkpoint.download(choice)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        if checkpoint_dir:  # only the chief passes a checkpoint
            checkpoint.publish(checkpoint_dir, self.run_dir, metrics["epoch"], metrics.get("step", 0))
            checkpoint.prune_run(self.run_dir, self.keep, self.monitor)
        ray.train.report(metrics)  # metrics only: Ray never uploads a checkpoint

    def watcher(self) -> preemption.NoWatcher:
        return preemption.RayNoticeWatcher(self.vote_every_steps, self.poll_seconds)


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import tensorflow as tf

    from fer_dist import logs, reporting, train, versions

    logs.setup_logging()
    threads = max(1, round(loop_config["cpus_per_worker"]))
    if threads:  # 2 workers on 2 cores must not each take every core
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    versions.check()  # this node's Ray and TensorFlow: an autoscaler's later nodes run what their image has
    config = TrainConfig.from_json(loop_config["config_json"])
    if loop_config.get("fence"):  # the driver holds the run's lease: stop at once if it is gone
        fence = exclusive.Fence(**loop_config["fence"])
        fence.check()
        storage.fence(loop_config["run_dir"], fence.check)
    if loop_config.get("record_workers"):  # a Tune trial's run: `trial_runs.stop_run` can end it
        from fer_dist import trial_runs

        trial_runs.record_worker(loop_config["run_name"], worker_rank())
    session = RaySession(
        loop_config["run_dir"],
        config.keep_checkpoints,
        config.vote_every_steps,
        config.preemption_poll_seconds,
        config.monitor,
    )
    result = train.fit(config, session)
    if result.model is not None:  # the chief
        reporting.finish(result, result.config, loop_config["run_dir"])
