"""Which Ray cluster a job uses, and whether it can ever run the job.

    python jobs/train.py --workers 2                      # a private local cluster of this job's own
    python jobs/train.py --workers 2 --address auto       # the cluster `ray start` made on this machine
    RAY_ADDRESS=10.0.0.2:6379 python jobs/train.py ...    # what `ray job submit` sets

`ensure_ray` connects (one log line: which cluster and its resources) and sets the environment
every Ray worker of the job gets (`worker_env`); `check_fits` refuses only a job that what is
known of the cluster (its nodes, its autoscaler's node types) rules out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import sys

log = logging.getLogger(__name__)

# Environment that Ray workers must share with the driver: where storage is, how long it is
# retried, how much TensorFlow logs. TF_ENABLE_ONEDNN_OPTS is not pushed over what a node's image
# sets (its best value depends on the node's CPU): fer_dist's default applies where it sets none.
PROPAGATED_ENV = (
    "STORAGE_EMULATOR_HOST",
    "TF_CPP_MIN_LOG_LEVEL",
    "GOOGLE_CLOUD_PROJECT",
    "FER_DIST_STORAGE_RETRY_S",
    "FER_DIST_VERSION_CHECK",
    "FER_DIST_DATA_CACHE",
    "FER_DIST_HEAP_PAD",
)
# Set in every Ray worker of a job: Train V2 would send each print() both to stdout and to its
# logger (the final report twice); the chief's prints go to stdout once.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


# glibc malloc's settings for every Ray worker process, read when it starts: tensors under 32 MB
# come from malloc's heaps (not mapped afresh each), freed memory is kept up to 1 GB, and each
# heap grows with 64 MB to spare. `import fer_dist` pads the heap at run time (`_pad_the_heap`),
# which is enough in one process but not in a Ray worker: there the seed recipe's 2-worker step
# faulted in ~42k fresh pages (~170 MB) and took 397.6 ms, against ~160 faults and 314.6 ms with
# these (`python benchmarks/mwms_pair.py --ray`, benchmarks/mwms_pair_ray*.json). Not set with FER_DIST_HEAP_PAD=0; a
# driver's own GLIBC_TUNABLES is sent instead (empty: glibc's defaults); ignored off glibc.
HEAP_TUNABLES = (
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864"
)


def worker_env() -> dict:
    """The environment variables every Ray worker of a job gets."""
    env = dict(WORKER_ENV, **{k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ})
    if "GLIBC_TUNABLES" in os.environ:  # the user's own, also to workers that do not inherit it
        env["GLIBC_TUNABLES"] = os.environ["GLIBC_TUNABLES"]
    elif os.environ.get("FER_DIST_HEAP_PAD") != "0":
        env["GLIBC_TUNABLES"] = HEAP_TUNABLES
    return env


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
    runtime_env = {"worker_process_setup_hook": "fer_dist.ray_cluster.quiet_ray_loggers", "env_vars": env}
    kwargs = {"num_cpus": num_cpus} if choice.private else {}
    # Ray's INFO lines ("Started a local Ray instance.", Tune's bookkeeping) are replaced by the
    # line below; its warnings and errors are kept.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    if choice.private:  # our own cluster keeps Ray's default token auth; no notice about opting out
        auth_log.setLevel(logging.ERROR)
    try:
        init = functools.partial(
            ray.init,
            address=choice.address,
            runtime_env=runtime_env,
            log_to_driver=True,
            logging_level=logging.WARNING,
            **kwargs,
        )
        if choice.private:
            start_private(init)
        else:
            init()
    except ConnectionError as e:
        from fer_dist.errors import UserError

        raise UserError(f"{_how(choice)}: cannot connect to a Ray cluster: {e}") from None
    finally:
        auth_log.setLevel(level)
    route_worker_logs()
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


STARTUP_TIMEOUT = "timed out during startup"  # Ray's words when a new node's raylet does not register in 30 s
START_ATTEMPTS = 2


def start_private(init, attempts: int = START_ATTEMPTS) -> None:
    """Starts a private cluster with `init` (ray.init, bound). Ray gives a new node's raylet a fixed 30 s
    to register and then raises, leaving the processes it started running; on a busy machine (or when
    a port it picked was taken meanwhile) that happens once in a while. The processes of a start that
    timed out are stopped and the start is tried again; after `attempts` such starts, one UserError."""
    for attempt in range(1, attempts + 1):
        before = {p.pid for p in _children()}
        try:
            return init()
        except Exception as e:
            if STARTUP_TIMEOUT not in str(e):
                raise
            _stop([p for p in _children() if p.pid not in before])
            log.warning("Ray: the private cluster did not start (attempt %d of %d): %s", attempt, attempts, e)
    from fer_dist.errors import UserError

    raise UserError(
        f"the job's private Ray cluster did not start: its raylet did not register within Ray's 30 s, "
        f"{attempts} times (a busy machine?); try again, or start one with `ray start --head` and pass --address auto"
    )


def _children() -> list:
    """This process's descendants (psutil.Process objects: they know a reused PID is not theirs)."""
    import psutil

    return psutil.Process().children(recursive=True)


def _stop(procs: list, grace_s: float = 5.0) -> None:
    """Stops these processes of ours (what a failed ray.init left): SIGTERM, then SIGKILL after `grace_s`."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def leave() -> None:
    """Leaves the Ray cluster this process joined (and stops it when it was the job's own) now,
    not at exit: Ray's exit hook waits for its workers' last forwarded lines and prints them, so
    a job that ends with `error: ...` calls this first and its error stays the last line."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        try:
            ray.shutdown()
        except Exception as e:  # leaving is best effort: the job's own error matters more
            log.debug("Ray: leaving the cluster failed: %s", e)
        _joined.clear()


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


# Lines of Ray's own processes that tell a user nothing they can act on.
RAY_NOISE = re.compile(
    r"PYTHON worker processes have been started on node"  # raylet: startup concurrency (trial actors)
    r"|Actor with class name: 'PreemptionWatcher' .*max_restarts"  # Train's actor, per trial
    r"|Requesting resources: \{|Attempting to start training worker group"  # Train's controller
    r"|^Started training worker group of size|^- \(ip=\S+, pid=\d+\) world_rank="
)


def route_worker_logs() -> None:
    """What Ray's workers and raylets print reaches this driver's stderr, never its stdout (which
    carries the job's results: Tune's table), every line as printed (no "[repeated Nx across
    cluster]" merging: trials' lines differ by name), less RAY_NOISE. Replaces Ray's printer of
    forwarded lines (`print_to_stdstream`, also its driver handler `ray_print_logs`); a Ray
    without them keeps its own."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    needed = ("print_to_stdstream", "print_worker_logs", "_should_ignore_worker_log_prefix", "global_worker")
    if not all(hasattr(ray_worker, name) for name in needed):
        return

    def print_lines(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not RAY_NOISE.search(line)]
        if lines:
            ray_worker.print_worker_logs(dict(data, lines=lines), sys.stderr, ignore_prefix)

    ray_worker.print_to_stdstream = print_lines  # raylet and autoscaler messages (listen_error_messages)
    if any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", lambda data: print_lines(data, ignore_prefix))


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
