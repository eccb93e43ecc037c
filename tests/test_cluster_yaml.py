"""cluster.yaml (the GCP Ray cluster launcher config) checked offline with Ray's own validation.

`ray up` does `prepare_config` (merge with ray/autoscaler/gcp/defaults.yaml, merge setup commands,
fill per-type min/max workers) and then `validate_config` (jsonschema against
ray/autoscaler/ray-schema.json plus a few consistency checks) before it contacts GCP; this test
runs exactly those two steps and nothing that needs credentials or a network. The other tests
check what the file promises: Spot GPU workers whose shutdown script drains their Ray node, and
one prebuilt image (Dockerfile) whose tag names pyproject.toml's exact Ray/TensorFlow pins.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")  # a Ray dependency; validate_config needs it

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from fer_dist import versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SPOT = {
    "provisioningModel": "SPOT",
    "instanceTerminationAction": "DELETE",
    "automaticRestart": False,
    "onHostMaintenance": "TERMINATE",
}
GCE_SPOT_NOTICE_S = 30  # a Spot VM's shutdown script has about this long before the VM is off
STORAGE_SCOPES = {
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/devstorage.full_control",
    "https://www.googleapis.com/auth/cloud-platform",
}


def _load() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _prepare_and_validate(config: dict) -> dict:
    """What `ray up` does with the file before its first GCP call."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return _load()


@pytest.fixture(scope="module")
def config(raw) -> dict:
    return _prepare_and_validate(raw)


def _gpu_count(node_config: dict) -> int:
    return sum(
        int(a.get("acceleratorCount", 0))
        for a in node_config.get("guestAccelerators", [])
        if str(a.get("acceleratorType", "")).startswith("nvidia-tesla-")
    )


def _gpu_types(config: dict) -> dict:
    return {name: nt for name, nt in config["available_node_types"].items() if _gpu_count(nt["node_config"]) > 0}


def test_raw_file_matches_ray_schema(raw):
    # The file as written (before defaults are filled in) already satisfies the schema.
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(raw, json.loads(schema_path.read_text()))


def test_provider_is_gcp_with_placeholders(config):
    provider = config["provider"]
    assert provider["type"] == "gcp"
    for key in ("project_id", "region", "availability_zone"):
        assert isinstance(provider.get(key), str) and provider[key], key
    assert provider["availability_zone"].startswith(provider["region"] + "-")


def test_head_node_has_no_gpu_but_some_cpu(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert _gpu_count(head["node_config"]) == 0
    # Tune's trial actors ask for a fraction of a CPU and must fit on the (on-demand) head.
    assert head["resources"].get("CPU", 0) >= 1
    assert head["max_workers"] == 0  # filled in by prepare_config, as `ray up` does


def test_gpu_worker_types(config):
    gpu_types = _gpu_types(config)
    assert {"gpu_t4", "gpu_a100"} <= set(gpu_types)
    assert config["head_node_type"] not in gpu_types
    for name, nt in gpu_types.items():
        node_config = nt["node_config"]
        assert nt["resources"].get("GPU") == _gpu_count(node_config), name
        assert nt["resources"].get("CPU", 0) >= 1, name
        assert nt["min_workers"] == 0, name  # scale to zero when idle
        assert 0 <= nt["max_workers"] <= config["max_workers"], name
        # GPU VMs cannot live-migrate.
        assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE", name
        # A Deep Learning VM image, and the driver requested.
        image = node_config["disks"][0]["initializeParams"]["sourceImage"]
        assert image.startswith("projects/deeplearning-platform-release/global/images/family/"), name
        items = {i["key"]: i["value"] for i in node_config["metadata"]["items"]}
        assert items.get("install-nvidia-driver") == "True", name
    t4 = gpu_types["gpu_t4"]["node_config"]
    assert t4["machineType"] == "n1-standard-8"
    assert t4["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    a100 = gpu_types["gpu_a100"]["node_config"]
    assert a100["machineType"] == "a2-highgpu-1g"
    assert a100["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-a100", "acceleratorCount": 1}]
    assert any(nt["max_workers"] > 0 for nt in gpu_types.values())


def test_workers_can_write_to_cloud_storage(config):
    for name, nt in _gpu_types(config).items():
        accounts = nt["node_config"].get("serviceAccounts", [])
        scopes = {s for a in accounts for s in a.get("scopes", [])}
        assert scopes & STORAGE_SCOPES, f"{name}: no Cloud Storage scope"
        assert all(a["email"].endswith(".iam.gserviceaccount.com") for a in accounts), name


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _pinned_versions() -> dict[str, str]:
    """{"ray": X, "tensorflow": Y}: pyproject's exact pins (what every other place must name)."""
    pinned = versions.pins(_pyproject()["dependencies"])
    found = {name: versions.exact_version(req) for name, req in pinned.items()}
    assert set(found) == {"ray", "tensorflow"} and all(found.values()), f"not pinned exactly: {pinned}"
    return found


def test_pyproject_pins_ray_and_tensorflow_exactly():
    project = _pyproject()
    pinned = versions.pins(project["dependencies"])
    assert str(pinned["ray"]) == f"ray[train,tune]=={_pinned_versions()['ray']}"
    # The gpu extra installs the same TensorFlow, with its CUDA libraries.
    (gpu,) = project["optional-dependencies"]["gpu"]
    assert gpu == f"tensorflow[and-cuda]=={_pinned_versions()['tensorflow']}"


def test_cluster_yaml_names_the_pinned_versions(config):
    """The image tag names the project version and the pins, and every `ray[...]==X` or
    `tensorflow...==X` in the file (the commented install-at-boot alternative) names them too."""
    pinned = _pinned_versions()
    image = config["docker"]["image"]
    assert image.endswith(f":{_pyproject()['version']}-ray{pinned['ray']}-tf{pinned['tensorflow']}"), image
    text = CLUSTER_YAML.read_text()
    ray_pins = re.findall(r"ray\[[a-z,-]+\]==([0-9][0-9a-z.]*[0-9a-z])", text)
    tf_pins = re.findall(r"tensorflow(?:\[[a-z,-]+\])?==([0-9][0-9a-z.]*[0-9a-z])", text)
    assert ray_pins and set(ray_pins) == {pinned["ray"]}, ray_pins
    assert set(tf_pins) == {pinned["tensorflow"]}, tf_pins


def test_nodes_run_the_prebuilt_image(raw, config):
    docker = config["docker"]
    assert docker["image"].startswith("us-central1-docker.pkg.dev/YOUR_PROJECT_ID/")
    assert docker["container_name"] and docker["pull_before_run"] is True
    # The GPU workers get the GPUs; the head (no GPU, no driver) could not start with --gpus.
    assert "--gpus all" in docker["worker_run_options"]
    assert not any("--gpus" in o for o in docker.get("run_options", []) + docker.get("head_run_options", []))
    # On the VM, before the container: Docker can pull from the image's registry, and a GPU VM
    # waits for its driver.
    registry = docker["image"].split("/")[0]
    init = " ; ".join(config["initialization_commands"])
    assert f"gcloud auth configure-docker {registry}" in init
    assert "nvidia-smi" in init and "0x10de" in init
    # Nothing is pip-installed at boot: each node checks the image against the deployed pins.
    for key in ("head_setup_commands", "worker_setup_commands"):  # merged by prepare_config
        cmds = " ; ".join(config[key])
        assert "cd ~/fer_dist && python3 -m fer_dist.versions" in cmds, key
        assert "pip" not in cmds and "install" not in cmds, f"{key} installs at boot: {cmds}"
    # Written out as empty: left out, Ray's GCP defaults would pip-install a client on the head.
    assert raw["head_setup_commands"] == [] and raw["worker_setup_commands"] == []
    assert "." in config["file_mounts"].values()


def test_dockerfile_installs_the_pinned_project(config):
    text = DOCKERFILE.read_text()
    # Its build/push instructions name cluster.yaml's image (after the project id).
    assert config["docker"]["image"].split("/", 2)[2] in text
    assert re.search(r"^FROM python:", text, re.M)
    assert 'pip install ".[gpu]" "ray[default]"' in text  # the pins come from pyproject.toml
    # The head's autoscaler needs the Compute Engine client: in the image, not installed at boot.
    assert re.search(r'pip install "\.\[gpu\]" "ray\[default\]" google-api-python-client', text)
    assert "rsync" in text and "openssh-client" in text  # what the cluster launcher needs inside
    assert "NVIDIA_VISIBLE_DEVICES=all" in text
    assert text.rstrip().endswith("python -m fer_dist.versions")  # the build fails on a mismatch
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "**/.git" in ignored and "runs" in ignored


def test_gpu_workers_are_spot_by_default(config):
    for name, nt in _gpu_types(config).items():
        scheduling = nt["node_config"]["scheduling"]
        assert scheduling == SPOT, name
        assert "preemptible" not in scheduling, name  # the legacy flag: one or the other
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert head.get("scheduling", {}).get("provisioningModel", "STANDARD") == "STANDARD"  # on-demand


def _shutdown_script(node_config: dict) -> str:
    items = {i["key"]: i["value"] for i in node_config["metadata"]["items"]}
    return items["shutdown-script"]


def test_gpu_workers_drain_their_node_on_shutdown(config):
    """A Spot VM's shutdown script runs `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`
    with a deadline inside GCE's notice, for the node id the worker saved when Ray started, in
    the container (or as the ssh user without one); the flags are those of this Ray's CLI."""
    from ray.scripts.scripts import drain_node

    options = {opt: p for p in drain_node.params for opt in p.opts}
    saved = " ".join(config["worker_start_ray_commands"])
    assert "get_node_id()" in saved and "> /tmp/fer_dist_node_id" in saved
    for name, nt in _gpu_types(config).items():
        script = _shutdown_script(nt["node_config"])
        assert script.startswith("#!/bin/bash\n"), name
        (command,) = re.findall(r"ray drain-node [^']*", script)
        assert "--reason DRAIN_NODE_REASON_PREEMPTION" in command, name
        assert '--node-id "$(cat /tmp/fer_dist_node_id)"' in command, name
        deadline = int(re.search(r"--deadline-remaining-seconds (\d+)", command).group(1))
        assert 0 < deadline < GCE_SPOT_NOTICE_S, name
        used = set(re.findall(r"(--[a-z-]+)", command))
        assert used <= set(options), f"{name}: not options of ray drain-node: {used - set(options)}"
        required = {p.opts[0] for p in drain_node.params if p.required}
        assert required <= used, f"{name}: ray drain-node needs {required - used}"
        assert "DRAIN_NODE_REASON_PREEMPTION" in options["--reason"].type.choices
        assert f"docker exec {config['docker']['container_name']} " in script, name
        assert f"-u {config['auth']['ssh_user']} " in script, name
        if shutil.which("bash"):
            check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
            assert check.returncode == 0, f"{name}: {check.stderr}"


def test_start_commands_and_idle_timeout(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start" in head and "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "ray start" in worker and "$RAY_HEAD_IP:6379" in worker
    assert config["idle_timeout_minutes"] > 0


def _misspelled_top_level_key(c):
    c["max_worker"] = c.pop("max_workers")


def _max_workers_not_an_int(c):
    c["max_workers"] = "many"


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_t4"]["resources"]["GPU"] = 0.5


def _unknown_node_type_field(c):
    c["available_node_types"]["gpu_t4"]["min_worker"] = 0


def _head_type_missing(c):
    c["head_node_type"] = "no_such_type"


def _min_workers_above_max_workers(c):
    c["available_node_types"]["gpu_t4"]["min_workers"] = c["max_workers"] + 1


def _docker_image_without_container_name(c):
    del c["docker"]["container_name"]


def _unknown_docker_field(c):
    c["docker"]["gpus"] = "all"


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (_misspelled_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (_max_workers_not_an_int, jsonschema.ValidationError, "'many' is not of type 'integer'"),
        (_fractional_gpu_resource, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (_unknown_node_type_field, jsonschema.ValidationError, "'min_worker' was unexpected"),
        (_head_type_missing, ValueError, "head_node_type"),
        (_min_workers_above_max_workers, ValueError, "max_workers"),
        (_docker_image_without_container_name, AssertionError, "Must provide a container & image name"),
        (_unknown_docker_field, jsonschema.ValidationError, "'gpus' was unexpected"),
    ],
)
def test_corrupted_config_is_rejected(raw, corrupt, error, message):
    """The same validation fails on a broken copy, so the passing tests above mean something."""
    bad = copy.deepcopy(raw)
    corrupt(bad)
    with pytest.raises(error) as info:
        _prepare_and_validate(bad)
    assert message in str(info.value)
