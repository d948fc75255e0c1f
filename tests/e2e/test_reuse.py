"""Never training the same thing twice, with real sessions on the shared real stack
(MariaDB + S3 + MLflow server) in an experiment of their own. One chain of sessions of
a two-point grid (imgsz 96 and 64, 3 epochs), asserted on by the tests below:

1. interrupted by a real Ctrl-C once imgsz96's first epoch is logged;
2. the same session again: imgsz96 is continued into its run, imgsz64 trained;
3. the same again: both reused, nothing trained;
4. `--set imgsz=96,32`: only the 32 point is trained;
5. `--rerun -k imgsz32`: trained again.
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
import uuid

import pytest
from helpers import run_suite, session_of, start_suite, wait_for
from mlflow.tracking import MlflowClient

GRID = ("--set", "epochs=3", "--set", "lr0=0.01", "--set", "seed=1", "--set", "batch=8", "--no-promote")


@pytest.fixture(scope="module")
def chain(local_stack, data_yaml, tmp_path_factory):
    client = MlflowClient(local_stack.tracking_uri)
    experiment = f"reuse-{uuid.uuid4().hex[:6]}"
    env = {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}
    args = ("--data", str(data_yaml), "--experiment", experiment, *GRID)

    def suite(*more):
        result = run_suite(*args, *more, env=env, tmp_path=tmp_path_factory.mktemp("session"), reuse=True)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
        return result

    proc = start_suite(*args, "--set", "imgsz=96,64", env=env, tmp_path=tmp_path_factory.mktemp("session"), reuse=True)
    experiment_id = wait_for(
        lambda: client.get_experiment_by_name(experiment), timeout=120, what="the experiment", proc=proc
    ).experiment_id

    def first_epoch():
        runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING' and tags.`suite.kind` = 'grid'")
        return next((r for r in runs if client.get_metric_history(r.info.run_id, "mAP50-95")), None)

    interrupted = wait_for(first_epoch, timeout=300, what="the first epoch logged", proc=proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    run_id = interrupted.info.run_id
    before = {
        "status": client.get_run(run_id).info.status,
        "steps": [m.step for m in client.get_metric_history(run_id, "mAP50-95")],
    }
    started = time.time() * 1000
    resumed = suite("--set", "imgsz=96,64")
    return {
        "client": client,
        "interrupted": output,
        "run_id": run_id,
        "before": before,
        "started": started,
        "resumed": resumed,
        "unchanged": suite("--set", "imgsz=96,64", "-n", "2"),
        "changed": suite("--set", "imgsz=96,32"),
        "rerun": suite("--set", "imgsz=96,32", "--rerun", "-k", "imgsz32"),
    }


def counts(result) -> str:
    """The summary's line that says what the tests did with their runs."""
    return next(line for line in result.stdout.splitlines() if re.match(r"\d+ reused, \d+ trained", line))


def reused(result) -> dict[str, str]:
    """test id -> run id of the summary's `reused from session` lines."""
    return {
        line.split()[0].rstrip(":"): line.split("/runs/")[1].split("?")[0]
        for line in result.stdout.splitlines()
        if ": reused from session " in line
    }


def test_an_interrupted_run_is_continued_into_the_same_run_by_the_next_session(chain):
    client, run_id = chain["client"], chain["run_id"]
    assert chain["before"] == {"status": "KILLED", "steps": [1]}
    assert counts(chain["resumed"]) == "0 reused, 2 trained (1 resumed)"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {
        k: run.data.tags.get(k)
        for k in (
            "resumed",
            "suite.resumed_at_epoch",
            "suite.session",
            "suite.resumed_from_session",
            "suite.end_reason",
        )
    } == {
        "resumed": "true",
        "suite.resumed_at_epoch": "2",
        "suite.session": session_of(chain["resumed"].stdout),
        "suite.resumed_from_session": session_of(chain["interrupted"]),
        "suite.end_reason": None,
    }
    for metric in ("mAP50-95", "train/box_loss", "lr/pg0"):
        assert sorted(m.step for m in client.get_metric_history(run_id, metric)) == [1, 2, 3], metric
    # Epoch 1 was trained by the interrupted session only; the next one trained 2 and 3.
    when = {m.step: m.timestamp for m in client.get_metric_history(run_id, "mAP50-95")}
    assert when[1] < chain["started"] < when[2] < when[3]


def test_an_unchanged_session_reuses_every_run(chain):
    unchanged, trained_in = chain["unchanged"], session_of(chain["resumed"].stdout)
    assert counts(unchanged) == "2 reused, 0 trained"
    assert "2 passed" in unchanged.stdout
    # Found by the controller before any test: with nothing to train, -n 2 starts no worker.
    lines = unchanged.stdout.splitlines()
    assert (
        "reuse: 2 of 2 configurations have a finished run with the same key (--rerun trains them again); "
        "nothing to train: the tests run in this process, no worker started" in lines
    )
    assert [line for line in lines if line.startswith(("created:", "[gw"))] == []
    runs = reused(unchanged)
    assert sorted(runs) == ["imgsz64", "imgsz96"] and runs["imgsz96"] == chain["run_id"]
    for test_id, run_id in runs.items():  # each run keeps the session that trained it
        run = chain["client"].get_run(run_id)
        assert (run.info.status, run.data.tags["suite.session"]) == ("FINISHED", trained_in), test_id
    report = (unchanged.stdout.split("report: ", 1)[1].split()[0]).replace("report.html", "report.md")
    with open(report) as f:
        assert f.read().count(f"[session {trained_in}](") == 2


def test_a_changed_key_retrains_only_its_points_and_rerun_retrains(chain):
    assert counts(chain["changed"]) == "1 reused, 1 trained"
    assert (
        "reuse: 1 of 2 configurations have a finished run with the same key (--rerun trains them again)"
        in chain["changed"].stdout.splitlines()
    )
    assert list(reused(chain["changed"])) == ["imgsz96"]
    assert counts(chain["rerun"]) == "0 reused, 1 trained"
    assert reused(chain["rerun"]) == {}


def test_run_key_changes_with_what_decides_the_training_and_only_with_it(tmp_path, data_yaml):
    import shutil

    from mlflow_cv_yolo.runs.key import components, data_digest, run_key
    from mlflow_cv_yolo.train import weights

    shutil.copytree(
        data_yaml.parent / "coco_persons", tmp_path / "coco_persons", ignore=shutil.ignore_patterns("*.cache")
    )
    data = tmp_path / "data.yaml"
    shutil.copy(data_yaml, data)
    values = {"model": "yolov8n.pt", "optimizer": "SGD", "epochs": 3, "batch": 8, "imgsz": 320, "lr0": 0.01, "seed": 1}

    def key(**change):
        given = {
            "model_used": "yolov8n.yaml",
            "data": data_digest(data, change.pop("dvc", None)),
            "device": "cpu",
            **change,
        }
        return run_key({**values, **given.pop("values", {})}, **given)

    base = key()
    assert key() == base and key(device=None) == base and key(device="CPU") == base
    assert key(device="0") == key(device="cuda:0") != base
    changed = {
        "epochs": key(values={"epochs": 4}),
        "lr0": key(values={"lr0": 0.02}),
        "seed": key(values={"seed": 2}),
        "weights": key(model_used="yolov8s.yaml"),
        "checkpoint": key(model_used=str(weights.CHECKPOINT)),
        "dvc": key(dvc="0" * 32),
    }
    assert len({base, *changed.values()}) == 7, changed
    assert components(values, model_used=str(weights.CHECKPOINT), data="d", device=None)["weights"] == (
        f"sha256:{hashlib.sha256(weights.CHECKPOINT.read_bytes()).hexdigest()}"
    )
    assert data_digest(data, "abc") == "dvc:abc"  # the DVC digest, where the session has one, stands for the data

    (tmp_path / "coco_persons" / "labels" / "train.cache").write_bytes(b"ultralytics' cache")
    assert key() == base  # ultralytics' label caches are not the data
    label = next((tmp_path / "coco_persons" / "labels" / "train").iterdir())
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert key() != base
