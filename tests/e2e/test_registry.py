"""Registry writes in a safe order, against a real tracking server: the alias moves
last, so a failing step leaves it where it was; the version that loses the alias
loses its `stage` tag."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
from helpers import MICRO, run_suite, session_of, session_runs
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.decide.decision import Decision
from mlflow_cv_yolo.decide.registry import promote


@pytest.fixture(scope="module")
def candidate(local_stack, data_yaml, tmp_path_factory) -> str:
    """A FINISHED run of a real (tiny) session, not promoted."""
    result = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--no-promote",
        tmp_path=tmp_path_factory.mktemp("run"),
        env={"MLFLOW_TRACKING_URI": local_stack.tracking_uri},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    (run,) = [
        r
        for r in session_runs(MlflowClient(local_stack.tracking_uri), session_of(result.stdout)).values()
        if r.data.tags["suite.kind"] == "grid"
    ]
    return run.info.run_id


def promoted(client, candidate: str, model: str, alias: str, data: Path, **tags) -> Decision:
    decision = Decision("promoted", "test", "test-session", candidate="base", candidate_run_id=candidate)
    return promote(client, decision, registered_model=model, alias=alias, tags=tags, data=data)


def test_a_failing_registry_step_leaves_the_alias_where_it_was(local_stack, candidate, data_yaml):
    mlflow.set_tracking_uri(local_stack.tracking_uri)  # register_model and load_model resolve models:/ by it
    client = MlflowClient(local_stack.tracking_uri)
    model = f"registry-{uuid.uuid4().hex[:6]}"
    first = promoted(client, candidate, model, "staging", data_yaml)
    with pytest.raises(MlflowException):  # a tag key the registry refuses: the step before the alias fails
        promoted(client, candidate, model, "staging", data_yaml, **{"bad\nkey": "x"})
    held = client.get_model_version_by_alias(model, "staging")
    assert (held.version, held.tags["stage"]) == (first.version, "staging")


def test_the_version_that_loses_the_alias_loses_its_stage_tag(local_stack, candidate, data_yaml):
    mlflow.set_tracking_uri(local_stack.tracking_uri)  # register_model and load_model resolve models:/ by it
    client = MlflowClient(local_stack.tracking_uri)
    model = f"registry-{uuid.uuid4().hex[:6]}"
    first = promoted(client, candidate, model, "production", data_yaml)
    second = promoted(client, candidate, model, "production", data_yaml)
    assert client.get_model_version_by_alias(model, "production").version == second.version
    assert "stage" not in client.get_model_version(model, first.version).tags
    assert client.get_model_version(model, second.version).tags["stage"] == "production"
