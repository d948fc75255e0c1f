"""The fine-tuning path offline: the suite started from the `.pt` checkpoint the
project ships (DVC stage `checkpoint`: yolov8n pretrained on the synthetic set,
committed to git), run as a user runs it. Its runs are pretrained=true and the
`min_map` gate decides."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import uuid

import pytest
import yaml
from helpers import MICRO, REPO, run_suite, session_runs
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.runs.training_run import check_run
from mlflow_cv_yolo.train import weights

CHECKPOINT = REPO / "data" / "weights" / "yolov8n-synthetic.pt"
# The pretrained threshold that lets the run through. Not above zero: one epoch of
# fine-tuning at 64 px is all inside ultralytics' warm-up (bias lr 0.1). The pretrained
# path is still what decides: min_map_scratch is set out of reach below.
LOW = 0.0


@pytest.fixture(scope="module")
def checkpoint():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT}: the project checkpoint is committed to git"
    return CHECKPOINT


def test_checkpoint_is_the_locked_file_and_keeps_no_path_or_date(checkpoint):
    """The committed file is the one dvc.lock records (the stage's out is `cache: false`),
    small, and names no path of the machine that trained it. After `dvc repro checkpoint`:
    commit the .pt and dvc.lock together."""
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["checkpoint"]
    assert saved["train_args"] == {"task": "detect", "imgsz": params["imgsz"], "single_cls": False}
    assert sorted(saved) == ["model", "train_args"]
    assert str(REPO).encode() not in checkpoint.read_bytes()
    assert checkpoint.stat().st_size < 8 * 2**20
    (locked,) = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["checkpoint"]["outs"]
    assert hashlib.md5(checkpoint.read_bytes()).hexdigest() == locked["md5"]
    assert checkpoint == weights.CHECKPOINT


def session_of(result) -> str:
    return next(line.split()[1].rstrip(",") for line in result.stdout.splitlines() if line.startswith("session: "))


def decision(result, tmp_path) -> dict:
    return json.loads((tmp_path / "reports" / session_of(result) / "decision.json").read_text())


def test_fine_tuned_checkpoint_is_gated_by_min_map_both_ways(checkpoint, local_stack, tmp_path, data_yaml):
    model = f"finetune-{uuid.uuid4().hex[:6]}"
    env = {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}
    # min_map_scratch is set out of reach: only the pretrained threshold can let a run through.
    args = (
        "--data",
        str(data_yaml),
        "--model",
        str(checkpoint),
        *MICRO,
        "--registered-model",
        model,
        "--min-map-scratch",
        "0.99",
    )

    passes = run_suite(*args, "--min-map", str(LOW), env=env, tmp_path=tmp_path / "passes")
    assert passes.returncode == 0, passes.stdout[-3000:] + passes.stderr[-3000:]
    assert f"weights: {checkpoint}" in passes.stdout and "TRAINING FROM SCRATCH" not in passes.stdout
    record = decision(passes, tmp_path / "passes")
    gate = next(c for c in record["criteria"] if c["name"] == "best mAP50-95 (val)")
    assert (gate["threshold"], gate["passed"]) == (LOW, True)
    assert gate["note"] == "min_map: runs started from pretrained weights"
    assert record["outcome"] == "promoted"
    client = MlflowClient(local_stack.tracking_uri)
    version = client.get_model_version_by_alias(model, "staging")
    run = client.get_run(version.run_id)
    assert run.data.tags["pretrained"] == "true" and run.data.tags["suite.session"] == session_of(passes)
    assert run.data.params["model_used"] == str(checkpoint)

    high = round(gate["value"] + 0.05, 4)
    fails = run_suite(*args, "--min-map", str(high), env=env, tmp_path=tmp_path / "fails")
    assert fails.returncode == 1, fails.stdout[-3000:] + fails.stderr[-3000:]
    value = next(c for c in decision(fails, tmp_path / "fails")["criteria"] if c["name"] == "best mAP50-95 (val)")[
        "value"
    ]
    line = (
        f"promotion gate FAILED: best mAP50-95 (val) = {value:.4f}, needs >= {high:.4f} (short by {high - value:.4f})"
    )
    assert line in fails.stdout.splitlines()
    assert [v.version for v in client.search_model_versions(f"name = '{model}'")] == [version.version]


def synthetic_set(folder) -> str:
    """A small set in the style of the one the checkpoint was trained on (params.yaml's
    checkpoint section), where the checkpoint scores above zero from the first epoch."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())["checkpoint"]
    out, data = folder / "synthetic", folder / "synthetic.yaml"
    command = [sys.executable, "-m", "mlflow_cv_yolo", "dataset", "build", "--source", "synthetic"]
    command += ["--style", p["style"], "--train", "40", "--val", "16", "--test", "8"]
    command += ["--imgsz", str(p["data_imgsz"]), "--seed", str(p["seed"]), "--out", str(out), "--yaml", str(data)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return str(data)


def test_a_run_that_ultralytics_stops_early_finishes(checkpoint, local_stack, tmp_path):
    """patience=1: fine-tuning the checkpoint on its own data stops once an epoch does
    not improve on the best; the run is FINISHED, tagged with its last epoch and why,
    and its check expects the epochs that ran."""
    env = {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}
    imgsz = yaml.safe_load((REPO / "params.yaml").read_text())["checkpoint"]["imgsz"]
    args = ("--data", synthetic_set(tmp_path), "--model", str(checkpoint), *MICRO, "--set", f"imgsz={imgsz}")
    args += ("--set", "epochs=6")
    result = run_suite(*args, "--set", "patience=1", "--no-promote", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(local_stack.tracking_uri)
    (run,) = [r for r in session_runs(client, session_of(result)).values() if r.data.tags["suite.kind"] == "grid"]
    assert run.info.status == "FINISHED"
    last = int(run.data.tags["suite.last_epoch"])
    assert 1 < last < 6, run.data.tags
    assert re.fullmatch(
        r"no improvement for 1 epoch \(patience 1\); best epoch \d", run.data.tags["suite.stopped_early"]
    )
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "mAP50-95")]
    assert sorted(steps) == list(range(1, last + 1))
    assert check_run(client, run.info.run_id, 6) == []
