"""The promotion gate trusts only complete sessions: a failed test, a worker killed
mid-training, Ctrl-C or SIGTERM, each with real processes and real signals; then
what was recorded is checked (nothing promoted, nothing left RUNNING)."""

from __future__ import annotations

import json
import os
import signal
import uuid

import mlflow
import psutil
import pytest
from helpers import MICRO, run_suite, session_of, session_runs, start_suite, wait_for
from mlflow.tracking import MlflowClient

STATUSES = ("FINISHED", "FAILED", "KILLED")


@pytest.fixture(scope="module")
def client(local_stack) -> MlflowClient:
    return MlflowClient(local_stack.tracking_uri)


@pytest.fixture
def stack_env(local_stack) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}


def versions(client: MlflowClient, model: str) -> list:
    return client.search_model_versions(f"name = '{model}'")


def results_csvs(tmp_path):
    return list((tmp_path / "runs").rglob("results.csv"))


def test_partial_grid_is_decided_over_and_says_so(tmp_path, client, stack_env, data_yaml):
    model = f"partial-{uuid.uuid4().hex[:6]}"
    result = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2",
        "-k",
        "seed1",
        "-n",
        "2",
        "--registered-model",
        model,
        env=stack_env,
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    # One selected test: one worker started, not the two -n asked for.
    (devices,) = [line for line in result.stdout.splitlines() if line.startswith("devices: ")]
    assert " — 1 worker of -n 2 (one a selected test at most), " in devices, devices
    assert "created: 1/1 worker" in result.stdout or "1 worker [1 item]" in result.stdout, result.stdout[:3000]
    record = json.loads((tmp_path / "reports" / session_of(result.stdout) / "decision.json").read_text())
    assert (record["outcome"], record["scope"]) == ("promoted", "partial grid: 1 of 2 configurations")
    assert "partial grid: 1 of 2 configurations" in result.stdout.splitlines()
    assert [v.version for v in versions(client, model)] == ["1"]


def test_a_failed_run_blocks_promotion_and_keeps_its_traceback(tmp_path, client, stack_env, data_yaml):
    """A Python exception inside training (injected through an ultralytics callback by
    a plugin) fails one of two configurations: its run is FAILED with the traceback,
    the other FINISHED, and the gate registers nothing."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fail_seed2.py").write_text(
        "from mlflow_cv_yolo.train import training\n\n_train = training.train\n\n\n"
        "def _boom(trainer):\n    raise RuntimeError('injected failure in training')\n\n\n"
        "def train(run, **kwargs):\n"
        "    if run.seed == 2:\n"
        "        kwargs['callbacks'] = {**(kwargs.get('callbacks') or {}), 'on_train_batch_end': _boom}\n"
        "    return _train(run, **kwargs)\n\n\ntraining.train = train\n"
    )
    model = f"failed-{uuid.uuid4().hex[:6]}"
    result = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2",
        "-p",
        "fail_seed2",
        "--registered-model",
        model,
        tmp_path=tmp_path,
        env={
            **stack_env,
            "PYTHONPATH": os.pathsep.join([str(plugins), os.environ["PYTHONPATH"]])
            if os.environ.get("PYTHONPATH")
            else str(plugins),
        },
    )
    assert result.returncode == 1, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    assert "decision: not promoted: incomplete session (1 of 2 runs finished; 1 failed)" in lines
    assert versions(client, model) == []
    runs = session_runs(client, session_of(result.stdout))
    assert {name: r.info.status for name, r in runs.items() if name.startswith("seed")} == {
        "seed1": "FINISHED",
        "seed2": "FAILED",
    }
    parent = next(r for r in runs.values() if r.data.tags["suite.kind"] == "session")
    assert parent.info.status == "FAILED"
    mlflow.set_tracking_uri(client.tracking_uri)
    traceback = mlflow.artifacts.load_text(f"runs:/{runs['seed2'].info.run_id}/error/traceback.txt")
    assert traceback.strip().splitlines()[-1] == "RuntimeError: injected failure in training"


def test_a_worker_killed_mid_training_fails_its_run_only(tmp_path, client, stack_env, data_yaml):
    model = f"crash-{uuid.uuid4().hex[:6]}"
    proc = start_suite(
        "-n",
        "2",
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "seed=1,2",
        "--set",
        "epochs=4",
        "--registered-model",
        model,
        env=stack_env,
        tmp_path=tmp_path,
    )
    wait_for(lambda: len(results_csvs(tmp_path)) == 2, timeout=300, what="both workers training", proc=proc)
    victim = psutil.Process(proc.pid).children()[0]
    victim.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, output[-3000:]
    assert "decision: not promoted: incomplete session (1 of 2 runs finished; 1 failed)" in output.splitlines()
    assert versions(client, model) == []
    grid = {n: r for n, r in session_runs(client, session_of(output)).items() if n.startswith("seed")}
    assert sorted(r.info.status for r in grid.values()) == ["FAILED", "FINISHED"]
    (failed,) = [r for r in grid.values() if r.info.status == "FAILED"]
    assert failed.data.tags["suite.end_reason"].startswith("worker 'gw")
    assert "crashed while running" in failed.data.tags["suite.end_reason"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_session_promotes_nothing_and_leaves_nothing_running(
    tmp_path, client, stack_env, data_yaml, sig
):
    model = f"interrupted-{uuid.uuid4().hex[:6]}"
    proc = start_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "epochs=30",
        "--registered-model",
        model,
        env=stack_env,
        tmp_path=tmp_path,
    )
    wait_for(lambda: results_csvs(tmp_path), timeout=300, what="training under way", proc=proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert (
        "decision: not promoted: incomplete session (0 of 1 runs finished; 1 killed; interrupted)"
        in output.splitlines()
    )
    assert versions(client, model) == []
    runs = session_runs(client, session_of(output))
    assert {r.info.status for r in runs.values()} == {"KILLED"}
    assert {r.data.tags["suite.end_reason"] for r in runs.values() if r.data.tags["suite.kind"] == "grid"} == {
        "interrupted (Ctrl-C or SIGTERM) during training"
    }
