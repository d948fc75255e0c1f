"""Running the experiment suite as a user does, from the project's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The smallest real grid: one epoch at 64 px, trained from scratch.
MICRO = ("--set", "epochs=1", "--set", "imgsz=64", "--set", "lr0=0.01", "--set", "seed=1", "--set", "batch=8")


def suite_command(*args: str, tmp_path: Path) -> list[str]:
    """`python -m pytest experiments ARGS`, as a user runs it, with every folder the
    session writes moved under tmp_path."""
    command = [sys.executable, "-m", "pytest", "experiments", "-p", "no:cacheprovider",
               "--reports-dir", str(tmp_path / "reports"), "--runs-dir", str(tmp_path / "runs"), *args]
    if not any(a.startswith("--stack-dir") or a == "--fresh-stack" for a in args):
        command += ["--stack-dir", str(tmp_path / "stack")]
    return command


def suite_env(env: dict | None = None) -> dict[str, str]:
    """A fresh session's environment: nothing of this one's pytest, tracking URI or
    suite leaks in (image overrides such as CV_YOLO_MYSQL_IMAGE do pass)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_", "CV_YOLO_SUITE"))}
    full_env.update(env or {})
    return full_env


def run_suite(*args: str, tmp_path: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The suite run to completion from the repo root (see suite_command, suite_env)."""
    return subprocess.run(suite_command(*args, tmp_path=tmp_path), cwd=REPO, env=suite_env(env),
                          capture_output=True, text=True, timeout=timeout)


# CI that provides a Docker engine (Podman in .ci/run) says so with this variable:
# there, a test that finds no engine fails instead of skipping, so a broken engine
# cannot turn CI green.
REQUIRE_DOCKER = "CV_YOLO_REQUIRE_DOCKER"


def engine_missing(why: str) -> None:
    """Skip with `why`, or fail where CV_YOLO_REQUIRE_DOCKER=1."""
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 (CI declares a Docker engine) but {why}", pytrace=False)
    pytest.skip(why)
