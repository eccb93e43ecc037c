"""fer_dist.versions: the pinned Ray/TensorFlow versions and the check at job start.

Pure functions with given versions; no Ray cluster is started and TensorFlow is not imported.
"""

from __future__ import annotations

import logging
import time

import pytest

from fer_dist import versions
from fer_dist.errors import UserError

PYPROJECT_DEPS = [
    "tensorflow==2.21.0",
    "tensorboard~=2.21.0",
    "ray[train,tune]==2.60.0",
    "numpy>=1.26,<3",
]
METADATA_REQUIRES = [  # importlib.metadata.requires("fer_dist") of the same project
    "tensorflow==2.21.0",
    "tensorboard~=2.21.0",
    "ray[train,tune]==2.60.0",
    'tensorflow[and-cuda]==2.21.0; extra == "gpu"',
    'pytest>=8; extra == "test"',
]
MATCHING = {"ray": "2.60.0", "tensorflow": "2.21.0"}


def _pins():
    return versions.pins(PYPROJECT_DEPS)


# ---------------------------------------------------------------------------------------------
# pins / exact_version
# ---------------------------------------------------------------------------------------------
def test_pins_keep_ray_and_tensorflow_only():
    pinned = _pins()
    assert set(pinned) == {"ray", "tensorflow"}
    assert str(pinned["ray"]) == "ray[train,tune]==2.60.0"
    assert versions.exact_version(pinned["ray"]) == "2.60.0"
    assert versions.exact_version(pinned["tensorflow"]) == "2.21.0"


def test_pins_from_metadata_skip_the_optional_extras():
    pinned = versions.pins(METADATA_REQUIRES)
    assert {name: str(req) for name, req in pinned.items()} == {
        "ray": "ray[train,tune]==2.60.0",
        "tensorflow": "tensorflow==2.21.0",
    }


def test_pins_normalise_names_and_ignore_garbage():
    pinned = versions.pins(["Ray[tune]==2.60.0", "TensorFlow==2.21.0", "not a requirement ((", ""])
    assert set(pinned) == {"ray", "tensorflow"}


@pytest.mark.parametrize(
    "text, exact",
    [
        ("ray==2.60.0", "2.60.0"),
        ("ray[train]===2.60.0", "2.60.0"),
        ("ray~=2.60", None),
        ("ray==2.60.*", None),
        ("ray>=2.60,<3", None),
        ("ray", None),
    ],
)
def test_exact_version(text, exact):
    (req,) = versions.pins([text]).values()
    assert versions.exact_version(req) == exact


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
def test_no_problems_when_everything_matches():
    assert versions.problems(_pins(), MATCHING) == []
    cluster = versions.ClusterVersions("10.0.0.2:6379", "2.60.0", "3.11.7")
    assert versions.problems(_pins(), MATCHING, cluster=cluster, python_here="3.11.7") == []


def test_a_stale_tensorflow_is_named_with_its_fix():
    (line,) = versions.problems(_pins(), {"ray": "2.60.0", "tensorflow": "2.20.0"})
    assert line.startswith("tensorflow 2.20.0 is installed here, but pyproject.toml pins tensorflow==2.21.0: ")
    assert "pip install 'tensorflow==2.21.0' or rebuild the image" in line


def test_ray_mismatch_names_the_extras_to_install():
    (line,) = versions.problems(_pins(), {"ray": "2.59.1", "tensorflow": "2.21.0"}, "the installed fer_dist package")
    assert line.startswith("ray 2.59.1 is installed here, but the installed fer_dist package pins ray==2.60.0")
    assert "pip install 'ray[train,tune]==2.60.0'" in line


def test_a_missing_package_is_a_problem():
    (line,) = versions.problems(_pins(), {"ray": "2.60.0", "tensorflow": None})
    assert line.startswith("tensorflow is not installed here, but pyproject.toml pins tensorflow==2.21.0")


def test_unpinned_packages_are_not_compared():
    assert versions.problems(versions.pins(["ray~=2.60", "numpy"]), {"ray": "2.61.0", "tensorflow": None}) == []
    # A range pin is compared as a range.
    (line,) = versions.problems(versions.pins(["ray>=2.60,<2.61"]), {"ray": "2.61.0"})
    assert "pins ray<2.61,>=2.60" in line


def test_cluster_on_another_ray_when_this_side_has_the_pin():
    cluster = versions.ClusterVersions("10.0.0.2:6379", "2.59.0", "3.11.7")
    (line,) = versions.problems(_pins(), MATCHING, cluster=cluster, python_here="3.11.7")
    assert line.startswith("ray 2.59.0 on the cluster at 10.0.0.2:6379, but 2.60.0 here: ")
    assert "restart the cluster with the pinned version" in line
    assert "pip install 'ray[train,tune]==2.59.0' here" in line


def test_cluster_on_the_pinned_ray_and_this_side_not():
    cluster = versions.ClusterVersions("10.0.0.2:6379", "2.60.0", "3.11.7")
    found = versions.problems(_pins(), {"ray": "2.61.0", "tensorflow": "2.21.0"}, cluster=cluster, python_here="3.11.7")
    assert found[0].startswith("ray 2.61.0 is installed here, but pyproject.toml pins ray==2.60.0")
    assert found[1] == (
        "ray 2.60.0 on the cluster at 10.0.0.2:6379, but 2.61.0 here: "
        "pip install 'ray[train,tune]==2.60.0' here or rebuild the image"
    )


def test_cluster_on_another_python():
    cluster = versions.ClusterVersions("10.0.0.2:6379", "2.60.0", "3.11.7")
    (line,) = versions.problems(_pins(), MATCHING, cluster=cluster, python_here="3.12.1")
    assert line.startswith("python 3.11.7 on the cluster at 10.0.0.2:6379, but 3.12.1 here: ")
    # Unknown Python on the cluster: not compared.
    cluster = versions.ClusterVersions("10.0.0.2:6379", "2.60.0", None)
    assert versions.problems(_pins(), MATCHING, cluster=cluster, python_here="3.12.1") == []


def test_every_problem_is_one_line():
    cluster = versions.ClusterVersions("h:1", "1.0.0", "3.9.0")
    found = versions.problems(_pins(), {"ray": "2.0.0", "tensorflow": None}, cluster=cluster, python_here="3.11.0")
    assert len(found) == 4 and all("\n" not in line for line in found)


# ---------------------------------------------------------------------------------------------
# check: modes, and the error it raises
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def stale_tensorflow(monkeypatch):
    monkeypatch.setattr(versions, "declared", lambda: (PYPROJECT_DEPS, "pyproject.toml"))
    monkeypatch.setattr(versions, "installed", lambda names=versions.PINNED: {"ray": "2.60.0", "tensorflow": "2.20.0"})
    asked = []
    monkeypatch.setattr(versions, "cluster_versions", lambda address: asked.append(address))
    return asked


def test_check_raises_one_line_user_error(stale_tensorflow):
    with pytest.raises(UserError) as info:
        versions.check("10.0.0.2:6379", environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("tensorflow 2.20.0 is installed here, but pyproject.toml pins tensorflow==2.21.0")
    assert message.endswith("(set FER_DIST_VERSION_CHECK=warn to go on anyway)")
    assert stale_tensorflow == ["10.0.0.2:6379"]  # the cluster was asked about its address


def test_check_warns_or_is_off_when_asked(stale_tensorflow, caplog):
    with caplog.at_level(logging.WARNING, logger="fer_dist.versions"):
        found = versions.check(environ={"FER_DIST_VERSION_CHECK": "warn"})
    assert len(found) == 1 and found[0] in caplog.text
    assert versions.check(environ={"FER_DIST_VERSION_CHECK": " OFF "}) == []
    with pytest.raises(UserError, match="FER_DIST_VERSION_CHECK=maybe: must be one of error, warn, off"):
        versions.check(environ={"FER_DIST_VERSION_CHECK": "maybe"})


def test_check_passes_when_versions_match(monkeypatch):
    monkeypatch.setattr(versions, "declared", lambda: (METADATA_REQUIRES, "the installed fer_dist package"))
    monkeypatch.setattr(versions, "installed", lambda names=versions.PINNED: dict(MATCHING))
    monkeypatch.setattr(versions, "cluster_versions", lambda address: None)
    assert versions.check("auto", environ={}) == []


def test_main_prints_versions_or_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(versions, "declared", lambda: (PYPROJECT_DEPS, "pyproject.toml"))
    monkeypatch.setattr(versions, "installed", lambda names=versions.PINNED: dict(MATCHING))
    monkeypatch.delenv("FER_DIST_VERSION_CHECK", raising=False)
    assert versions.main([]) == 0
    assert capsys.readouterr().out == "ray 2.60.0, tensorflow 2.21.0 (pinned by pyproject.toml)\n"
    monkeypatch.setattr(versions, "installed", lambda names=versions.PINNED: {"ray": "2.60.0", "tensorflow": None})
    assert versions.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tensorflow is not installed here") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Where the pins are read, and what the cluster is asked
# ---------------------------------------------------------------------------------------------
def test_requirements_from_pyproject(tmp_path):
    pytest.importorskip("tomllib")
    ours = tmp_path / "pyproject.toml"
    ours.write_text('[project]\nname = "fer_dist"\ndependencies = ["ray[train,tune]==2.60.0"]\n')
    assert versions.requirements_from_pyproject(ours) == ["ray[train,tune]==2.60.0"]
    other = tmp_path / "other.toml"
    other.write_text('[project]\nname = "something-else"\ndependencies = ["ray==1.0"]\n')
    assert versions.requirements_from_pyproject(other) is None
    broken = tmp_path / "broken.toml"
    broken.write_text("[project\n")
    assert versions.requirements_from_pyproject(broken) is None
    assert versions.requirements_from_pyproject(tmp_path / "missing.toml") is None


def test_the_repositorys_pyproject_pins_exactly():
    pytest.importorskip("tomllib")
    requirements, source = versions.declared()
    assert source == "pyproject.toml"
    pinned = versions.pins(requirements)
    assert all(versions.exact_version(pinned[name]) for name in versions.PINNED)


def test_declared_falls_back_to_the_installed_metadata(monkeypatch, tmp_path):
    monkeypatch.setattr(versions, "PYPROJECT", tmp_path / "pyproject.toml")  # not there
    monkeypatch.setattr(versions.importlib.metadata, "requires", lambda name: list(METADATA_REQUIRES))
    requirements, source = versions.declared()
    assert source == "the installed fer_dist package" and requirements == METADATA_REQUIRES


def test_installed_reads_metadata_without_importing(monkeypatch):
    seen = {"ray": "2.60.0"}

    def version(name):
        if name in seen:
            return seen[name]
        raise versions.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(versions.importlib.metadata, "version", version)
    assert versions.installed() == {"ray": "2.60.0", "tensorflow": None}


@pytest.mark.parametrize("address", [None, "", "local", "ray://10.0.0.2:10001"])
def test_no_cluster_to_ask(address):
    assert versions.cluster_versions(address) is None


def test_an_unreachable_cluster_is_unknown_and_quick():
    pytest.importorskip("ray")
    start = time.monotonic()
    assert versions.cluster_versions("127.0.0.1:1", timeout_s=2) is None  # nothing listens on port 1
    assert time.monotonic() - start < 10
