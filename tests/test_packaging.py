"""The package as `pip install -e .` installs it: every third-party module fer_dist imports comes
from a runtime dependency of pyproject.toml, so that no command (`python -m fer_dist.cluster local
--down` once lacked psutil) needs the test extras."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Imported, but not runtime dependencies, each for its reason.
OPTIONAL = {
    "optuna": "the [tune] extra: --searcher optuna says how to install it",
    "tomli": "Python 3.10's TOML parser, used only when present (fer_dist/versions.py)",
}
# Namespace packages: the declared dependency that brings each.
GOOGLE = {
    "google.cloud": "google-cloud-storage",
    "google.api_core": "google-cloud-storage",  # its own dependencies
    "google.auth": "google-cloud-storage",
    "google.protobuf": "tensorflow",
}


def _imported_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "fer_dist").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return modules


def _runtime_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalized(re.split(r"[\s\[<>=~!;]", requirement, maxsplit=1)[0]) for requirement in project["dependencies"]
    }


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_runtime_dependency():
    declared = _runtime_dependencies()
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_imported_modules()):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "fer_dist" or top in OPTIONAL:
            continue
        if top == "google":
            brought_by = next((dist for prefix, dist in GOOGLE.items() if module.startswith(prefix)), None)
            if brought_by is None or _normalized(brought_by) not in declared:
                missing.append(module)
            continue
        dists = {_normalized(d) for d in providers.get(top, [])}
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists) or 'nothing installed'})")
    assert not missing, f"imported by fer_dist but not in pyproject.toml's dependencies: {missing}"


def test_console_scripts_name_apps_that_exist():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, attribute = target.split(":")
        assert hasattr(importlib.import_module(module), attribute), name
