"""The exact Ray and TensorFlow versions this code is pinned to, checked where a job starts.

    python -m fer_dist.versions                   # exit 0: this Python has the pinned versions
    python -m fer_dist.versions --address auto    # ... and so does the Ray cluster it would join

The pins are the `==` requirements for `ray` and `tensorflow` in pyproject.toml: the
pyproject.toml next to the `fer_dist` package that is running (a checkout, or the copy that
`ray job submit --working-dir .` ships) if there is one, else the installed package's metadata.
pyproject.toml is the one place they are written: the Dockerfile installs them, and
tests/test_cluster_yaml.py checks that cluster.yaml's image tag and pip lines name the same.

`check(address)` compares, before the job connects to Ray:
  - the versions installed in this Python with the pins (the image is stale, a laptop has
    another Ray or TensorFlow);
  - with `address` (a GCS HOST:PORT or "auto"), the Ray and Python versions the cluster was
    started with, read from its GCS (one key; nothing is started and no driver connects).
    Ray itself refuses a driver of another Ray or Python version, but only at `ray.init`, with
    a multi-line RuntimeError; this says which side to fix, on one line.
Call it again inside each Ray Train worker (no address) to check that node's TensorFlow: the
nodes an autoscaler adds later run whatever their image or boot-time install gave them.

A mismatch raises `fer_dist.errors.UserError` (one `error: ...` line, exit status 2 in the
jobs). FER_DIST_VERSION_CHECK=warn logs it as a warning and goes on (trying a new TensorFlow
on purpose); FER_DIST_VERSION_CHECK=off skips the check.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

PINNED = ("ray", "tensorflow")  # the distributions whose versions must match everywhere
ENV = "FER_DIST_VERSION_CHECK"  # "error" (default), "warn" or "off"
MODES = ("error", "warn", "off")
PROJECT = "fer_dist"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# What to install to fix a mismatch; the extras are those this project needs (the GPU nodes
# take tensorflow[and-cuda], which the image has).
INSTALL_AS = {"ray": "ray[train,tune]", "tensorflow": "tensorflow"}


@dataclasses.dataclass(frozen=True)
class ClusterVersions:
    """What a Ray cluster's GCS says it was started with."""

    address: str
    ray: str
    python: str | None = None


# ---------------------------------------------------------------------------------------------
# Pure functions (tests/test_versions.py).
# ---------------------------------------------------------------------------------------------
def pins(requirements: Iterable[str]) -> dict[str, Requirement]:
    """The requirements of PINNED distributions among `requirements` (PEP 508 strings, as in
    pyproject's `dependencies` or `importlib.metadata.requires`), by name. Requirements with a
    marker (an optional extra such as `tensorflow[and-cuda]==X; extra == "gpu"`) are skipped:
    the base dependency is the pin."""
    found: dict[str, Requirement] = {}
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        name = _normalise(req.name)
        if name in PINNED and req.marker is None:
            found[name] = req
    return found


def exact_version(req: Requirement) -> str | None:
    """X of a requirement that is exactly `==X` (no wildcard), else None."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def problems(
    pinned: Mapping[str, Requirement],
    here: Mapping[str, str | None],
    source: str = "pyproject.toml",
    cluster: ClusterVersions | None = None,
    python_here: str | None = None,
) -> list[str]:
    """One line for each version that does not match, none if all do.

    pinned: `pins(...)`; here: {name: installed version or None}; source: where the pins were
    read (named in the message); cluster: the cluster's versions, if known; python_here: this
    Python's X.Y.Z (compared with the cluster's; default: this process's)."""
    found = []
    for name in PINNED:
        req = pinned.get(name)
        if req is None:
            continue
        version = here.get(name)
        fix = f"pip install '{INSTALL_AS.get(name, name)}{req.specifier}' or rebuild the image (Dockerfile)"
        if version is None:
            found.append(f"{name} is not installed here, but {source} pins {name}{req.specifier}: {fix}")
        elif not _satisfies(req, version):
            found.append(f"{name} {version} is installed here, but {source} pins {name}{req.specifier}: {fix}")
    if cluster is not None:
        ray_here = here.get("ray")
        if ray_here is not None and cluster.ray != ray_here:
            found.append(
                f"ray {cluster.ray} on the cluster at {cluster.address}, but {ray_here} here: "
                + _cluster_fix("ray", cluster.ray, ray_here, pinned.get("ray"))
            )
        python_here = python_here or ".".join(map(str, sys.version_info[:3]))
        if cluster.python and cluster.python != python_here:
            found.append(
                f"python {cluster.python} on the cluster at {cluster.address}, but {python_here} here: "
                "Ray needs the same Python on every node and driver; run the job on the cluster "
                "(ray job submit) or in its image"
            )
    return found


def mode(environ: Mapping[str, str] | None = None) -> str:
    """FER_DIST_VERSION_CHECK: "error" (default), "warn" or "off"."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, "").strip().lower() or "error"
    if value not in MODES:
        from fer_dist.errors import UserError

        raise UserError(f"{ENV}={value}: must be one of {', '.join(MODES)}")
    return value


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _cluster_fix(name: str, theirs: str, ours: str, req: Requirement | None) -> str:
    install = INSTALL_AS.get(name, name)
    if req is not None and _satisfies(req, ours) and not _satisfies(req, theirs):
        # This side has the pinned version: the cluster was started from an older image/install.
        return f"restart the cluster with the pinned version (rebuild the image, then `ray up cluster.yaml`), or pip install '{install}=={theirs}' here"
    return f"pip install '{install}=={theirs}' here or rebuild the image"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# ---------------------------------------------------------------------------------------------
# What is installed, what is pinned, what the cluster runs.
# ---------------------------------------------------------------------------------------------
def requirements_from_pyproject(path: str | os.PathLike = PYPROJECT) -> list[str] | None:
    """`project.dependencies` of a pyproject.toml that describes this project, else None
    (no such file, another project, or no TOML parser: Python 3.10 without tomli)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            return None
    try:
        with open(path, "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, ValueError):
        return None
    if _normalise(str(project.get("name", ""))) != _normalise(PROJECT):
        return None
    return list(project.get("dependencies", []))


def declared() -> tuple[list[str], str]:
    """(requirements, where they were read): the pyproject.toml next to the running package,
    else the installed distribution's metadata, else nothing."""
    reqs = requirements_from_pyproject(PYPROJECT)
    if reqs is not None:
        return reqs, str(PYPROJECT.name)
    try:
        return list(importlib.metadata.requires(PROJECT) or []), f"the installed {PROJECT} package"
    except importlib.metadata.PackageNotFoundError:
        return [], "nothing"


def installed(names: Iterable[str] = PINNED) -> dict[str, str | None]:
    """{name: version installed in this Python, or None}, from package metadata (TensorFlow is
    not imported)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cluster_versions(address: str | None, timeout_s: float = 10.0) -> ClusterVersions | None:
    """The Ray and Python versions in the cluster metadata of the GCS at `address` (HOST:PORT,
    or "auto": RAY_ADDRESS or the cluster last started on this machine). None when there is
    nothing to ask (no address, "local": a cluster of the job's own, a Ray Client "ray://"
    address, which checks versions itself) or the GCS does not answer within `timeout_s`: then
    `ray.init` reports what is wrong. Uses Ray internals (the same call `ray drain-node` makes),
    so any failure means "unknown", never an error."""
    if not address or address == "local" or address.startswith("ray://"):
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address

        gcs = canonicalize_bootstrap_address(address)
        if not gcs:
            return None
        host, _, port = gcs.rpartition(":")
        # A GcsClient to a dead address blocks for ~30 s; the job's ray.init would report it.
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 3.0)):
            pass
    except Exception as e:
        log.debug("cluster version of %s: not reachable (%s)", address, e)
        return None
    result: dict = {}

    def ask() -> None:
        try:
            from ray._common.usage.usage_lib import get_cluster_metadata
            from ray._raylet import GcsClient

            result["metadata"] = get_cluster_metadata(GcsClient(address=gcs))
        except Exception as e:  # Ray internals that moved, auth, a GCS restarting
            result["error"] = e

    thread = threading.Thread(target=ask, name="fer_dist-cluster-version", daemon=True)
    thread.start()
    thread.join(timeout_s)
    metadata = result.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("ray_version"):
        log.debug("cluster version of %s: unknown (%s)", gcs, result.get("error", "no answer"))
        return None
    return ClusterVersions(gcs, str(metadata["ray_version"]), metadata.get("python_version"))


def check(address: str | None = None, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Checks this Python's Ray and TensorFlow against the pins and, with `address`, against
    the Ray cluster there (see the module docstring). Raises UserError (one line) on a
    mismatch; with FER_DIST_VERSION_CHECK=warn logs it and returns the problems; returns []
    when everything matches or the check is off."""
    how = mode(environ)
    if how == "off":
        return []
    requirements, source = declared()
    found = problems(pins(requirements), installed(), source, cluster_versions(address))
    if found and how == "error":
        from fer_dist.errors import UserError

        raise UserError(f"{'; '.join(found)} (set {ENV}=warn to go on anyway)")
    for line in found:
        log.warning("%s", line)
    return found


def describe() -> str:
    """`ray 2.60.0, tensorflow 2.21.0` as installed here."""
    return ", ".join(f"{name} {version or 'not installed'}" for name, version in installed().items())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fer_dist.versions", description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="also compare with the Ray cluster there (HOST:PORT or auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from fer_dist.errors import UserError

    try:
        check(args.address)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    requirements, source = declared()
    print(f"{describe()} (pinned by {source})")
    return 0


__all__ = [
    "ClusterVersions",
    "PINNED",
    "check",
    "cluster_versions",
    "declared",
    "describe",
    "exact_version",
    "installed",
    "mode",
    "pins",
    "problems",
    "requirements_from_pyproject",
]

if __name__ == "__main__":
    sys.exit(main())
