"""A tracking server behind MLflow's basic-auth app, as compose.yaml offers for a shared
server (and as the CI gate's persistent server may be): the suite logs in with
MLFLOW_TRACKING_USERNAME/PASSWORD from the environment, and the password appears
nowhere the suite prints, records or writes."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
from helpers import MICRO, run_suite
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack.mlflow_server import health
from mlflow_cv_yolo.stack.process import ServiceProcess, free_port

ADMIN = "admin"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` on SQLite and a local artifact folder; the
    admin's password is generated and given through the environment, never argv."""
    folder = tmp_path_factory.mktemp("auth-server")
    config = folder / "basic_auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'users.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    password, port = secrets.token_hex(12), free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = ServiceProcess(
        "mlflow-auth",
        [
            str(mlflow),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        folder,
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        },
        log=lambda _: None,
    )
    url = f"http://127.0.0.1:{port}"
    server.start()
    try:
        server.wait_ready(lambda: health(url), timeout=180)
        yield url, password
    finally:
        server.stop()


def test_suite_logs_in_from_the_environment_and_records_no_password(auth_server, data_yaml, tmp_path, monkeypatch):
    url, password = auth_server
    credentials = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
    result = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--registered-model",
        "auth-probe",
        env={"MLFLOW_TRACKING_URI": url, **credentials},
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stack: external (MLFLOW_TRACKING_URI is set)" in result.stdout
    assert password not in result.stdout + result.stderr

    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(url)
    version = client.get_model_version_by_alias("auth-probe", "staging")
    session = client.get_run(version.run_id).data.tags["suite.session"]
    experiment = client.get_experiment_by_name("cv_yolo_tiny").experiment_id
    runs = client.search_runs([experiment], f"tags.`suite.session` = '{session}'")
    assert sorted(r.data.tags["suite.kind"] for r in runs) == ["grid", "session"]
    for run in runs:
        assert not any(password in f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    written = [p for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert written == []  # reports, decision records, ultralytics' folders


def test_without_credentials_the_server_turns_the_suite_away(auth_server, data_yaml, tmp_path):
    url, _ = auth_server
    result = run_suite("--data", str(data_yaml), *MICRO, env={"MLFLOW_TRACKING_URI": url}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "401" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained
