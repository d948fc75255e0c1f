"""Never training the same thing twice, with real sessions on the shared real stack
(MariaDB + S3 + MLflow server) in an experiment of their own: an unchanged session
reuses every run, a changed key retrains only its points, --rerun retrains, and a
session interrupted by a real Ctrl-C is continued by the next one into the same run."""

from __future__ import annotations

import re
import signal
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient

from helpers import run_suite, session_of, start_suite, wait_for

# One epoch at 64 px from scratch; imgsz varies so that a --set changes some keys only.
GRID = ("--set", "epochs=1", "--set", "lr0=0.01", "--set", "seed=1", "--set", "batch=8", "--no-promote")


@pytest.fixture(scope="module")
def reuse_env(local_stack, data_yaml):
    experiment = f"reuse-{uuid.uuid4().hex[:6]}"
    return {"env": {"MLFLOW_TRACKING_URI": local_stack.tracking_uri},
            "args": ("--data", str(data_yaml), "--experiment", experiment),
            "client": MlflowClient(local_stack.tracking_uri), "experiment": experiment}


def suite(reuse_env, tmp_path, *args):
    result = run_suite(*reuse_env["args"], *GRID, *args, env=reuse_env["env"], tmp_path=tmp_path, reuse=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return result


def counts(result) -> str:
    """The summary's line that says what the tests did with their runs."""
    return next(line for line in result.stdout.splitlines() if re.match(r"\d+ reused, \d+ trained", line))


def run_ids(result) -> dict[str, str]:
    """test id -> run id, from the summary's table (reused rows) and the session's own runs."""
    lines = result.stdout.splitlines()
    return {line.split()[0].rstrip(":"): line.split("/runs/")[1].split("?")[0] for line in lines if ": reused from session " in line}


def test_an_unchanged_session_reuses_every_run_and_a_changed_key_retrains_only_its_points(reuse_env, tmp_path):
    first = suite(reuse_env, tmp_path / "first", "--set", "imgsz=64,96")
    assert counts(first) == "0 reused, 2 trained"
    trained_in = session_of(first.stdout)

    second = suite(reuse_env, tmp_path / "second", "--set", "imgsz=64,96")
    assert counts(second) == "2 reused, 0 trained"
    assert "2 passed" in second.stdout
    assert f"  imgsz64: reused from session {trained_in} " in second.stdout
    client = reuse_env["client"]
    for test_id, run_id in run_ids(second).items():
        run = client.get_run(run_id)  # the run keeps the session that trained it
        assert (run.info.status, run.data.tags["suite.session"]) == ("FINISHED", trained_in), test_id
    report = (tmp_path / "second" / "reports" / session_of(second.stdout) / "report.md").read_text()
    assert f"[session {trained_in}](" in report

    changed = suite(reuse_env, tmp_path / "changed", "--set", "imgsz=64,128")
    assert counts(changed) == "1 reused, 1 trained"
    assert list(run_ids(changed)) == ["imgsz64"]

    rerun = suite(reuse_env, tmp_path / "rerun", "--set", "imgsz=64,128", "--rerun")
    assert counts(rerun) == "0 reused, 2 trained"


def test_an_interrupted_run_is_continued_into_the_same_run_by_the_next_session(reuse_env, tmp_path):
    client = reuse_env["client"]
    args = (*reuse_env["args"], *GRID, "--set", "epochs=3", "--set", "imgsz=128")
    proc = start_suite(*args, env=reuse_env["env"], tmp_path=tmp_path / "first", reuse=True)
    experiment_id = wait_for(lambda: client.get_experiment_by_name(reuse_env["experiment"]), timeout=120,
                             what="the experiment", proc=proc).experiment_id

    def first_epoch():
        runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING' and tags.`suite.kind` = 'grid'")
        return next((r for r in runs if client.get_metric_history(r.info.run_id, "mAP50-95")), None)

    run = wait_for(first_epoch, timeout=300, what="the first epoch logged", proc=proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    run_id = run.info.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    before = [m.step for m in client.get_metric_history(run_id, "mAP50-95")]
    assert before == [1]

    started = time.time() * 1000
    second = suite(reuse_env, tmp_path / "second", "--set", "epochs=3", "--set", "imgsz=128")
    assert counts(second) == "0 reused, 1 trained (1 resumed)"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags.get(k) for k in ("resumed", "suite.resumed_at_epoch", "suite.session",
                                               "suite.resumed_from_session", "suite.end_reason")} == {
        "resumed": "true", "suite.resumed_at_epoch": "2", "suite.session": session_of(second.stdout),
        "suite.resumed_from_session": session_of(output), "suite.end_reason": None}
    for metric in ("mAP50-95", "train/box_loss", "lr/pg0"):
        history = client.get_metric_history(run_id, metric)
        assert sorted(m.step for m in history) == [1, 2, 3], metric
    # Epoch 1 was trained by the interrupted session only; the next one trained 2 and 3.
    when = {m.step: m.timestamp for m in client.get_metric_history(run_id, "mAP50-95")}
    assert when[1] < started < when[2] < when[3]
