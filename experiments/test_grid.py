"""The experiment grid: one test per configuration of experiments/grid.yaml.

Each test trains its configuration as an MLflow run and checks, from what the
tracking server recorded, that the experiment finished completely."""

from mlflow_cv_yolo.runs.training_run import check_run


def test_grid(run_config, train_tracked, mlflow_client):
    run_id = train_tracked(run_config)
    assert check_run(mlflow_client, run_id, run_config.epochs) == []
