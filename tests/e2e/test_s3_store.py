"""Nothing acknowledged is lost: the S3 store writes every object through to its
folder before answering, so a kill -9 of S3, or of every service of a stack, keeps
every artifact; tested with real processes and real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest
from botocore.exceptions import ClientError
from helpers import group_alive, pid_groups, processes_of
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.stack import s3_store
from mlflow_cv_yolo.stack.local import LocalStack
from mlflow_cv_yolo.stack.process import free_port, port_in_use
from mlflow_cv_yolo.stack.s3 import S3Server

BIG = 9 * 1024 * 1024  # above boto3's 8 MB multipart threshold: the upload completes in parts


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        assert proc.poll() is None and time.monotonic() < deadline, f"exited with {proc.returncode}"
        time.sleep(0.1)


def client(port: int):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_store_runs_as_a_plain_script_and_keeps_what_it_acknowledged(tmp_path):
    """A copy of the file alone, outside the package (as in the CI image): writes,
    copies, multipart and deletes are on disk when answered; kill -9; a new process
    on the same folder serves exactly them."""
    script = shutil.copy(s3_store.__file__, tmp_path / "s3-server")
    data, port = tmp_path / "data", free_port()
    # The package made unimportable: the script must not need it.
    run = (
        f"import runpy, sys; sys.modules['mlflow_cv_yolo'] = None; runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    argv = [sys.executable, "-c", run, "server", str(data), "--address", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, proc)
        s3 = client(port)
        s3.create_bucket(Bucket="bkt")
        big = os.urandom(BIG)
        expected = {
            "bkt/plain.txt": b"hello",
            "bkt/deep/path/with space%25ü.bin": os.urandom(1000),
            "bkt/copy.txt": b"hello",
            "bkt/big.bin": big,
        }
        s3.put_object(Bucket="bkt", Key="plain.txt", Body=b"hello")
        s3.put_object(
            Bucket="bkt", Key="deep/path/with space%25ü.bin", Body=expected["bkt/deep/path/with space%25ü.bin"]
        )
        s3.copy_object(Bucket="bkt", Key="copy.txt", CopySource={"Bucket": "bkt", "Key": "plain.txt"})
        s3.upload_file(str(_write(tmp_path / "big", big)), "bkt", "big.bin")
        s3.put_object(Bucket="bkt", Key="gone/one", Body=b"1")
        s3.put_object(Bucket="bkt", Key="gone/two", Body=b"2")
        s3.delete_object(Bucket="bkt", Key="gone/one")
        s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "gone/two"}], "Quiet": True})
        with pytest.raises(ClientError, match="lies below the object 'plain.txt'"):
            s3.put_object(Bucket="bkt", Key="plain.txt/inside", Body=b"x")
        assert files(data) == expected  # on disk before any stop
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_port(port, proc)
        s3 = client(port)
        served = {
            f"bkt/{o['Key']}": s3.get_object(Bucket="bkt", Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket="bkt")["Contents"]
        }
        assert served == expected
    finally:
        proc.kill()
        output = proc.communicate()[0]
    assert "4 objects restored" in output, output


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def log_artifacts(tracking_uri: str, folder: Path) -> tuple[str, dict[str, bytes]]:
    """One run with small files and one big one (a multipart upload behind the server)."""
    written = {"notes/a.txt": b"a" * 10, "notes/b.json": b'{"b": 2}', "weights/big.pt": os.urandom(BIG)}
    for name, data in written.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment(f"durable-{uuid.uuid4().hex[:6]}")).info.run_id
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id)
    return run_id, written


def downloaded(tracking_uri: str, run_id: str, dest: Path) -> dict[str, bytes]:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(dest))
    return files(dest)


@pytest.mark.parametrize("victims", ["s3", "every service"])
def test_artifacts_survive_a_kill_9(tmp_path, victims):
    """kill -9 of the S3 process group (or of every service's group, as when the
    machine kills the whole session), then the stack restarted on the same folder:
    every artifact is there, byte for byte."""
    stack = LocalStack(tmp_path / "stack", log=lambda _: None)
    info = stack.start("test")
    try:
        run_id, written = log_artifacts(info.tracking_uri, tmp_path / "upload")
        state = stack.state_dir
        groups = pid_groups(state / "s3") if victims == "s3" else pid_groups(state)
        assert len(groups) == (1 if victims == "s3" else 3)
        for pgid in groups:
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
            for service in stack.services:
                service.alive()  # polls, so that our dead children are reaped
            time.sleep(0.1)
        assert [g for g in groups if group_alive(g)] == []
    finally:
        stack.stop()
    assert processes_of(tmp_path) == ""
    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:
        assert MlflowClient(info.tracking_uri).get_run(run_id).info.status == "FINISHED"
        assert downloaded(info.tracking_uri, run_id, tmp_path / "back") == written


def test_a_kept_snapshot_of_an_earlier_version_is_moved_into_the_store(tmp_path):
    """Earlier versions saved moto's bucket to s3/snapshot/ on a clean stop: its files
    become the store's objects, once, by rename."""
    snapshot = tmp_path / "s3" / "snapshot"
    (snapshot / "artifacts" / "1").mkdir(parents=True)
    (snapshot / "artifacts" / "1" / "model.pkl").write_bytes(b"kept")
    lines = []
    server = S3Server(tmp_path / "s3", access_key="k", secret_key="s", log=lines.append)
    endpoint = server.start()
    try:
        body = endpoint.client().get_object(Bucket="mlflow", Key="artifacts/1/model.pkl")["Body"].read()
        assert body == b"kept"
    finally:
        server.stop()
    assert not snapshot.exists()
    assert files(tmp_path / "s3" / "objects") == {"mlflow/artifacts/1/model.pkl": b"kept"}
    assert lines == [f"s3 (moto): moved the objects of {snapshot} to {tmp_path / 's3' / 'objects' / 'mlflow'}"]
