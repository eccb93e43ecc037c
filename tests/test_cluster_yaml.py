"""cluster.yaml (the GCP Ray cluster launcher config) checked offline with Ray's own validation.

`ray up` does `prepare_config` (merge with ray/autoscaler/gcp/defaults.yaml, merge setup commands,
fill per-type min/max workers) and then `validate_config` (jsonschema against
ray/autoscaler/ray-schema.json plus a few consistency checks) before it contacts GCP; this test
runs exactly those two steps and nothing that needs credentials or a network.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")  # a Ray dependency; validate_config needs it

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
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


def test_setup_installs_the_project_with_gpu_extra(config):
    for key in ("head_setup_commands", "worker_setup_commands"):  # merged by prepare_config
        cmds = " ; ".join(config[key])
        assert "pip install" in cmds and '-e ".[gpu]"' in cmds, key
    assert any(".[gpu]" in c for c in config["setup_commands"])
    # The head's autoscaler needs the Compute Engine client.
    assert any("google-api-python-client" in c for c in config["head_setup_commands"])
    assert "." in config["file_mounts"].values()


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


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (_misspelled_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (_max_workers_not_an_int, jsonschema.ValidationError, "'many' is not of type 'integer'"),
        (_fractional_gpu_resource, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (_unknown_node_type_field, jsonschema.ValidationError, "'min_worker' was unexpected"),
        (_head_type_missing, ValueError, "head_node_type"),
        (_min_workers_above_max_workers, ValueError, "max_workers"),
    ],
)
def test_corrupted_config_is_rejected(raw, corrupt, error, message):
    """The same validation fails on a broken copy, so the passing tests above mean something."""
    bad = copy.deepcopy(raw)
    corrupt(bad)
    with pytest.raises(error) as info:
        _prepare_and_validate(bad)
    assert message in str(info.value)
