"""The lock (requirements/constraints.txt): complete for pyproject's dependencies and
extras, consistent with this environment, and used by every install the project makes."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]

LOCK = REPO / "requirements" / "constraints.txt"


def pins() -> dict[str, str]:
    lines = [line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all("==" in line for line in lines), [line for line in lines if "==" not in line]
    return {canonicalize_name(name): version for name, version in (line.split("==", 1) for line in lines)}


def test_every_dependency_and_extra_is_pinned_within_its_specifier():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    locked = pins()
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in {LOCK.name}: rerun scripts/lock.sh"
        assert req.specifier.contains(locked[name], prereleases=True), f"{req} vs {name}=={locked[name]}"
    assert "torch" in locked and not any(
        s.operator in ("<", "<=")
        for s in Requirement(next(r for r in project["dependencies"] if r.startswith("torch"))).specifier
    )  # no cap in pyproject


def test_this_environment_is_the_locked_one():
    """The venv the tests run in was installed from the lock (a stale lock shows here)."""
    locked = pins()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name in ("torch", "ultralytics", "mlflow", "dvc", "boto3", "aiobotocore", "pytest"):
        assert installed[name].split("+")[0] == locked[name], name


def test_installs_use_the_lock():
    readme = (REPO / "README.md").read_text()
    installs = [line for line in readme.splitlines() if re.search(r"pip install .*-e ", line)]
    assert installs and all("-c requirements/constraints.txt" in line for line in installs), installs
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -q -c requirements/constraints.txt -e ".[ray,test]"' in ci
    workflow = (REPO / ".github" / "workflows" / "experiments.yml").read_text()
    assert "pip install -c requirements/constraints.txt" in workflow
    dockerfile = (REPO / "docker" / "mlflow" / "Dockerfile").read_text()
    assert "COPY requirements/constraints.txt" in dockerfile and "-c /tmp/constraints.txt" in dockerfile
    # compose builds from the repository root to reach the lock; .dockerignore keeps the rest out.
    assert (REPO / ".dockerignore").read_text().splitlines()[-3:] == [
        "*",
        "!requirements/constraints.txt",
        "!docker/mlflow/",
    ]
    setup = (REPO / "scripts" / "podman" / "setup.sh").read_text()
    assert "-c /tmp/constraints.txt" in setup
