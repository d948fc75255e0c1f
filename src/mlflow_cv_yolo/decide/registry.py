"""The Model Registry's side of a promotion: the candidate's pyfunc model logged and
checked, a new complete version registered, and the alias moved last."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.decide.decision import Decision
from mlflow_cv_yolo.detector import COLUMNS
from mlflow_cv_yolo.runs.tracking import log_model, logged_models

# The registry keeps a version's description in a 5000-character column.
DESCRIPTION_LIMIT = 5000


def weights_from_run(client: MlflowClient, run_id: str, into: Path) -> Path:
    return Path(client.download_artifacts(run_id, "weights/best.pt", str(into)))


def holder(client: MlflowClient, name: str, alias: str):
    """The version holding `alias`, or None (no such model or alias yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def check_loads(model_uri: str) -> None:
    """Load the model as a user will and predict on its own input example."""
    from mlflow.models import Model

    model = mlflow.pyfunc.load_model(model_uri)
    example = Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    frame, params = example if isinstance(example, tuple) else (example, None)
    boxes = model.predict(frame, params=params)
    if list(boxes.columns) != COLUMNS:
        raise RuntimeError(f"{model_uri} predicts columns {list(boxes.columns)}, expected {COLUMNS}")


def _description(markdown: str) -> str:
    if len(markdown) <= DESCRIPTION_LIMIT:
        return markdown
    tail = "\n\n(truncated: the whole record is the run's artifact decision/decision.md)\n"
    return markdown[: DESCRIPTION_LIMIT - len(tail)] + tail


def candidate_model(client: MlflowClient, run_id: str, *, data: Path, imgsz: int) -> str:
    """The candidate's pyfunc model id: logged into its run now, once (runs keep only
    their weights; logging and checking a model costs every run a second)."""
    existing = logged_models(client, run_id)
    if existing:
        return existing[0].model_id
    from mlflow_cv_yolo.runs.training_run import example_image

    with tempfile.TemporaryDirectory() as tmp:
        weights = weights_from_run(client, run_id, Path(tmp))
        return log_model(run_id, weights, example_image=example_image(data), imgsz=imgsz)


def register(
    client: MlflowClient,
    decision: Decision,
    *,
    registered_model: str,
    alias: str,
    tags: dict[str, str],
    data: Path,
    keep_if_held: bool = False,
) -> Decision:
    """Log the candidate's model and register it as a new, complete version (tags and
    description set) that `move_alias` then points `alias` at. With `keep_if_held` (a
    reused candidate), a run whose version already holds `alias` is kept: outcome "kept"."""
    held = holder(client, registered_model, alias) if keep_if_held else None
    if held is not None and held.run_id == decision.candidate_run_id:  # a reused run promoted before
        return dataclasses.replace(
            decision,
            outcome="kept",
            reason=(f"{decision.candidate} is {registered_model} v{held.version} @{alias} already: nothing registered"),
            registered_model=registered_model,
            version=held.version,
            alias=alias,
        )
    imgsz = int(client.get_run(decision.candidate_run_id).data.params.get("imgsz", 320))
    model_id = candidate_model(client, decision.candidate_run_id, data=data, imgsz=imgsz)
    check_loads(f"models:/{model_id}")
    try:  # the client, not mlflow.register_model, which prints to the terminal
        client.create_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        registered_model,
        f"models:/{model_id}",
        run_id=decision.candidate_run_id,
        tags=tags,
        model_id=model_id,
    ).version
    promoted = dataclasses.replace(decision, registered_model=registered_model, version=version, alias=alias)
    client.update_model_version(registered_model, version, description=_description(promoted.markdown()))
    return promoted


def promote(client: MlflowClient, decision: Decision, **register_args) -> Decision:
    """`register`, then `move_alias` (a kept candidate moves nothing). A session writes
    its records between the two; this is both steps at once."""
    registered = register(client, decision, **register_args)
    if registered.outcome == "promoted":
        move_alias(client, registered)
    return registered


def move_alias(client: MlflowClient, decision: Decision) -> None:
    """Point the alias at the registered version, read it back, and take the `stage`
    tag off the version that lost it. Last of a promotion's steps: a failure before
    it leaves the alias on a complete version."""
    registered_model, alias, version = decision.registered_model, decision.alias, decision.version
    previous = holder(client, registered_model, alias)
    client.set_registered_model_alias(registered_model, alias, version)
    held = client.get_model_version_by_alias(registered_model, alias)
    if held.version != version:
        raise RuntimeError(f"alias {alias} of {registered_model} points at v{held.version}, not v{version}")
    client.set_model_version_tag(registered_model, version, "stage", alias)
    if previous is not None and previous.version != version and previous.tags.get("stage") == alias:
        others = [a for a in client.get_model_version(registered_model, previous.version).aliases if a != alias]
        if others:
            client.set_model_version_tag(registered_model, previous.version, "stage", others[0])
        else:
            client.delete_model_version_tag(registered_model, previous.version, "stage")
