"""No generated secret on display: not in any process's command line, pid file,
repr, MLflow param or tag, nor in any file a session writes outside its stack
folder; MariaDB's root has a password; the credentials files are private."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pymysql
import pytest
from helpers import MICRO, REPO, pid_groups, suite_command, suite_env
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack.base import load_credentials
from mlflow_cv_yolo.stack.local import LocalStack
from mlflow_cv_yolo.stack.mysql import MySQLServer

SECRETS = ("mysql_password", "mysql_root_password", "s3_secret_key")


def secrets_of(state: Path) -> dict[str, str]:
    creds = json.loads((state / "credentials.json").read_text())
    return {name: creds[name] for name in SECRETS}


def shown(secrets: dict[str, str], text: str | bytes) -> list[str]:
    """The names of the secrets that appear in `text`."""
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in secrets.items() if value.encode() in data]


def ps_args() -> str:
    """Every command line, whole (-ww: without it ps cuts them at 80 columns)."""
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def test_a_session_shows_no_secret(tmp_path):
    """A real `--stack local` session on the default (DVC) dataset, promotion
    included; `ps` is read all along."""
    state = tmp_path / "stack" / "local"
    output = tmp_path / "session.log"
    with open(output, "w") as out:
        proc = subprocess.Popen(
            suite_command("--stack", "local", *MICRO, tmp_path=tmp_path),
            cwd=REPO,
            env=suite_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        snapshots = []
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            snapshots.append(ps_args())
            time.sleep(0.3)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    assert proc.returncode == 0, output.read_text()[-3000:]
    secrets = secrets_of(state)
    # The scan saw the stack: its server processes, their arguments included.
    assert any(
        str(state / "mysql" / "data") in s
        and f"{state / 's3' / 'objects'}" in s
        and " server --artifacts-destination s3://mlflow/artifacts" in s
        for s in snapshots
    )
    assert [s for s in snapshots if shown(secrets, s)] == []

    written = [p for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "stack") not in p.parents]
    written += [REPO / ".dvc" / "config.local", *state.rglob("*.pid")]
    assert len(written) > 20 and (tmp_path / "session.log") in written  # reports, runs, the terminal output
    assert {str(p): shown(secrets, p.read_bytes()) for p in written if shown(secrets, p.read_bytes())} == {}
    assert "credentialpath" in (REPO / ".dvc" / "config.local").read_text()

    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:
        client = MlflowClient(info.tracking_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        versions = client.search_model_versions()
        assert len(runs) >= 2 and versions  # the session's run, a configuration's run; the promoted version
        values = [v for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
        values += [v for m in versions for v in (m.description or "", *m.tags.values())]
        assert [v for v in values if shown(secrets, v)] == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = LocalStack(tmp_path_factory.mktemp("secrets"), log=lambda _: None)
    info = stack.start("test")
    yield stack, info
    stack.stop()


def group_members(pgid: int) -> list[str]:
    """Command lines of every process in group `pgid`."""
    members = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                members.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (ProcessLookupError, FileNotFoundError):
            continue
    return members


def test_a_running_stack_shows_no_secret(stack):
    stack, info = stack
    secrets = secrets_of(stack.state_dir)
    for text in (repr(info), str(info.endpoints), repr(stack.services)):
        assert shown(secrets, text) == [], text
    mlflow_group = int((stack.state_dir / "mlflow" / "mlflow.pid").read_text().split()[0])
    # leader and uvicorn: no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false)
    assert len(group_members(mlflow_group)) == 2, group_members(mlflow_group)
    for pgid in pid_groups(stack.state_dir):
        assert [args for args in group_members(pgid) if shown(secrets, args)] == []
    for path in stack.state_dir.rglob("*.pid"):
        assert shown(secrets, path.read_bytes()) == [], path
    for path in (stack.state_dir / "credentials.json", stack.state_dir / "aws-credentials"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((stack.state_dir / "mysql").stat().st_mode) == 0o700


def test_mariadb_root_needs_the_generated_password(stack):
    stack, info = stack
    root_password = secrets_of(stack.state_dir)["mysql_root_password"]
    for host in ("127.0.0.1", None):  # TCP, and the socket
        where = (
            {"host": host, "port": info.mysql.port}
            if host
            else {"unix_socket": str(stack.state_dir / "mysql" / "mysqld.sock")}
        )
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql.connect(user="root", password="", connect_timeout=5, **where)
        assert refused.value.args[0] == 1045  # access denied
        pymysql.connect(user="root", password=root_password, connect_timeout=5, **where).close()


def test_a_kept_datadir_whose_root_has_no_password_gets_one(tmp_path):
    """A datadir from an earlier version: root without a password."""
    server = MySQLServer(tmp_path, user="u", password="p", root_password="r00t", log=lambda _: None)
    server.start()
    conn = pymysql.connect(unix_socket=str(server.socket), user="root", password="r00t")
    with conn.cursor() as cur:
        cur.execute("SELECT host FROM mysql.user WHERE user = 'root'")
        for (host,) in cur.fetchall():
            cur.execute("ALTER USER 'root'@%s IDENTIFIED BY ''", (host,))
    conn.close()
    server.stop()
    server.start()
    try:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(unix_socket=str(server.socket), user="root", password="")
        conn = pymysql.connect(unix_socket=str(server.socket), user="root", password="r00t")
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = 'root' AND authentication_string = ''")
            assert cur.fetchone() == (0,)
        conn.close()
    finally:
        server.stop()


def test_credentials_of_an_earlier_version_gain_a_root_password_and_keep_the_rest(tmp_path):
    old = {"mysql_user": "mlflow", "mysql_password": "a" * 32, "s3_access_key": "mlflowkey", "s3_secret_key": "b" * 40}
    (tmp_path / "credentials.json").write_text(json.dumps(old))
    creds = load_credentials(tmp_path)
    assert {k: creds[k] for k in old} == old and len(creds["mysql_root_password"]) == 32
    assert json.loads((tmp_path / "credentials.json").read_text()) == creds
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert load_credentials(tmp_path) == creds  # generated once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.json"]  # no temp file left
