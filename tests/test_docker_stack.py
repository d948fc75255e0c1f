"""`--stack docker` for real, on whatever Docker-compatible engine answers
(Docker Desktop; in CI here, Podman set up by ci/podman/setup.sh)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack.docker import DockerStack
from mlflow_cv_yolo.stack.providers import docker_engine_answers

from helpers import MICRO, run_suite

why_not = docker_engine_answers()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"{why_not}: run ci/podman/setup.sh and source "
                                                              "ci/podman/env, or start Docker")


def containers() -> list[str]:
    import docker

    client = docker.from_env()
    try:
        return [c.name for c in client.containers.list(all=True)]
    finally:
        client.close()


def test_docker_stack_session_lands_runs_artifacts_and_model_and_leaves_no_container(tmp_path, data_yaml):
    before = containers()
    result = run_suite("--stack", "docker", "--data", str(data_yaml), *MICRO, "--registered-model", "docker-probe",
                       tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stack: docker (--stack docker)" in result.stdout
    assert "metadata: mysql 127.0.0.1:" in result.stdout
    assert containers() == before  # every container the session started is gone

    # The data stayed under the stack folder: reopen it and read what the session recorded.
    with DockerStack(tmp_path / "stack", log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        version = client.get_model_version_by_alias("docker-probe", "staging")
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["suite.stack"] == "docker"
        files = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
        assert files == {"weights/best.pt", "weights/last.pt"}
        conn = info.mysql.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM model_versions WHERE name = 'docker-probe'")
            assert cur.fetchone() == (1,)
        conn.close()
    assert containers() == before
