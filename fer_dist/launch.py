"""Ray Train: the same training loop on N workers under MultiWorkerMirroredStrategy.

    python jobs/train.py --workers 2                                      # local Ray, 2 CPU workers
    python jobs/train.py --workers 8 --gpus-per-worker 1 \\
        --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/runs  # on a Ray cluster

`run_on_ray` builds a Train V2 `TensorflowTrainer` (Ray sets TF_CONFIG on every worker;
`train.make_strategy` turns that into MWMS). Checkpoints are ours, not Ray's: the chief
publishes each one through `checkpoint.publish` (storage's retries, the run's fence, the
manifest exclusively) to `<storage>/<name>/checkpoints/`, and `ray.train.report` carries
metrics only. `FailureConfig(max_failures)` restarts a failed worker group, and the chief
resumes from the newest whole checkpoint in storage; `--resume` does the same after a driver
loss. The driver holds the run's lease; its workers get its `exclusive.Fence`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from fer_dist import checkpoint, exclusive, preemption, storage
from fer_dist.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3  # worker-group restarts before a run fails (--max-failures)
# Environment that Ray workers must share with the driver (set before they import TensorFlow:
# fer_dist/__init__.py sets TF_CPP_MIN_LOG_LEVEL; a cluster started by `ray start` has not).
PROPAGATED_ENV = (
    "STORAGE_EMULATOR_HOST",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_CPP_MIN_LOG_LEVEL",
    "GOOGLE_CLOUD_PROJECT",
    "FER_DIST_STORAGE_RETRY_S",
    "FER_DIST_VERSION_CHECK",
)
# Set in every Ray worker of a job: Train V2 would send each print() both to stdout and to its
# logger (the final report twice); the chief's prints go to stdout once.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def worker_env() -> dict:
    """The environment variables every Ray worker of a job gets."""
    return dict(WORKER_ENV, **{k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ})


class RaySession:
    """A `sessions.Session` inside a Ray Train worker: the chief publishes each checkpoint to
    `<run_dir>/checkpoints/` and applies the one retention policy; `ray.train.report` carries
    every worker's metrics only."""

    show_progress = False

    def __init__(self, run_dir: str, keep_checkpoints: int, vote_every_steps: int = 20):
        self.run_dir = run_dir
        self.keep = keep_checkpoints
        self.vote_every_steps = vote_every_steps

    def restore_dir(self) -> str | None:
        """The chief chooses the newest whole checkpoint in storage (verified against its
        manifest) and every worker takes that one."""
        import ray.train
        from ray.train.collective import broadcast_from_rank_zero

        from fer_dist.steps import is_chief

        choice, local = None, None
        if is_chief(ray.train.get_context().get_world_rank()):
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
            checkpoint.prune_run(self.run_dir, self.keep)
        ray.train.report(metrics)  # metrics only: Ray never uploads a checkpoint

    def watcher(self) -> preemption.NoWatcher:
        return preemption.RayNoticeWatcher(self.vote_every_steps)


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import tensorflow as tf

    from fer_dist import logs, reporting, train

    logs.setup_logging()
    threads = max(1, round(loop_config["cpus_per_worker"]))
    if threads:  # 2 workers on 2 cores must not each take every core
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    config = TrainConfig.from_json(loop_config["config_json"])
    if loop_config.get("fence"):  # the driver holds the run's lease: stop at once if it is gone
        fence = exclusive.Fence(**loop_config["fence"])
        fence.check()
        storage.fence(loop_config["run_dir"], fence.check)
    if loop_config.get("record_workers"):
        record_worker(loop_config["run_name"], ray.train.get_context().get_world_rank())
    session = RaySession(loop_config["run_dir"], config.keep_checkpoints, config.vote_every_steps)
    result = train.fit(config, session)
    if result.model is not None:  # the chief
        reporting.finish(result, config, loop_config["run_dir"])


# ---------------------------------------------------------------------------------
# Which Ray cluster a job uses, and whether it can ever run the job.
# ---------------------------------------------------------------------------------
PRIVATE = "local"  # ray.init's address for a new cluster of this job's own, whatever else runs here
HEAD_NODE_RESOURCE = "node:__internal_head__"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster config on the head


@dataclasses.dataclass(frozen=True)
class ClusterChoice:
    address: str  # what ray.init gets: "local" (a private cluster), "auto", "HOST:PORT", "ray://..."
    source: str  # why: "--address", "RAY_ADDRESS" or "default"

    @property
    def private(self) -> bool:
        return self.address == PRIVATE


def choose_cluster(address: str | None, environ=None) -> ClusterChoice:
    """--address if given; else RAY_ADDRESS if set (what `ray job submit` sets for its jobs); else a
    private local cluster started for this job. A cluster someone started with `ray start` on this
    machine is joined only when asked (`--address auto` or its HOST:PORT): `ray.init()` without an
    address would join it silently."""
    environ = os.environ if environ is None else environ
    if address and address.strip():
        return ClusterChoice(address.strip(), "--address")
    if environ.get("RAY_ADDRESS", "").strip():
        return ClusterChoice(environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS")
    return ClusterChoice(PRIVATE, "default")


_joined: dict = {}  # what ensure_ray connected to: {"choice": ClusterChoice, "where": str}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> ClusterChoice:
    """Connects this process to the job's Ray cluster (`choose_cluster`) and logs one line: which
    cluster, and its resources. `num_cpus` sizes a private cluster (ignored when joining)."""
    import ray

    if ray.is_initialized():
        return _joined.get("choice") or ClusterChoice("", "already connected")
    choice = choose_cluster(address)
    from fer_dist import versions

    versions.check(None if choice.private else choice.address)  # the pinned Ray/TF, here and on the cluster
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in log files
    env = worker_env()
    runtime_env = {"worker_process_setup_hook": "fer_dist.launch.quiet_ray_loggers", "env_vars": env}
    kwargs = {"num_cpus": num_cpus} if choice.private else {}
    # Ray's INFO lines ("Started a local Ray instance.", Tune's bookkeeping) are replaced by the
    # line below; its warnings and errors are kept.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    if choice.private:  # our own cluster keeps Ray's default token auth; no notice about opting out
        auth_log.setLevel(logging.ERROR)
    try:
        ray.init(
            address=choice.address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING, **kwargs
        )
    except ConnectionError as e:
        from fer_dist.errors import UserError

        raise UserError(f"{_how(choice)}: cannot connect to a Ray cluster: {e}") from None
    finally:
        auth_log.setLevel(level)
    where = _gcs_address() or choice.address
    _joined.update(choice=choice, where=where)
    nodes = _alive_nodes()
    log.info(
        "Ray: %s %s: %s on %d node(s)",
        "started a private local cluster" if choice.private else f"joined the cluster of {_how(choice)} at",
        where,
        describe_resources(_sum_resources(nodes)),
        len(nodes),
    )
    return choice


def _how(choice: ClusterChoice) -> str:
    return f"RAY_ADDRESS={choice.address}" if choice.source == "RAY_ADDRESS" else f"--address {choice.address}"


def _gcs_address() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # a Ray Client connection (ray://) has none
        return None


def _alive_nodes() -> list[dict]:
    """The total resources of each live node."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _sum_resources(nodes: list[dict]) -> dict:
    total: dict = {}
    for node in nodes:
        for key, value in node.items():
            total[key] = total.get(key, 0) + value
    return total


def describe_resources(resources: dict) -> str:
    """'8 CPU, 1 GPU, TPU 4': CPU and GPU always, then custom resources (not memory, nodes, labels)."""
    shown = [f"{_num(resources.get('CPU', 0))} CPU", f"{_num(resources.get('GPU', 0))} GPU"]
    for key in sorted(resources):
        if key in ("CPU", "GPU", "memory", "object_store_memory") or key.startswith(("node:", "accelerator_type:")):
            continue
        shown.append(f"{key} {_num(resources[key])}")
    return ", ".join(shown)


def _num(value: float) -> str:
    return f"{value:g}"


def fits(bundles: list[dict], nodes: list[dict], node_types: list[tuple[dict, int]] | None = None) -> bool:
    """Whether `bundles` (one {resource: amount} per worker) can ever be placed: on the `nodes`
    (their total resources) plus the nodes an autoscaler may add, `node_types` [(resources,
    max_count)] (max_count -1: unlimited; 0: never). First-fit, largest bundles first."""
    eps = 1e-4  # Ray's resource granularity

    def room(node: dict, bundle: dict) -> bool:
        return all(node.get(k, 0) + eps >= v for k, v in bundle.items() if v > 0)

    def take(node: dict, bundle: dict) -> None:
        for k, v in bundle.items():
            node[k] = node.get(k, 0) - v

    free = [dict(n) for n in nodes]
    spare = [[dict(resources), count] for resources, count in node_types or []]
    for bundle in sorted(bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0))):
        node = next((n for n in free if room(n, bundle)), None)
        if node is None:
            kind = next((t for t in spare if t[1] != 0 and room(t[0], bundle)), None)
            if kind is None:
                return False
            node = dict(kind[0])
            kind[1] -= 1 if kind[1] > 0 else 0
            free.append(node)
        take(node, bundle)
    return True


def node_types_from_cluster_yaml(config: dict) -> list[tuple[dict, int]]:
    """[(resources, max_workers)] of a `ray up` config's available_node_types: the nodes its
    autoscaler may add (a type at 0 nodes now counts; `max_workers: 0` never starts)."""
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        count = spec.get("max_workers", config.get("max_workers", 0))
        types.append((dict(spec.get("resources") or {}), int(count)))
    return types


def autoscaler_node_types() -> tuple[list[tuple[dict, int]] | None, str]:
    """The node types the joined cluster's autoscaler may add, and where they were read:
    the cluster config in the GCS (KubeRay and other autoscalers that report one), else the
    `ray up` config on the head node (read by a task placed there). (None, why) when neither
    exists: the cluster is judged by the nodes it has."""
    import ray

    try:
        from ray._private import state

        config = state.state.get_cluster_config()
    except Exception:
        config = None
    if config is not None and config.node_group_configs:
        types = [(dict(g.resources), int(g.max_count)) for g in config.node_group_configs]
        return types, "the cluster config in its GCS"
    try:
        read = ray.remote(num_cpus=0, resources={HEAD_NODE_RESOURCE: 0.001}, max_retries=0)(_read_bootstrap_config)
        found = ray.get(read.remote(), timeout=60)
    except Exception as e:  # no head-node resource (Ray Client to an old cluster), timeout, ...
        return None, f"could not read the autoscaler config ({type(e).__name__})"
    if found is None:
        return None, "no autoscaler config"
    return node_types_from_cluster_yaml(found), f"{BOOTSTRAP_CONFIG} on the head node"


def _read_bootstrap_config() -> dict | None:
    """Runs on the head node: the `ray up` cluster config the autoscaler runs with, if any."""
    path = os.path.expanduser(BOOTSTRAP_CONFIG)
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def check_fits(num_workers: int, resources_per_worker: dict, flags: str, extra: dict | None = None) -> None:
    """UserError (one line, naming `flags`) when the joined cluster can never run `num_workers` x
    `resources_per_worker` (plus one `extra` bundle, e.g. a Tune trial's driver): judged against
    its nodes' total resources plus the node types its autoscaler may add, so a GPU type with
    max_workers > 0 counts even at 0 nodes. A job that could run later waits (Ray's own message
    says for what), instead of failing; so does a job on a cluster whose autoscaler's node types
    cannot be read (one warning says so): only what is known to rule the job out is refused."""
    from fer_dist.errors import UserError

    choice = _joined.get("choice")
    checked = _joined.setdefault("checked", set())
    key = (num_workers, tuple(sorted(resources_per_worker.items())), tuple(sorted((extra or {}).items())))
    if key in checked:
        return
    nodes = _alive_nodes()
    bundles = [dict(resources_per_worker) for _ in range(num_workers)] + ([dict(extra)] if extra else [])
    if fits(bundles, nodes):
        checked.add(key)
        return
    types, source = (None, "a private cluster") if choice is None or choice.private else autoscaler_node_types()
    if types and fits(bundles, nodes, types):
        log.info("Ray: the cluster's autoscaler (%s) must add nodes for this job; waiting for them", source)
        checked.add(key)
        return
    if types is None and choice is not None and not choice.private:  # cannot know: wait, do not refuse
        log.warning(
            "Ray: the cluster at %s has %s on %d node(s), not enough for %d worker(s) x {%s} now, and its autoscaler's "
            "node types are unknown (%s): waiting for nodes to join",
            _joined["where"],
            describe_resources(_sum_resources(nodes)),
            len(nodes),
            num_workers,
            describe_resources(resources_per_worker),
            source,
        )
        checked.add(key)
        return
    if types:
        adds = [f"{'any number of' if n < 0 else n} x {{{describe_resources(r)}}}" for r, n in types if n]
        offer = f"; its autoscaler ({source}) adds at most {', '.join(adds) or 'no nodes'}"
    else:
        offer = f", and no autoscaler node types ({source})"
    if choice is None or choice.private:
        where, hint = "a private local Ray cluster", " (pass --address to use another cluster)"
    else:
        where, hint = f"the Ray cluster at {_joined['where']}", ""
    raise UserError(
        f"{flags}: {where} can never run {num_workers} worker(s) x {{{describe_resources(resources_per_worker)}}}: "
        f"it has {describe_resources(_sum_resources(nodes))} on {len(nodes)} node(s){offer}{hint}"
    )


def worker_resources(cpus_per_worker: float, gpus_per_worker: float) -> dict:
    """A Train worker's resource request (`make_trainer`'s ScalingConfig)."""
    return {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}


def train_flags(workers, gpus_per_worker: float) -> str:
    """The flags of jobs/train.py that ask for these workers, as an error names them."""
    return f"--workers {workers}" + (f" --gpus-per-worker {gpus_per_worker:g}" if gpus_per_worker else "")


def quiet_ray_loggers() -> None:
    """Ray `worker_process_setup_hook`: runs in every Ray worker process of the job, before its
    tasks: TensorFlow's start-up banners quieted (`logs.quiet_tensorflow_import`), Ray's
    chatter muted (`logs.quiet_ray_chatter`), and RAY_ADDRESS set to this worker's own cluster,
    so that Ray's State API clients in it (Train's PlacementGroupCleaner) never pick another
    cluster on the same host (a traceback, or a query to the wrong cluster)."""
    from fer_dist import logs

    logs.quiet_tensorflow_import()
    logs.quiet_ray_chatter()
    address = _gcs_address()
    if address:
        os.environ["RAY_ADDRESS"] = address


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
    """The TensorflowTrainer for one run; `tune.py` calls this for every trial (with
    `record_workers`, so that `stop_run` can end it). `fence`: the lease its writes are fenced by."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from fer_dist.errors import UserError

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
    return TensorflowTrainer(
        train_loop_per_worker,
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
    address: str | None = None,
    fence: exclusive.Fence | None = None,
) -> dict:
    """Trains on Ray (the cluster of `ensure_ray(address)`); returns the final metrics that rank 0
    wrote to `<storage>/<name>/metrics.json`. A worker's UserError (bad data, a lost lease)
    ends the job as that one error."""
    import json

    workers = num_workers if isinstance(num_workers, Workers) else Workers.parse(num_workers)
    ensure_ray(address)
    check_fits(workers.min, worker_resources(1.0, gpus_per_worker), train_flags(workers, gpus_per_worker))
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
        todo += list((getattr(e, "worker_failures", None) or {}).values())
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


# ---------------------------------------------------------------------------------
# Stopping a Tune trial's Train run (ray-project/ray#54305). When Tune stops a Train V2 trial,
# the placement group of its worker group is not released and the next trial waits forever;
# and its workers, which report asynchronously, go on training until Ray kills them. Each
# trial's workers record their actor ids (rank 0 also the placement group) in Ray's KV store;
# `tune.StopTrialTrainRuns` calls `stop_run` when Tune completes or stops a trial: it removes
# exactly that group (which kills its workers) and waits until every worker has died, inside
# Tune's event loop, so no other trial is started before the run has ended. Safe with
# concurrent trials: other trials' groups are never touched. Trials' Train runs do not retry
# on their own (`max_failures=0`); Tune retries the trial, which resumes from its checkpoints.
# ---------------------------------------------------------------------------------
RUN_KEY = "fer_dist/run/{run}/"


def record_worker(run_name: str, rank: int) -> None:
    """Called by every Train worker of a trial: remember its actor (and rank 0 the group)."""
    import ray
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        return
    prefix = RUN_KEY.format(run=run_name)
    actor = ray.get_runtime_context().get_actor_id()
    internal_kv._internal_kv_put(f"{prefix}worker/{rank}", actor, overwrite=True)
    pg = ray.util.get_current_placement_group()
    if rank == 0 and pg is not None:
        internal_kv._internal_kv_put(f"{prefix}pg", pg.id.hex(), overwrite=True)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stop_run(run_name: str, timeout_s: float = 60.0) -> float | None:
    """Ends a trial's Train run: removes its worker placement group if it is still there,
    then waits until every recorded worker is dead. Returns the seconds waited (None when the
    run recorded nothing: it never started)."""
    import time

    import ray
    from ray.experimental import internal_kv
    from ray.util.placement_group import PlacementGroup

    prefix = RUN_KEY.format(run=run_name)
    keys = [_text(k) for k in internal_kv._internal_kv_list(prefix)]
    if not keys:
        return None
    values = {k: _text(internal_kv._internal_kv_get(k)) for k in keys}
    start = time.monotonic()
    pg_id = values.pop(f"{prefix}pg", None)
    if pg_id and ray.util.placement_group_table().get(pg_id, {}).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        log.info("%s: removed its worker placement group (ray-project/ray#54305)", run_name)
    alive = set(values.values())
    while alive and time.monotonic() - start < timeout_s:
        alive = {a for a in alive if actor_state(a) not in ("DEAD", None)}
        if alive:
            time.sleep(0.1)
    for key in keys:
        internal_kv._internal_kv_del(key)
    waited = time.monotonic() - start
    if alive:
        log.warning("%s: %d Train worker(s) still alive after %.0f s", run_name, len(alive), waited)
    return waited


def actor_state(actor_id: str) -> str | None:
    """ALIVE, DEAD, ... from the GCS actor table (the public State API needs the dashboard,
    which `ray[train,tune]` does not install)."""
    from ray._private import state

    return state.actors(actor_id=actor_id).get("State")
