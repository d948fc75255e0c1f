"""Shared fixtures of the project's own tests: real data (carried in tests/data), a
real tracking stack, and each test's MLflow settings put back after it."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from mlflow_cv_yolo.experiment import CLIENT_ENV
from mlflow_cv_yolo.stack.providers import LocalStack

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
os.environ.update(CLIENT_ENV)  # this process's own MLflow clients download through the server too


@pytest.fixture(autouse=True)
def _mlflow_settings_restored():
    """A test that points mlflow somewhere (set_tracking_uri, MLFLOW_* variables)
    leaves the next test where it found it."""
    uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    mlflow.set_tracking_uri(uri)  # after the environment: it writes MLFLOW_TRACKING_URI


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    """60 real COCO person images, carried in the repository (see its README)."""
    return DATA / "tiny_coco"


@pytest.fixture(scope="session")
def data_yaml() -> Path:
    """The dataset yaml over tests/data/tiny_coco."""
    return DATA / "tiny_coco.yaml"


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """One real MariaDB + S3 + MLflow stack for the tests that share it."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), log=lambda line: None)
    info = stack.start("tests")
    yield info
    stack.stop()
