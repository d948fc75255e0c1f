"""The experiment grid: one test per configuration of experiments/grid.yaml.

Each test trains its configuration as an MLflow run and checks, from what the
tracking server recorded, that the experiment finished completely; a run that
successive halving stopped (--prune) is complete up to its rung, and skipped."""

import pytest

from fixtures.controller import PRUNED
from mlflow_cv_yolo.runs.pruner import pruned
from mlflow_cv_yolo.runs.training_run import check_run


def test_grid(run_config, train_tracked, mlflow_client, record_property):
    run_id = train_tracked(run_config)
    run = mlflow_client.get_run(run_id)
    assert check_run(mlflow_client, run_id, run_config.epochs, run=run) == []
    if stopped := pruned(run):
        record_property(PRUNED, stopped.tag())
        pytest.skip(stopped.reason())
