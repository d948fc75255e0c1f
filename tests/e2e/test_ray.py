"""`--executor ray` with a real Ray: a Ray instance the session starts (and a Ctrl-C
that must leave none of it running), a cluster started with `ray start --head` and
joined by address (and a worker killed with SIGKILL mid-training), the same results
as the local executor's, and the dataset fetched by its DVC digest onto a node."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MICRO, Output, group_alive, processes_of, run_suite, session_of, session_runs, start_suite, wait_for
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.data import lineage
from mlflow_cv_yolo.data.node_cache import DataSource, DataUnreachable, fetch, locate
from mlflow_cv_yolo.preflight import InputError
from mlflow_cv_yolo.settings import ExecutorSettings
from mlflow_cv_yolo.stack.process import free_port, kill_group, port_in_use
from mlflow_cv_yolo.train import ray_cluster

# Two seeds at one epoch: the grid the local and the Ray executor must agree on.
SEEDS = ("--set", "seed=1,2")
COMPARED = ("best/mAP50-95", "best/mAP50", "train/box_loss", "train/cls_loss", "val/box_loss", "val/cls_loss")


@pytest.fixture(scope="module", autouse=True)
def ray_installed():
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("Ray is not installed: pip install -e '.[ray]'", pytrace=False)


@pytest.fixture(scope="module")
def client(local_stack) -> MlflowClient:
    return MlflowClient(local_stack.tracking_uri)


@pytest.fixture(scope="module")
def stack_env(local_stack) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}


def results(client, session: str, names=("seed1", "seed2")) -> dict[str, dict[str, float]]:
    runs = session_runs(client, session)
    return {name: {k: runs[name].data.metrics[k] for k in COMPARED} for name in names}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory, client, stack_env, data_yaml):
    """The grid trained by the local executor, one thread a run as a Ray task of one
    CPU trains (float sums over other thread counts round otherwise)."""
    result = run_suite(
        "-n",
        "2",
        "--data",
        str(data_yaml),
        *MICRO,
        *SEEDS,
        "--no-promote",
        env=stack_env,
        tmp_path=tmp_path_factory.mktemp("local"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return results(client, session_of(result.stdout))


def test_a_session_started_instance_trains_like_the_local_executor_and_ctrl_c_leaves_nothing(
    tmp_path, client, stack_env, data_yaml, local_results
):
    """One session on the Ray instance it starts (this machine's 2 CPUs): seeds 1 and 2
    finish with the local executor's results exactly; Ctrl-C during seed 3 cancels its
    task, ends its run KILLED, and the instance (GCS, raylet, workers) is gone."""
    proc = start_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2,3",
        "--no-promote",
        "--executor",
        "ray",
        env=stack_env,
        tmp_path=tmp_path,
    )
    output = Output(proc)
    session = wait_for(
        lambda: next((line.split()[1].rstrip(",") for line in output.lines if line.startswith("session: ")), None),
        timeout=180,
        what="the session id",
        proc=proc,
        output=output,
    )
    pid_line, argv = (tmp_path / "stack" / "ray" / "ray-head.pid").read_text().splitlines()
    head, temp_dir = int(pid_line), json.loads(argv)[json.loads(argv).index("--temp-dir") + 1]
    assert group_alive(head) and "gcs_server" in processes_of(Path(temp_dir))
    training = lambda: (run := session_runs(client, session).get("seed3")) and "ray.worker_pid" in run.data.tags  # noqa: E731
    wait_for(training, timeout=300, what="seed3 training in a Ray task", proc=proc, output=output, interval=0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == pytest.ExitCode.INTERRUPTED, output.wait_closed(10)[-3000:]
    text = output.wait_closed(10)
    assert "ray: started on this machine, 1 node(s), 2 CPU, 0 GPU; each run 1 CPU, 0 GPU" in text
    # The instance's process group (GCS, raylet, agents, workers) and anything naming its folder are gone.
    assert not group_alive(head) and processes_of(Path(temp_dir)) == ""
    runs = session_runs(client, session)
    assert {name: run.info.status for name, run in runs.items() if name.startswith("seed")} == {
        "seed1": "FINISHED",
        "seed2": "FINISHED",
        "seed3": "KILLED",
    }
    assert runs["seed3"].data.tags["suite.end_reason"] == "interrupted (Ctrl-C or SIGTERM): its Ray task was cancelled"
    assert results(client, session) == local_results
    assert "gcs_client" not in text and "Traceback" not in text  # nothing of Ray's in the terminal


def test_a_controller_killed_with_sigkill_takes_its_ray_instance_along(tmp_path, stack_env, data_yaml):
    """No stop() runs after SIGKILL: the watchdog the session started beside its Ray
    instance sees the controller gone and stops the instance's whole process group."""
    proc = start_suite(
        "--data", str(data_yaml), *MICRO, "--no-promote", "--executor", "ray", env=stack_env, tmp_path=tmp_path
    )
    output = Output(proc)
    wait_for(
        lambda: "ray: started on this machine" in output.text,
        timeout=180,
        what="the Ray header line",
        proc=proc,
        output=output,
    )
    head = int((tmp_path / "stack" / "ray" / "ray-head.pid").read_text().split()[0])
    proc.kill()
    proc.wait(timeout=30)
    wait_for(lambda: not group_alive(head), timeout=30, what="the Ray instance's process group to end")


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A cluster as a user starts one (`ray start --head`, in token mode with a token of
    its own, which the sessions joining it get too), on free ports, stopped after with
    its whole process group."""
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    port = free_port()
    temp = Path(f"/tmp/cvray-test-{port}")
    ray = Path(sys.executable).with_name("ray")
    with (tmp_path / "ray-head.log").open("w") as log:
        proc = subprocess.Popen(
            [
                str(ray),
                "start",
                "--head",
                "--block",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--temp-dir",
                str(temp),
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--ray-client-server-port",
                str(free_port()),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
        try:
            wait_for(lambda: port_in_use(port), timeout=120, what="ray start --head", proc=proc)
            yield f"127.0.0.1:{port}"
        finally:
            kill_group(proc.pid, grace=2.0, reap=proc.poll)
            shutil.rmtree(temp, ignore_errors=True)


def test_a_joined_cluster_retries_a_killed_worker_into_the_same_run(tmp_path, client, stack_env, data_yaml, ray_head):
    """A cluster joined by address, from an xdist worker; the run's Ray worker is killed
    with SIGKILL after its first epoch: Ray runs the task again, into the same run,
    which ends FINISHED once with each epoch logged once; the cluster stays up."""
    proc = start_suite(
        "-n",
        "2",
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "epochs=2",
        "--no-promote",
        "--executor",
        "ray",
        "--ray-address",
        ray_head,
        env=stack_env,
        tmp_path=tmp_path,
    )
    output = Output(proc)
    session = wait_for(
        lambda: next((line.split()[1].rstrip(",") for line in output.lines if line.startswith("session: ")), None),
        timeout=180,
        what="the session id",
        proc=proc,
        output=output,
    )

    def first_epoch():
        run = session_runs(client, session).get("base")
        return run and [m.step for m in client.get_metric_history(run.info.run_id, "mAP50-95")] == [1] and run

    run = wait_for(first_epoch, timeout=300, what="the first epoch", proc=proc, output=output, interval=0.3)
    killed = int(run.data.tags["ray.worker_pid"])
    os.kill(killed, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, output.wait_closed(10)[-4000:]
    text = output.wait_closed(10)
    assert f"ray: joined at {ray_head}, 1 node(s), 2 CPU, 0 GPU; each run 1 CPU, 0 GPU" in text
    runs = session_runs(client, session)
    assert sorted(runs) == ["base", f"session-{session}"]  # no second run for the retry
    retried = runs["base"]
    assert retried.info.run_id == run.info.run_id and retried.info.status == "FINISHED"
    assert int(retried.data.tags["ray.worker_pid"]) != killed
    assert sorted(m.step for m in client.get_metric_history(retried.info.run_id, "mAP50-95")) == [1, 2]
    assert port_in_use(int(ray_head.rsplit(":", 1)[1]))  # a joined cluster is left running


def test_options_of_the_ray_executor_fail_in_one_line_before_anything_starts(tmp_path):
    for args, line in [
        (["--executor", "local", "--ray-address", "auto"], "ERROR: --ray-address: only with --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run: invalid gpus value: '-1'"),
    ]:
        result = run_suite(*MICRO, *args, tmp_path=tmp_path)
        assert result.returncode == 4, result.stdout + result.stderr
        assert line in result.stderr, result.stderr
        assert not (tmp_path / "stack").exists()


def test_a_cluster_beyond_this_machine_needs_a_tracking_server_it_can_reach(monkeypatch):
    """Pure logic: which stacks nodes on other machines can track to."""
    cluster = ray_cluster.RayCluster(ExecutorSettings("ray", "ray://10.0.0.5:10001"), {}, Path("/nonexistent"))
    cluster.node_ips = ["10.0.0.5", "10.0.0.6"]
    for kind in ("embedded", "local", "docker"):
        with pytest.raises(InputError) as err:
            cluster.check_reachable(kind, None)
        assert str(err.value) == (
            f"--ray-address ray://10.0.0.5:10001: the cluster has nodes on other machines (10.0.0.5, 10.0.0.6) "
            f"that cannot reach the tracking server on 127.0.0.1 (--stack {kind} binds to this machine's loopback): "
            "use --stack external with MLFLOW_TRACKING_URI set to a server the nodes can reach"
        )
    with pytest.raises(InputError):
        cluster.check_reachable("external", "http://localhost:5000")
    cluster.check_reachable("external", "http://mlflow.internal:5000")  # reachable: no error
    cluster.node_ips = ["127.0.0.1"]
    cluster.check_reachable("local", None)  # one machine: loopback serves it

    monkeypatch.setattr(ray_cluster.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        InputError,
        match=r"^--executor ray: Ray is not installed in this environment: "
        r"pip install -e \.\[ray\]$",
    ):
        ray_cluster.check_settings(ExecutorSettings("ray"))


def test_a_node_without_the_files_fetches_the_dataset_by_its_dvc_digest(tmp_path, local_stack, tiny_coco, data_yaml):
    """The dataset pushed to a DVC remote on the stack's S3 is pulled by its digest into
    a node's cache, checked, and found there the next time; without a remote, a node
    that cannot see the files says so in one line."""
    project = tmp_path / "project"
    shutil.copytree(tiny_coco, project / "data" / "tiny_coco")
    shutil.copy(data_yaml, project / "data" / "tiny_coco.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data/tiny_coco"], cwd=project, check=True)
    s3 = local_stack.s3
    lineage.configure_remote(
        project,
        url=f"s3://{s3.bucket}/dvc-test-{tmp_path.name}",
        endpoint_url=s3.endpoint_url,
        credential_path=s3.credentials_file,
    )
    lineage.push(project)
    import yaml

    md5 = yaml.safe_load((project / "data" / "tiny_coco.dvc").read_text())["outs"][0]["md5"]
    source = DataSource(
        yaml_path=str(tmp_path / "elsewhere" / "tiny_coco.yaml"),
        yaml_text=data_yaml.read_text(),
        md5=md5,
        folder="tiny_coco",
        remote_url=f"s3://{s3.bucket}/dvc-test-{tmp_path.name}",
        endpoint_url=s3.endpoint_url,
        credential_path=str(s3.credentials_file),
    )
    cache = tmp_path / "node-cache"
    fetched = locate(source, cache)
    assert fetched == cache / md5 / "data.yaml" and fetched.read_text() == data_yaml.read_text()
    original = sorted(p.relative_to(tiny_coco) for p in tiny_coco.rglob("*") if p.is_file())
    assert (
        sorted(p.relative_to(cache / md5 / "tiny_coco") for p in (cache / md5 / "tiny_coco").rglob("*") if p.is_file())
        == original
    )
    assert all((cache / md5 / "tiny_coco" / p).read_bytes() == (tiny_coco / p).read_bytes() for p in original)
    assert fetch(source, cache) == fetched  # verified once: the cache answers
    assert [p.name for p in cache.iterdir()] == [md5]

    # An altered object on the remote is refused, not trained on.
    first = sorted((tiny_coco / "labels").rglob("*.txt"))[0].relative_to(tiny_coco).as_posix()
    remote = s3.client()
    key = next(
        o["Key"]
        for page in remote.get_paginator("list_objects_v2").paginate(
            Bucket=s3.bucket, Prefix=f"dvc-test-{tmp_path.name}/"
        )
        for o in page.get("Contents", [])
        if remote.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read() == (tiny_coco / first).read_bytes()
    )
    remote.put_object(Bucket=s3.bucket, Key=key, Body=b"0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataUnreachable) as err:
        fetch(source, tmp_path / "other-node")
    assert str(err.value) == (
        f"dataset {md5}: the files pulled from {source.remote_url} do not match its listing: {first}: altered"
    )

    with pytest.raises(DataUnreachable) as err:
        locate(DataSource(yaml_path="/nowhere/tiny_coco.yaml", yaml_text=""), cache)
    assert str(err.value) == (
        "dataset /nowhere/tiny_coco.yaml is not on this node and the session has no DVC remote "
        "to fetch it from (no S3 in this stack, or --data outside DVC): only nodes that share "
        "the controller's file system can train"
    )
