"""A local Ray cluster derived from cluster.yaml: fake nodes, a real autoscaler, one machine.

    python -m fer_dist.cluster local --up             # prints: export RAY_ADDRESS=IP:PORT RAY_AUTH_MODE=disabled
    RAY_ADDRESS=IP:PORT RAY_AUTH_MODE=disabled python jobs/train.py --workers 2 --storage gs://...
    python -m fer_dist.cluster local --status         # nodes, their types and raylet PIDs
    python -m fer_dist.cluster local --down           # stops exactly the processes of this cluster
    python -m fer_dist.cluster local --print-config   # the derived autoscaler config (YAML)

`local_config` reads cluster.yaml's `available_node_types` and keeps their names, turns every
worker type into fake nodes with the CPU count of the file capped to `cpus_per_node`, its
`min_workers`/`max_workers` capped to `max_workers` (0 stays 0: a disabled type stays disabled),
and its GPUs into the custom resource `fake_GPU` (same count) when this machine has no GPU. The
head keeps its type name and its CPU count (capped likewise), so CPU-only training workers
(`--gpus-per-worker 0`) can take the head's one CPU, exactly as on GCP. The provider is Ray's
`fake_multinode`: the head runs Ray's autoscaler (monitor), which starts a separate raylet per
worker node when work needs one and removes it after `idle_timeout_minutes` idle.

`up` starts the head with `ray start --head` in its own session, with its own RAY_TMPDIR (a short
/tmp/rc_XXXXXX: unix socket paths are limited to 107 bytes), its own free ports, token
authentication off (RAY_AUTH_MODE=disabled: Ray 2.60 turns tokens on when ~/.ray/auth_token
exists), and writes a state file. `down` reads the state file and stops exactly the processes of
this cluster: those that carry its marker variable (every cluster process inherits it, the fake
nodes' raylets and workers included) or that it recorded at start (PID and start time), SIGTERM
then SIGKILL. Never `ray stop`, which would stop every Ray cluster on the machine.

Jobs join with RAY_ADDRESS (`ray.init()` honours it) and RAY_AUTH_MODE=disabled in their
environment (`LocalCluster.env()`). All nodes share one filesystem, so give runs a `gs://`
storage (the GCS emulator in tests): a local directory would hide what a real cluster breaks.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DEFAULT_CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
FAKE_GPU = "fake_GPU"  # what a GPU of cluster.yaml becomes on a machine without one
MARKER = "FER_DIST_LOCAL_CLUSTER"  # env var carried by every process of a local cluster: its tmpdir
NODE_ID_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # a fake node's id, in its raylet's (and workers') env
NODE_TYPE_ENV = "RAY_NODE_TYPE_NAME"
HEAD_NODE_ID = "f" * 51 + "00000"  # the fake head's node id (Ray's FAKE_HEAD_NODE_ID)
STATE_ENV = "FER_DIST_CLUSTER_STATE"  # the default state file, e.g. one per terminal or project
USER_STATE = os.path.join(tempfile.gettempdir(), f"fer_dist_local_cluster_{os.getuid()}.json")
DEFAULT_STATE = os.environ.get(STATE_ENV) or USER_STATE
AUTH_OFF = {"RAY_AUTH_MODE": "disabled"}
OBJECT_STORE_BYTES = 256 * 1024**2  # per node: small, the jobs pass little through it
# Every key a cluster config has: the autoscaler (monitor) indexes them and dies on a KeyError.
_EMPTY_KEYS = {
    "docker": {},
    "auth": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


def machine_gpus() -> int:
    """GPUs this machine has (nvidia-smi's list; 0 without it)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_config(
    cluster_yaml: str | os.PathLike = DEFAULT_CLUSTER_YAML,
    *,
    cpus_per_node: int = 1,
    max_workers: int = 2,
    idle_timeout_minutes: float = 1.0,
    gpu_resource: str | None = None,
    object_store_bytes: int = OBJECT_STORE_BYTES,
) -> dict:
    """The fake-node autoscaler config derived from cluster.yaml (without the GCS address,
    which `up` adds). `gpu_resource`: what a node type's GPUs become, default `GPU` on a
    machine with GPUs and `fake_GPU` (a custom resource) on one without."""
    with open(cluster_yaml) as f:
        source = yaml.safe_load(f)
    if gpu_resource is None:
        gpu_resource = "GPU" if machine_gpus() else FAKE_GPU
    head = source["head_node_type"]
    types = {}
    for name, node_type in source["available_node_types"].items():
        resources = {}
        for key, value in node_type.get("resources", {}).items():
            if key == "CPU":
                resources["CPU"] = min(int(value), cpus_per_node)
            elif key == "GPU":
                if value:
                    resources[gpu_resource] = int(value)
            else:
                resources[key] = value
        derived = {"resources": resources, "node_config": {}}
        if name == head:
            derived["max_workers"] = 0
        else:
            derived["resources"]["object_store_memory"] = object_store_bytes
            top = min(int(node_type.get("max_workers", source.get("max_workers", 0))), max_workers)
            derived["max_workers"] = top
            derived["min_workers"] = min(int(node_type.get("min_workers", 0)), top)
        types[name] = derived
    config = {
        **copy.deepcopy(_EMPTY_KEYS),
        "cluster_name": f"{source['cluster_name']}-local",
        "max_workers": min(int(source.get("max_workers", 0)), max_workers * max(1, len(types) - 1)),
        "upscaling_speed": source.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            # Ray's fake_multinode provider, with the head tagged with cluster.yaml's head type.
            "type": "external",
            "module": "fer_dist.cluster.FakeNodeProvider",
            "head_node_type": head,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": types,
        "head_node_type": head,
    }
    return config


def _fake_node_provider_class():
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
    from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

    class FakeNodeProvider(FakeMultiNodeProvider):
        """Ray's fake multi-node provider (each worker node a raylet of its own on this machine),
        except that the head carries the config's head type: Ray's tags it `ray.head.default`,
        and the autoscaler, not finding a head of type `head_node_type`, starts one as a worker."""

        def __init__(self, provider_config, cluster_name):
            super().__init__(provider_config, cluster_name)
            head_type = provider_config.get("head_node_type")
            if head_type:
                self._nodes[self._head_node_id]["tags"][TAG_RAY_USER_NODE_TYPE] = head_type

        def non_terminated_nodes(self, tag_filters):
            """As a cloud lists its VMs: a node whose raylet died (`kill_node`, a lost VM) is
            gone, so the autoscaler can replace it within max_workers (Ray's fake provider
            would keep it as a pending node for ever)."""
            with self.lock:
                for node_id, entry in list(self._nodes.items()):
                    node = entry.get("node")
                    raylet = getattr(node, "all_processes", {}).get("raylet") if node is not None else None
                    if raylet and raylet[0].process.poll() is not None:
                        self._nodes.pop(node_id)
                        node.kill_all_processes(check_alive=False, allow_graceful=False)
            return super().non_terminated_nodes(tag_filters)

    return FakeNodeProvider


def __getattr__(name: str):
    """`fer_dist.cluster.FakeNodeProvider`, which the autoscaler loads by name; built on first
    use so that importing this module does not import Ray."""
    if name == "FakeNodeProvider":
        return _fake_node_provider_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class LocalCluster:
    """What `up` started; saved as JSON in `state_path` so that `down` works from anywhere."""

    address: str  # the GCS address, IP:PORT: the value of RAY_ADDRESS
    tmpdir: str  # its RAY_TMPDIR (sessions, logs, sockets, the derived config)
    state_path: str
    config_path: str
    dashboard_port: int
    session_id: int  # the session `ray start --head` ran in
    processes: list[tuple[int, float]]  # (pid, create_time) of the head's processes at start

    def env(self) -> dict[str, str]:
        """The environment a job needs to join this cluster."""
        return {"RAY_ADDRESS": self.address, **AUTH_OFF}

    def save(self) -> None:
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, state_path: str = DEFAULT_STATE) -> LocalCluster:
        with open(state_path) as f:
            data = json.load(f)
        data["processes"] = [tuple(p) for p in data["processes"]]
        return cls(**data)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    ray = shutil.which("ray")
    if ray is None:
        raise RuntimeError("the `ray` command is not on PATH (pip install 'ray[train,tune]')")
    return [ray]


def up(
    cluster_yaml: str | os.PathLike = DEFAULT_CLUSTER_YAML,
    *,
    state_path: str = DEFAULT_STATE,
    timeout_s: float = 120.0,
    **derive,
) -> LocalCluster:
    """Starts the head of the local cluster (the autoscaler adds worker nodes on demand)."""
    import ray

    if os.path.exists(state_path):
        raise RuntimeError(
            f"{state_path} exists: a local cluster is up (`--status`/`--down` with this state file first, "
            f"or give another one: --state FILE or {STATE_ENV}=FILE)"
        )
    config = local_config(cluster_yaml, **derive)
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    ip = ray.util.get_node_ip_address()
    port = _free_port()
    config["provider"]["gcs_address"] = f"{ip}:{port}"
    tmpdir = tempfile.mkdtemp(prefix="rc_", dir="/tmp")
    config_path = os.path.join(tmpdir, "autoscaler.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    dashboard_port = _free_port()
    env = dict(
        os.environ,
        RAY_TMPDIR=tmpdir,
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_USAGE_STATS_ENABLED="0",
        **{MARKER: tmpdir},
        **AUTH_OFF,
    )
    env.pop("RAY_ADDRESS", None)
    extra = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
    cmd = [
        *_ray_cli(),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={tmpdir}",
        f"--num-cpus={int(head.get('CPU', 0))}",
        f"--num-gpus={int(head.get('GPU', 0))}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--autoscaling-config={config_path}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
    ]
    if extra:
        cmd.append(f"--resources={json.dumps(extra)}")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    cluster = LocalCluster(
        address=f"{ip}:{port}",
        tmpdir=tmpdir,
        state_path=state_path,
        config_path=config_path,
        dashboard_port=dashboard_port,
        session_id=proc.pid,
        processes=[],
    )
    cluster.save()  # before anything can fail: `down` can always clean up
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        down(state_path)
        raise RuntimeError(f"`ray start --head` did not return in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        down(state_path)
        raise RuntimeError(f"`ray start --head` failed ({proc.returncode}):\n{out[-3000:]}")
    published = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from fer_dist.cluster import publish_node_types as p; p({cluster.address!r}, {config_path!r})",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    cluster.processes = [(p.pid, p.create_time()) for p in cluster_processes(cluster)]
    cluster.save()
    if published.returncode != 0:
        down(state_path)
        raise RuntimeError(f"could not publish the node types:\n{published.stderr[-3000:]}")
    return cluster


def publish_node_types(address: str, config_path: str) -> None:
    """Writes the node types of the autoscaler config (the head as one node) to the GCS as its cluster config
    (`ray._private.state.state.get_cluster_config()`), as Ray's v2 autoscaler reports it (the
    v1 autoscaler that runs fake nodes does not): what Ray and `fer_dist.ray_cluster` read to know
    which nodes the autoscaler may add (its `max_count` per type) before any is running."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2

    with open(config_path) as f:
        config = yaml.safe_load(f)
    message = autoscaler_pb2.ClusterConfig()
    for name, node_type in config["available_node_types"].items():
        head = name == config["head_node_type"]  # counted once: Ray Train's max resources include it
        group = message.node_group_configs.add()
        group.name = name
        group.min_count = 1 if head else int(node_type.get("min_workers", 0))
        group.max_count = 1 if head else int(node_type.get("max_workers", 0))
        for key, value in node_type["resources"].items():
            group.resources[key] = int(value)
    client = ray._raylet.GcsClient(address=address)
    client.internal_kv_put(
        ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(),
        message.SerializeToString(),
        True,
        ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode(),
    )


def environ(pid: int) -> dict[str, str]:
    """A process's environment as /proc has it. (psutil's `environ()` returns {} for Ray's agents,
    whose process titles overwrite the start of the block.)"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if b"=" in entry)
    return {k: v for k, _, v in pairs}


def _is_ours(proc, cluster: LocalCluster, recorded: set) -> bool:
    import psutil

    try:
        if (proc.pid, proc.create_time()) in recorded:
            return True
        return environ(proc.pid).get(MARKER) == cluster.tmpdir
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def cluster_processes(cluster: LocalCluster) -> list:
    """Every live process of this cluster (psutil.Process), found by its marker or its record,
    and the agents of its raylets (started without the marker; they name their raylet's PID)."""
    import psutil

    recorded = {(pid, t) for pid, t in cluster.processes}
    procs = [p for p in psutil.process_iter() if p.pid != os.getpid() and _is_ours(p, cluster, recorded)]
    raylets = {str(p.pid) for p in procs if _name(p) == "raylet"}
    known = {p.pid for p in procs}
    return procs + [p for p in psutil.process_iter() if p.pid not in known and _raylet_pid(p.pid) in raylets]


def _name(proc) -> str:
    try:
        return proc.name()
    except Exception:  # gone meanwhile
        return ""


def _raylet_pid(pid: int) -> str | None:
    return environ(pid).get("RAY_RAYLET_PID")


@dataclasses.dataclass(frozen=True)
class FakeNode:
    node_id: str  # hex, as Ray and `ray drain-node` know it
    node_type: str  # a type name of cluster.yaml
    raylet_pid: int


def fake_nodes(cluster: LocalCluster) -> list[FakeNode]:
    """The worker nodes the autoscaler started that are still running (their raylets)."""
    import psutil

    found = []
    for p in cluster_processes(cluster):
        try:
            if p.name() != "raylet":
                continue
            env = environ(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get(NODE_ID_ENV, HEAD_NODE_ID) != HEAD_NODE_ID:
            found.append(FakeNode(env[NODE_ID_ENV], env.get(NODE_TYPE_ENV, ""), p.pid))
    return sorted(found, key=lambda n: n.node_id)


def node_of(pid: int) -> str | None:
    """The node id of the node a cluster process runs on (HEAD_NODE_ID for the head; None:
    not a cluster process, or gone)."""
    import psutil

    try:
        return environ(pid).get(NODE_ID_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def kill_node(cluster: LocalCluster, node_id: str) -> int:
    """A lost VM: SIGKILLs the raylet of a fake node, then every other process of that node (its
    workers and agents, which on one machine would outlive their raylet, go on training and
    write as a zombie chief); returns the raylet's PID."""
    import psutil

    node = next((n for n in fake_nodes(cluster) if n.node_id == node_id), None)
    if node is None:
        raise LookupError(f"no running fake node {node_id}")
    doomed = [p for p in cluster_processes(cluster) if environ(p.pid).get(NODE_ID_ENV) == node_id]
    os.kill(node.raylet_pid, signal.SIGKILL)
    for p in doomed:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return node.raylet_pid


def drain_node(
    cluster: LocalCluster, node_id: str, *, reason: str = "DRAIN_NODE_REASON_PREEMPTION", deadline_s: int = 20
) -> None:
    """Tells Ray the node will go away in `deadline_s` (what a Spot preemption notice does):
    Ray Train's preemption watcher sees it on every worker."""
    subprocess.run(
        [
            *_ray_cli(),
            "drain-node",
            f"--address={cluster.address}",
            f"--node-id={node_id}",
            f"--reason={reason}",
            f"--reason-message=fer_dist.cluster.drain_node {node_id}",
            f"--deadline-remaining-seconds={deadline_s}",
        ],
        env=dict(os.environ, **AUTH_OFF),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def down(state_path: str = DEFAULT_STATE, *, grace_s: float = 10.0, keep_tmpdir: bool = False) -> int:
    """Stops every process of the cluster in `state_path` (SIGTERM, then SIGKILL after `grace_s`),
    removes its tmpdir and the state file. Returns how many processes were stopped."""
    import psutil

    try:
        cluster = LocalCluster.load(state_path)
    except FileNotFoundError:
        return 0
    procs = cluster_processes(cluster)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    late: list = []
    # What survived SIGTERM, and what started while stopping (a raylet's workers and agents):
    # SIGKILL, until none is left.
    for _ in range(10):
        left = [p for p in cluster_processes(cluster) if p.is_running()]
        if not left:
            break
        late += [p for p in left if p not in procs]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=grace_s)
    if not keep_tmpdir:
        shutil.rmtree(cluster.tmpdir, ignore_errors=True)
    os.remove(state_path)
    return len(procs) + len(late)


def status(cluster: LocalCluster) -> str:
    lines = [
        f"address {cluster.address} (RAY_TMPDIR {cluster.tmpdir}, state {cluster.state_path})",
        f"{len(cluster_processes(cluster))} processes",
    ]
    lines += [f"node {n.node_id} type {n.node_type} raylet pid {n.raylet_pid}" for n in fake_nodes(cluster)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_dist.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["local"], help="local: fake nodes on this machine")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--up", action="store_true", help="start the cluster and print its RAY_ADDRESS")
    action.add_argument("--down", action="store_true", help="stop every process of the cluster")
    action.add_argument("--status", action="store_true", help="its address, processes and worker nodes")
    action.add_argument("--print-config", action="store_true", help="print the derived autoscaler config")
    parser.add_argument("--cluster-yaml", default=str(DEFAULT_CLUSTER_YAML))
    parser.add_argument(
        "--state", default=DEFAULT_STATE, help=f"the state file (default ${STATE_ENV}, else {USER_STATE})"
    )
    parser.add_argument("--cpus-per-node", type=int, default=1, help="cap on every node's CPUs (default 1)")
    parser.add_argument("--max-workers", type=int, default=2, help="cap on each type's max_workers (default 2)")
    parser.add_argument("--idle-timeout-minutes", type=float, default=1.0)
    args = parser.parse_args(argv)
    derive = dict(
        cpus_per_node=args.cpus_per_node,
        max_workers=args.max_workers,
        idle_timeout_minutes=args.idle_timeout_minutes,
    )
    try:
        return _run(args, derive)
    except (RuntimeError, LookupError, OSError, yaml.YAMLError) as e:  # what a user can act on: one line
        if isinstance(e, OSError) and e.filename:
            message = f"{e.filename}: {e.strerror}"
        else:
            message = str(e).strip().splitlines()[0] if isinstance(e, yaml.YAMLError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _run(args, derive: dict) -> int:
    if args.print_config:
        print(yaml.safe_dump(local_config(args.cluster_yaml, **derive), sort_keys=False), end="")
    elif args.up:
        cluster = up(args.cluster_yaml, state_path=args.state, **derive)
        state = "" if args.state == USER_STATE else f" --state {args.state}"  # also one from the env var
        print(f"local cluster up: {cluster.address}; stop it with `python -m fer_dist.cluster local --down{state}`")
        print("export " + " ".join(f"{k}={v}" for k, v in cluster.env().items()))
    elif args.down:
        if not os.path.exists(args.state):
            print(f"no local cluster ({args.state} does not exist)")
            return 1
        print(f"stopped {down(args.state)} processes")
    else:
        try:
            print(status(LocalCluster.load(args.state)))
        except FileNotFoundError:
            print(f"no local cluster ({args.state} does not exist)")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
