"""Shared fixtures of the project's own tests: real data, a real tracking stack,
and a way to run the experiment suite as a user would (a pytest subprocess)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlflow_cv_yolo.experiment import CLIENT_ENV
from mlflow_cv_yolo.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO.parent / "shared" / "data" / "tiny_coco"
os.environ.update(CLIENT_ENV)  # this process's own MLflow clients download through the server too


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    if not (TINY_COCO / "images" / "train").is_dir():
        pytest.fail(f"real test data missing: {TINY_COCO} (see its README)")
    return TINY_COCO


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory, tiny_coco) -> Path:
    """A dataset yaml over the shared real images (they stay where they are)."""
    path = tmp_path_factory.mktemp("data") / "tiny_coco.yaml"
    path.write_text(f"path: {tiny_coco}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                    "names:\n  0: person\n")
    return path


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """One real MariaDB + S3 + MLflow stack for the tests that share it."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), log=lambda line: None)
    info = stack.start("tests")
    yield info
    stack.stop()
