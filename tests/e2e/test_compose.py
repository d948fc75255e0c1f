"""compose.yaml: its structure always; brought up for real, with the suite run
against it (`--stack external`, logged in to MLflow's basic-auth app), when a compose
tool and an engine answer (in CI they must: CV_YOLO_REQUIRE_DOCKER=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml
from helpers import MICRO, REPO, engine_missing, run_suite
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack import docker_engine_answers

COMPOSE = REPO / "compose.yaml"


def compose_tool() -> list[str] | None:
    """`docker compose` (v2), else `docker-compose` (1.29, Debian's: CI points it at
    Podman's socket). podman-compose 1.0.3 is not used: it ignores `depends_on:
    condition:` and cannot express `network_mode: service:`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_env() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / "compose.env").read_text().splitlines()
        if line and not line.startswith("#")
    )


NO_TOOL = "no compose tool (docker compose, or docker-compose: apt-get install docker-compose) installed"


def test_compose_file_wires_a_healthy_localhost_stack():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"mysql", "s3", "create-bucket", "mlflow"}
    assert services["mysql"]["image"].startswith("${CV_YOLO_MYSQL_IMAGE:-mysql:8")
    assert "minio" in services["s3"]["image"] and "${CV_YOLO_S3_IMAGE" in services["s3"]["image"]
    for name in ("mysql", "s3", "mlflow"):
        assert "healthcheck" in services[name], name
    depends = services["mlflow"]["depends_on"]
    assert depends["mysql"] == {"condition": "service_healthy"}
    assert depends["create-bucket"] == {"condition": "service_completed_successfully"}
    assert services["create-bucket"]["depends_on"] == {"s3": {"condition": "service_healthy"}}
    # Presigned S3 URLs the server hands out must work from the host: mlflow lives in
    # s3's network namespace and signs for 127.0.0.1:9000, which s3 publishes.
    assert services["mlflow"]["network_mode"] == "service:s3"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "127.0.0.1:9000:9000" in services["s3"]["ports"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert "127.0.0.1:5000:5000" in ports
    command = services["mlflow"]["command"][0]
    assert "mysql+pymysql://" in command and "--artifacts-destination s3://" in command
    assert "--allowed-hosts" in command and "--disable-security-middleware" not in command
    # A shared server: MLflow's basic-auth app, its users on a volume, its admin from compose.env.
    assert command.startswith("exec mlflow server --app-name basic-auth ")
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert services["mlflow"]["volumes"] == [
        "./docker/mlflow/basic_auth.ini:/etc/mlflow/basic_auth.ini:ro",
        "mlflow-auth:/var/lib/mlflow-auth",
    ]
    auth = (REPO / "docker" / "mlflow" / "basic_auth.ini").read_text()
    assert "database_uri = sqlite:////var/lib/mlflow-auth/basic_auth.db" in auth and "admin_password" not in auth
    # Credentials come from the env file, not the compose file.
    assert all(s.get("env_file") == "compose.env" for s in services.values())
    env = compose_env()
    assert {
        "MYSQL_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    } <= set(env)
    assert not any(value in COMPOSE.read_text() for key, value in env.items() if "PASSWORD" in key or "KEY" in key)


def test_compose_tool_parses_the_file():
    tool = compose_tool()
    if tool is None:
        engine_missing(NO_TOOL)
    # `config` validates against the compose schema and resolves variables; it needs no engine.
    result = subprocess.run(
        [*tool, "-f", str(COMPOSE), "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CV_YOLO_")},
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["mysql"]["image"] == "mysql:8.4"
    assert resolved["s3"]["image"].startswith("quay.io/minio/minio:")
    assert resolved["mlflow"]["network_mode"] == "service:s3"
    published = {(p["host_ip"], str(p["published"])) if isinstance(p, dict) else p for p in resolved["s3"]["ports"]}
    assert ("127.0.0.1", "5000") in published or any("127.0.0.1:5000:5000" in str(p) for p in published)


def _wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3):
                return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"compose's MLflow did not answer {url}/health within {timeout:.0f} s")


def _project_leftovers(project: str) -> list[str]:
    import docker

    client = docker.from_env()
    try:
        label = f"com.docker.compose.project={project}"
        return (
            [c.name for c in client.containers.list(all=True, filters={"label": label})]
            + [v.name for v in client.volumes.list() if v.name.startswith(f"{project}_")]
            + [n.name for n in client.networks.list() if n.name.startswith(f"{project}_")]
        )
    finally:
        client.close()


def test_suite_runs_against_compose_and_down_leaves_nothing(tmp_path, data_yaml, monkeypatch):
    tool, why_not = compose_tool(), docker_engine_answers()
    if tool is None or why_not is not None:
        engine_missing(why_not or NO_TOOL)
    project = f"cvyolo{uuid.uuid4().hex[:6]}"
    compose = [*tool, "-p", project, "-f", str(COMPOSE)]
    url = "http://127.0.0.1:5000"
    try:
        up = subprocess.run([*compose, "up", "-d"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        _wait_healthy(url, timeout=240)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the basic-auth app guards the API
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401
        env = compose_env()
        credentials = {
            "MLFLOW_TRACKING_USERNAME": env["MLFLOW_AUTH_ADMIN_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": env["MLFLOW_AUTH_ADMIN_PASSWORD"],
        }
        result = run_suite(
            "--stack",
            "external",
            "--data",
            str(data_yaml),
            *MICRO,
            "--registered-model",
            "compose-probe",
            env={"MLFLOW_TRACKING_URI": url, **credentials},
            tmp_path=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert credentials["MLFLOW_TRACKING_PASSWORD"] not in result.stdout + result.stderr
        for name, value in credentials.items():  # this process's client logs in the same way
            monkeypatch.setenv(name, value)
        client = MlflowClient(url)
        version = client.get_model_version_by_alias("compose-probe", "staging")
        run = client.get_run(version.run_id)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} == {
            "weights/best.pt",
            "weights/last.pt",
        }
        # A client that takes the server's presigned S3 URLs (MLflow 3's default for
        # S3 artifacts) can follow them from the host: they name 127.0.0.1:9000.
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "true")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        local = client.download_artifacts(run.info.run_id, "weights/best.pt", str(tmp_path))
        assert os.path.getsize(local) > 0
    finally:
        if tool == ["docker-compose"]:
            # docker-compose 1.x removes containers in parallel, and Podman refuses to
            # remove s3 while mlflow (in s3's network namespace) exists: mlflow goes first.
            # `docker compose` v2 removes dependents first by itself.
            subprocess.run([*compose, "rm", "--stop", "--force", "mlflow"], cwd=REPO, capture_output=True, timeout=300)
        down = subprocess.run([*compose, "down", "-v"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert _project_leftovers(project) == []
