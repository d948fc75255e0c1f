"""The stack providers against real processes: MariaDB, an S3 server, mlflow server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from helpers import (
    MICRO,
    REPO,
    group_alive,
    pid_groups,
    run_suite,
    suite_command,
    suite_env,
)
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack import ServiceError, choose, docker_engine_answers
from mlflow_cv_yolo.stack.base import Stack, start_mlflow_on
from mlflow_cv_yolo.stack.embedded import EmbeddedStack
from mlflow_cv_yolo.stack.external import ExternalStack
from mlflow_cv_yolo.stack.local import LocalStack
from mlflow_cv_yolo.stack.mysql import MySQLEndpoint, MySQLServer
from mlflow_cv_yolo.stack.process import ServiceProcess, free_port
from mlflow_cv_yolo.stack.s3 import S3Endpoint


def test_local_stack_records_in_mysql_and_s3(local_stack):
    """A run logged through the server lands as rows in MySQL and objects in the bucket;
    clients need no S3 credentials (the server proxies artifacts)."""
    client = MlflowClient(local_stack.tracking_uri)
    experiment_id = client.create_experiment(f"stack-{time.time_ns()}")
    run = client.create_run(experiment_id, run_name="probe")
    client.log_param(run.info.run_id, "answer", "42")
    client.log_metric(run.info.run_id, "score", 0.5, step=3)
    mlflow.set_tracking_uri(local_stack.tracking_uri)
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_text("hello", "notes/hello.txt")

    conn = local_stack.mysql.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT name, status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("probe", "FINISHED")
        cur.execute("SELECT value FROM params WHERE run_uuid = %s AND `key` = 'answer'", (run.info.run_id,))
        assert cur.fetchone() == ("42",)
        cur.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND `key` = 'score'", (run.info.run_id,))
        assert cur.fetchone() == (3, 0.5)
    conn.close()

    keys = [o["Key"] for o in local_stack.s3.client().list_objects_v2(Bucket=local_stack.s3.bucket)["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys
    env_without_s3 = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    try:
        assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/hello.txt") == "hello"
    finally:
        os.environ.update(env_without_s3)


def test_secrets_stay_out_of_endpoints(local_stack):
    shown = " ".join(local_stack.endpoints.values())
    assert local_stack.mysql.password not in shown and local_stack.s3.secret_key not in shown
    assert local_stack.tracking_uri.startswith("http://127.0.0.1:")


def test_embedded_stack_keeps_runs_across_restarts(tmp_path):
    with EmbeddedStack(tmp_path, log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        run_id = client.create_run(client.create_experiment("keep")).info.run_id
    groups = pid_groups(tmp_path)
    assert groups == []  # pid files removed on stop
    with EmbeddedStack(tmp_path, log=lambda _: None) as info:
        assert MlflowClient(info.tracking_uri).get_run(run_id).info.run_id == run_id


def test_local_stack_restart_keeps_runs_and_artifacts(tmp_path):
    with LocalStack(tmp_path, log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        run_id = client.create_run(client.create_experiment("keep")).info.run_id
        client.log_text(run_id, "kept", "kept.txt")
    with LocalStack(tmp_path, log=lambda _: None) as info:
        mlflow.set_tracking_uri(info.tracking_uri)
        assert mlflow.artifacts.load_text(f"runs:/{run_id}/kept.txt") == "kept"


def test_leftover_from_killed_session_is_stopped(tmp_path):
    """A service whose session died without teardown (SIGKILL) is found by its pid
    file and stopped by the next start."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    session = (
        "import sys; from pathlib import Path; from mlflow_cv_yolo.stack.process import ServiceProcess; "
        f"ServiceProcess('sleeper', {sleeper!r}, Path({str(tmp_path)!r})).start()"
    )
    subprocess.run([sys.executable, "-c", session], check=True)  # exits, leaving the service behind
    orphan = int((tmp_path / "sleeper.pid").read_text().split()[0])
    assert group_alive(orphan)
    lines = []
    successor = ServiceProcess("sleeper", sleeper, tmp_path, log=lines.append)
    successor.start()
    try:
        assert not group_alive(orphan)
        assert lines == [f"sleeper: stopping process group {orphan} left by an earlier session"]
    finally:
        successor.stop()


def test_stop_stops_every_service_at_once_and_names_one_that_fails(tmp_path):
    """No service waits for another to stop, and one that raises leaves none running."""
    together = threading.Barrier(3, timeout=10)  # three stops one after another would break it
    stopped = []

    class Service:
        def __init__(self, name: str, error: str | None = None):
            self.name, self.error = name, error

        def stop(self) -> None:
            together.wait()
            stopped.append(self.name)
            if self.error:
                raise RuntimeError(self.error)

    lines = []
    stack = Stack(tmp_path, log=lines.append)
    stack._started = [Service("mysql"), Service("s3", "port 9000 still bound"), Service("mlflow")]
    stack.stop()
    assert sorted(stopped) == ["mlflow", "mysql", "s3"]
    assert lines == ["stack: some services did not stop cleanly: Service: port 9000 still bound"]
    stack.stop()  # nothing is left to stop: the failed one too is off the list
    assert sorted(stopped) == ["mlflow", "mysql", "s3"]


def test_a_database_that_refuses_the_mlflow_start_is_a_service_error(tmp_path):
    """A database that answers its container's readiness check but not a connection
    (seen under load in CI) is the stack's failure, one line, not a session traceback."""
    port = free_port()
    mysql = MySQLEndpoint("127.0.0.1", port, "mlflow", "pw", "mlflow")
    s3 = S3Endpoint("http://127.0.0.1:9", "key", "secret", "mlflow")
    with pytest.raises(ServiceError) as raised:
        start_mlflow_on(Stack(tmp_path), mysql, s3, reset=lambda: None)
    assert str(raised.value) == (
        f"mysql at 127.0.0.1:{port}: cannot connect: Can't connect to MySQL server on "
        f"'127.0.0.1' ([Errno 111] Connection refused)"
    )


def test_mysql_port_taken_gives_one_clear_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = MySQLServer(tmp_path, user="u", password="p", root_password="r", port=port, log=lambda _: None)
        with pytest.raises(ServiceError, match=f"mysql: port {port} on 127.0.0.1 is already taken"):
            server.start()


def test_missing_mysql_binary_is_named(tmp_path):
    server = MySQLServer(tmp_path, user="u", password="p", root_password="r", binary=None, log=lambda _: None)
    server.binary = None
    with pytest.raises(ServiceError, match="no mariadbd or mysqld binary"):
        server.start()


def test_service_that_dies_reports_its_log(tmp_path):
    proc = ServiceProcess("broken", [sys.executable, "-c", "print('bad config: nope'); raise SystemExit(3)"], tmp_path)
    proc.start()
    with pytest.raises(ServiceError, match="broken exited with status 3") as err:
        proc.wait_ready(lambda: False, timeout=10)
    assert "bad config: nope" in str(err.value)


def test_external_stack_unreachable_is_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServiceError, match=f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}: no MLflow server"):
        ExternalStack(tmp_path, url=f"http://127.0.0.1:{port}").start()


def test_auto_prefers_external_then_docker_then_local(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert choose("auto") == ("external", "MLFLOW_TRACKING_URI is set")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    kind, reason = choose("auto")
    if docker_engine_answers() is None:
        assert kind == "docker"
    else:
        assert kind == "local" and "no Docker engine answers" in reason and "mariadbd" in reason


def test_suite_on_local_stack_leaves_no_process(tmp_path, data_yaml):
    """`--stack local` end to end: the session starts MariaDB, S3 and MLflow itself
    and stops every one of them."""
    result = run_suite("--stack", "local", "--data", str(data_yaml), *MICRO, "--no-promote", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stack: local (--stack local)" in result.stdout
    assert "metadata: mysql 127.0.0.1:" in result.stdout
    state = tmp_path / "stack" / "local"
    assert (state / "mysql" / "data" / "mlflow").is_dir()  # the database survived for the UI
    assert list(state.rglob("*.pid")) == [] or [p.name for p in state.rglob("*.pid")] == ["mysqld.pid"]
    out = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
    assert out == ""


def test_ctrl_c_stops_the_stack(tmp_path, data_yaml):
    """SIGINT in the middle of a session stops every process the stack started."""
    command = suite_command(
        "--stack", "local", "--data", str(data_yaml), *MICRO, "--set", "epochs=30", "--no-promote", tmp_path=tmp_path
    )
    proc = subprocess.Popen(
        command, cwd=REPO, env=suite_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    state = tmp_path / "stack" / "local"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (state / "mlflow" / "schema-ready").exists():
        time.sleep(0.5)
    groups = pid_groups(state)
    assert len(groups) == 3, groups  # mysql, s3, mlflow
    # Interrupt once training is under way, not at a fixed delay. That is where a Ctrl-C
    # usually lands, and where Python may drop its KeyboardInterrupt in a finaliser
    # (CI once saw a session train on and exit 0); interrupts.check must catch that.
    while time.monotonic() < deadline and proc.poll() is None and not list((tmp_path / "runs").rglob("results.csv")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output[-2000:]
    assert [g for g in groups if group_alive(g)] == [], output[-2000:]


def test_interrupted_first_migration_starts_from_a_fresh_database(tmp_path):
    """Tables without the marker of a first healthy start = a half-migrated schema."""
    stack = LocalStack(tmp_path, log=lambda _: None)
    creds = stack.credentials()
    mysql = MySQLServer(
        tmp_path / "local" / "mysql",
        user=creds["mysql_user"],
        password=creds["mysql_password"],
        root_password=creds["mysql_root_password"],
        log=lambda _: None,
    )
    endpoint = mysql.start()
    conn = endpoint.connect()
    with conn.cursor() as cur:  # what an interrupted alembic run leaves: some tables, no usable schema
        cur.execute("CREATE TABLE experiments (experiment_id INT PRIMARY KEY)")
    conn.close()
    mysql.stop()

    lines = []
    with LocalStack(tmp_path, log=lines.append) as info:
        client = MlflowClient(info.tracking_uri)
        assert client.get_experiment(client.create_experiment("after-reset")).name == "after-reset"
    assert any("an interrupted first migration?" in line and "starting it afresh" in line for line in lines)


def test_ui_command_reopens_a_kept_stack(tmp_path):
    with EmbeddedStack(tmp_path, log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        experiment = client.create_experiment("kept")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_cv_yolo", "ui", "--stack", "embedded", "--stack-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"MLflow UI on the embedded stack in {tmp_path}: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].split()[0]
        assert MlflowClient(url).get_experiment(experiment).name == "kept"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert pid_groups(tmp_path) == []
