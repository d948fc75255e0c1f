"""`--stack docker` for real, on whatever Docker-compatible engine answers
(Docker Desktop; in CI here, Podman set up by scripts/podman/setup.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import MICRO, engine_missing, run_suite
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack import docker_engine_answers
from mlflow_cv_yolo.stack.containers import DockerStack


@pytest.fixture(scope="module", autouse=True)
def docker_engine():
    why_not = docker_engine_answers()
    if why_not is not None:
        engine_missing(f"{why_not}: run scripts/podman/setup.sh and source scripts/podman/env, or start Docker")


def containers_using(folder: Path) -> list[str]:
    """Containers (running or not) with a volume under `folder`: the stack's, whose
    data lives in its state folder; other sessions' containers on the engine don't count."""
    import docker

    client = docker.from_env()
    try:
        return [
            c.name
            for c in client.containers.list(all=True)
            if any(m.get("Source", "").startswith(str(folder)) for m in c.attrs.get("Mounts", []))
        ]
    finally:
        client.close()


def test_docker_stack_session_lands_runs_artifacts_and_model_and_leaves_no_container(tmp_path, data_yaml):
    result = run_suite(
        "--stack", "docker", "--data", str(data_yaml), *MICRO, "--registered-model", "docker-probe", tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stack: docker (--stack docker)" in result.stdout
    assert "metadata: mysql 127.0.0.1:" in result.stdout
    assert containers_using(tmp_path) == []  # every container the session started is gone

    # The data stayed under the stack folder: reopen it and read what the session recorded.
    with DockerStack(tmp_path / "stack", log=lambda _: None) as info:
        assert len(containers_using(tmp_path)) == 2  # what the checks before and after look for
        client = MlflowClient(info.tracking_uri)
        version = client.get_model_version_by_alias("docker-probe", "staging")
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["suite.stack"] == "docker"
        files = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
        assert files == {"weights/best.pt", "weights/last.pt"}
        # The objects themselves, read from the S3 container with boto3: they outlived
        # the session's container through the stack folder's s3/ volume.
        listing = info.s3.client().list_objects_v2(Bucket=info.s3.bucket)
        keys = [o["Key"] for o in listing.get("Contents", [])]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/weights/best.pt") for k in keys), keys[:20]
        conn = info.mysql.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM model_versions WHERE name = 'docker-probe'")
            assert cur.fetchone() == (1,)
        conn.close()
    assert containers_using(tmp_path) == []


def test_worker_crash_leaves_no_container(tmp_path, data_yaml):
    """Only the xdist controller starts containers; a worker that dies mid-run
    (os._exit: no teardown at all) leaves the controller's teardown intact."""
    plugin = tmp_path / "plugins" / "crash_gw1.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "import os\n\n\ndef pytest_runtest_call(item):\n"
        "    if os.environ.get('PYTEST_XDIST_WORKER') == 'gw1':\n        os._exit(3)\n"
    )
    result = run_suite(
        "--stack",
        "docker",
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2",
        "-n",
        "2",
        "-p",
        "crash_gw1",
        "--no-promote",
        tmp_path=tmp_path,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin.parent), os.environ.get("PYTHONPATH")]))},
    )
    output = result.stdout + result.stderr
    assert "crashed" in output, output[-3000:]
    assert result.returncode != 0
    assert containers_using(tmp_path) == []
