"""The experiment suite end to end, run as a user runs it (a pytest subprocess),
against a real local stack (MariaDB + S3 + MLflow server), with real training."""

from __future__ import annotations

import json
import re
import uuid

import mlflow
import pytest
from helpers import MICRO, run_suite, session_of
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.detector import COLUMNS, encode_images
from mlflow_cv_yolo.train import devices, weights

WORKERS_ASKED = 3  # the grid session's -n


def collect(*args, tmp_path):
    result = run_suite("--collect-only", "-q", *args, tmp_path=tmp_path)
    return [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "::test_grid[" in line]


def test_collect_only_lists_the_grid_and_k_selects_slices(tmp_path):
    assert len(collect(tmp_path=tmp_path)) == 8
    assert collect("-k", "imgsz416", tmp_path=tmp_path) == [
        "imgsz416-lr0.005-seed1",
        "imgsz416-lr0.005-seed42",
        "imgsz416-lr0.01-seed1",
        "imgsz416-lr0.01-seed42",
    ]
    assert collect("-k", "imgsz416 and seed42", tmp_path=tmp_path) == [
        "imgsz416-lr0.005-seed42",
        "imgsz416-lr0.01-seed42",
    ]
    assert not (tmp_path / "stack").exists()  # collecting starts no stack


@pytest.mark.parametrize(
    "args, line",
    [
        (["--set", "epochs=0"], "ERROR: epochs=0: must be an integer >= 1"),
        (["--set", "imgsz=100"], "ERROR: imgsz=100: must be a positive multiple of 32 (the YOLO stride)"),
        (["--set", "colour=red"], "ERROR: --set colour: unknown key"),
        (["--set", "lr0=0"], "ERROR: lr0=0: must be a finite number > 0"),
        (["--set", "lr0"], "ERROR: --set lr0: expected KEY=VALUE[,VALUE...]"),
        (["--data", "missing.yaml"], "ERROR: --data missing.yaml: dataset yaml not found"),
        (["--min-map", "2"], "--min-map: invalid fraction value: '2'"),
    ],
)
def test_bad_options_fail_at_collection_with_one_line(tmp_path, args, line):
    result = run_suite("--collect-only", *args, tmp_path=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert line in result.stderr


@pytest.fixture(scope="module")
def stack_env(local_stack):
    return {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}


@pytest.fixture(scope="module")
def grid_session(tmp_path_factory, local_stack, stack_env, data_yaml):
    """One session of two lr0 values x two seeds under xdist, promoted straight to production."""
    tmp = tmp_path_factory.mktemp("grid")
    model = f"e2e-{uuid.uuid4().hex[:6]}"
    # -n 3: on a machine with fewer cores (this one has 2), one worker a core starts.
    result = run_suite(
        "-n",
        str(WORKERS_ASKED),
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "epochs=2",
        "--set",
        "lr0=0.002,0.02",
        "--set",
        "seed=7,8",
        "--registered-model",
        model,
        "--promote-to",
        "production",
        env=stack_env,
        tmp_path=tmp,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    client = MlflowClient(local_stack.tracking_uri)
    session = next(line.split()[1].rstrip(",") for line in result.stdout.splitlines() if line.startswith("session: "))
    experiment = client.get_experiment_by_name("cv_yolo_tiny")
    runs = client.search_runs([experiment.experiment_id], f"tags.`suite.session` = '{session}'")
    return {
        "result": result,
        "client": client,
        "session": session,
        "model": model,
        "tmp": tmp,
        "grid": {r.info.run_name: r for r in runs if r.data.tags["suite.kind"] == "grid"},
        "parent": next(r for r in runs if r.data.tags["suite.kind"] == "session"),
    }


def test_session_prints_stack_weights_table_and_decision(grid_session):
    out = grid_session["result"].stdout
    assert "stack: external (MLFLOW_TRACKING_URI is set)" in out
    assert (
        f"!!!!!!!! weights: {weights.CHECKPOINT} — project checkpoint, synthetic-pretrained — not yolov8n.pt "
        "(yolov8n.pt is not on disk and could not be downloaded" in out
    )
    assert "TRAINING FROM SCRATCH" not in out
    assert "4 passed" in out
    assert all(name in out for name in ("lr0.002-seed7", "lr0.002-seed8", "lr0.02-seed7", "lr0.02-seed8"))
    assert "decision: PROMOTED" in out and f"{grid_session['model']} v1 @production" in out


def test_the_terminal_has_no_third_party_noise(grid_session):
    """Nothing but pytest's and the suite's own lines: no MLflow INFO lines, progress
    bars or run links, no warnings summary of other libraries' warnings."""
    out = grid_session["result"].stdout
    for noise in (
        "INFO",
        "🏃",
        "View run",
        "Downloading artifacts",
        "Successfully registered",
        "Created version",
        "warnings summary",
        "it/s]",
    ):
        assert noise not in out, noise


def test_runs_log_params_epochs_artifacts_and_tags(grid_session):
    client, grid = grid_session["client"], grid_session["grid"]
    assert sorted(grid) == ["lr0.002-seed7", "lr0.002-seed8", "lr0.02-seed7", "lr0.02-seed8"]
    for name, run in grid.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert {k: params[k] for k in ("epochs", "imgsz", "seed", "batch", "optimizer", "model", "model_used")} == {
            "epochs": "2",
            "imgsz": "64",
            "seed": name[-1],
            "batch": "8",
            "optimizer": "SGD",
            "model": "yolov8n.pt",
            "model_used": str(weights.CHECKPOINT),
        }
        assert {"data", "data_yaml_sha256", "version.ultralytics", "version.torch", "version.mlflow"} <= set(params)
        assert run.data.tags["pretrained"] == "false" and run.data.tags["suite.stack"] == "external"
        assert run.data.tags["mlflow.parentRunId"] == grid_session["parent"].info.run_id
        for metric in ("mAP50-95", "mAP50", "precision", "recall", "train/box_loss", "val/box_loss", "lr/pg0"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
        for metric in ("best/mAP50-95", "best/mAP50", "best/precision", "best/recall"):
            assert 0.0 <= run.data.metrics[metric] <= 1.0
        files = {a.path for folder in ("", "plots", "weights") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {
            "results.csv",
            "args.yaml",
            "plots/results.png",
            "plots/confusion_matrix.png",
            "plots/BoxPR_curve.png",
            "plots/BoxF1_curve.png",
            "weights/best.pt",
            "weights/last.pt",
        } <= files
        # The run page's password-free view: no credential of the stack is a param or tag.
        assert not any("password" in k.lower() or "secret" in k.lower() for k in {**params, **run.data.tags})


def cpu_line(requested: str, asked: int) -> str:
    """The header's devices line on this CUDA-less machine (its core count varies)."""
    cpus = devices.cpu_count()
    workers = min(asked, cpus)
    threads, slots = max(1, cpus // workers), min(workers, cpus)
    why = "auto: no CUDA, no mps" if requested == "auto" else f"--device {requested}; found no CUDA, no mps"
    started = "" if workers == asked else f" of -n {asked} (one a core: the others would wait for a core)"
    return (
        f"devices: cpu ({why}) — {workers} worker{'s' if workers > 1 else ''}{started}, {threads} thread"
        f"{'s' if threads > 1 else ''} each, {slots} training slot{'s' if slots > 1 else ''} on {cpus} core"
        f"{'s' if cpus > 1 else ''}"
    )


def test_auto_device_resolves_to_the_cpu_here_and_runs_record_it(grid_session):
    if devices.probe().cuda:
        pytest.skip("this machine has CUDA: auto selects it")
    lines = grid_session["result"].stdout.splitlines()
    assert cpu_line("auto", WORKERS_ASKED) in lines
    started = min(WORKERS_ASKED, devices.cpu_count())  # xdist's own count of the workers it started
    assert f"created: {started}/{started} workers" in lines
    client = grid_session["client"]
    for run in grid_session["grid"].values():
        assert (run.data.params["device"], run.data.tags["amp"]) == ("cpu", "false")
        assert "amp.check" not in run.data.tags and "peak_gpu_memory_MiB" not in run.data.metrics
        # MLflow's system metrics (psutil comes with ultralytics), a sample every 2 s
        assert client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")


def test_lr0_changes_the_learning_rate_curve(grid_session):
    client, grid = grid_session["client"], grid_session["grid"]
    curves = {
        name: [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr/pg0"), key=lambda m: m.step)]
        for name, run in grid.items()
    }
    assert curves["lr0.02-seed7"] == curves["lr0.02-seed8"]  # the schedule depends on lr0, not the seed
    assert curves["lr0.002-seed7"] != curves["lr0.02-seed7"]
    assert max(curves["lr0.02-seed7"]) > max(curves["lr0.002-seed7"])


def test_artifacts_are_objects_in_the_bucket(grid_session, local_stack):
    run = grid_session["grid"]["lr0.02-seed7"]
    s3 = local_stack.s3.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=local_stack.s3.bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/weights/best.pt") for k in keys)


def test_promoted_version_loads_by_alias_and_predicts(grid_session, tiny_coco, local_stack):
    client, model = grid_session["client"], grid_session["model"]
    version = client.get_model_version_by_alias(model, "production")
    assert version.tags["stage"] == "production"
    assert version.tags["promoted_by.session"] == grid_session["session"]
    assert "Promotion decision" in version.description
    mlflow.set_tracking_uri(local_stack.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{model}@production")
    image = sorted((tiny_coco / "images" / "test").glob("*.jpg"))[0]
    boxes = loaded.predict(encode_images([image]), params={"conf": 0.0, "imgsz": 64})
    assert list(boxes.columns) == COLUMNS
    assert len(boxes) > 0 and set(boxes["image"]) == {0}
    assert (boxes["x2"] >= boxes["x1"]).all() and boxes["confidence"].between(0, 1).all()


def test_candidate_gets_test_split_metrics_and_decision_record(grid_session):
    client, tmp = grid_session["client"], grid_session["tmp"]
    record = json.loads((tmp / "reports" / grid_session["session"] / "decision.json").read_text())
    candidate = client.get_run(record["candidate_run_id"])
    assert {"test/mAP50-95", "test/mAP50"} <= set(candidate.data.metrics)
    assert record["outcome"] == "promoted"
    assert "[weights: project checkpoint, synthetic-pretrained — not yolov8n.pt" in record["reason"]
    assert [c["name"] for c in record["criteria"]] == [
        "complete session",
        "best mAP50-95 (val)",
        "improvement over champion",
    ]
    assert {a.path for a in client.list_artifacts(candidate.info.run_id, "decision")} == {
        "decision/decision.md",
        "decision/decision.json",
    }
    report = {a.path for a in client.list_artifacts(grid_session["parent"].info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/curves_map.png"} <= report


def test_configurations_are_ranked_over_their_two_seeds(grid_session):
    """The candidate is the best seed of the best configuration by mean val mAP50-95."""
    from PIL import Image

    grid, tmp = grid_session["grid"], grid_session["tmp"]
    folder = tmp / "reports" / grid_session["session"]
    record = json.loads((folder / "decision.json").read_text())
    means = {}
    for run in grid.values():
        means.setdefault(run.data.tags["suite.config"], []).append(run.data.metrics["best/mAP50-95"])
    assert sorted(means) == ["lr0.002", "lr0.02"] and all(len(v) == 2 for v in means.values())
    best_mean = max(sum(v) / 2 for v in means.values())
    candidate = next(r for r in grid.values() if r.info.run_id == record["candidate_run_id"])
    assert sum(means[candidate.data.tags["suite.config"]]) / 2 == best_mean
    assert "seed spread" in record["noise"]
    markdown = (folder / "report.md").read_text()
    assert record["noise"] in markdown and all(name in markdown for name in grid)
    for plot in ("curves_map.png", "curves_loss.png", "effects.png"):
        with Image.open(folder / plot) as image:
            assert image.width > 300 and image.height > 200
            assert len(set(image.convert("L").getdata())) > 2  # drawn on, not blank


def test_same_configuration_reproduces_its_metrics(grid_session, stack_env, data_yaml, tmp_path):
    result = run_suite(
        "-n",
        "2",
        "--data",
        str(data_yaml),
        *MICRO,
        "--set",
        "epochs=2",
        "--set",
        "lr0=0.02",
        "--set",
        "seed=7",
        "--no-promote",
        env=stack_env,
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    client = grid_session["client"]
    first = grid_session["grid"]["lr0.02-seed7"]
    experiment = client.get_experiment_by_name("cv_yolo_tiny").experiment_id
    (again,) = client.search_runs(
        [experiment], "tags.`suite.test_id` = 'base'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    keys = ("best/mAP50-95", "best/mAP50", "train/box_loss", "val/box_loss")
    assert {k: again.data.metrics[k] for k in keys} == {k: first.data.metrics[k] for k in keys}


def test_gate_fails_and_registers_nothing(grid_session, stack_env, data_yaml, tmp_path):
    client, model = grid_session["client"], grid_session["model"]
    before = client.search_model_versions(f"name = '{model}'")
    result = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--registered-model",
        model,
        "--min-map-scratch",
        "0.9",
        "--device",
        "cpu",
        env=stack_env,
        tmp_path=tmp_path,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert cpu_line("cpu", 1) in result.stdout.splitlines()
    assert "1 passed" in result.stdout
    record = json.loads((tmp_path / "reports" / session_of(result.stdout) / "decision.json").read_text())
    value = next(c["value"] for c in record["criteria"] if c["name"] == "best mAP50-95 (val)")
    # The threshold's part first; a champion the challenger does not beat adds its own after "; ".
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("promotion gate FAILED: ")]
    parts = line.removeprefix("promotion gate FAILED: ").split("; ")
    assert parts[0] == f"best mAP50-95 (val) = {value:.4f}, needs >= 0.9000 (short by {0.9 - value:.4f})"
    failed = [c["name"] for c in record["criteria"] if not c["passed"]]
    assert [part.split(" = ")[0].split(": ")[0] for part in parts] == failed
    assert len(client.search_model_versions(f"name = '{model}'")) == len(before)


def test_champion_keeps_production_unless_the_challenger_beats_it(grid_session, stack_env, data_yaml, tmp_path):
    """Both ways on real runs. A one-epoch challenger is no sure gain on the champion
    (its interval of Δ test mAP50-95 reaches 0 or below): with the default
    --min-improvement 0 it is rejected; a margin of -0.5 lets the same challenger
    through (and --max-drop 1, so no size or slice can hold it back)."""
    client, model = grid_session["client"], grid_session["model"]
    champion = client.get_model_version_by_alias(model, "production").version
    tie = run_suite(
        "--data", str(data_yaml), *MICRO, "--registered-model", model, env=stack_env, tmp_path=tmp_path / "tie"
    )
    assert tie.returncode == 1
    assert re.search(rf"candidate \d\.\d{{4}} vs production v{champion} \d\.\d{{4}} on val", tie.stdout)
    failure = r"promotion gate FAILED: improvement over champion = [+-]\d\.\d{4}, needs > 0\.0000 "
    assert re.search(failure + r"\(interval's lower bound on test\)", tie.stdout), tie.stdout[-3000:]
    assert client.get_model_version_by_alias(model, "production").version == champion
    # The review beside the report: the decision, the bootstrap criteria and the Δ table.
    review = (tmp_path / "tie" / "reports" / session_of(tie.stdout) / "review.md").read_text().splitlines()
    assert review[:2] == ["<!-- cv-yolo-review -->", "## Promotion gate: REJECTED"]
    rows = [line.split(" | ")[0].lstrip("| ") for line in review if line.startswith("| ")]
    assert {"improvement over champion", "no regression by size or slice"} <= set(rows)
    assert {"overall", "small", "medium", "large", "slice crowded", "slice lone"} <= set(rows)
    assert len(client.search_model_versions(f"name = '{model}'")) == 1

    wins = run_suite(
        "--data",
        str(data_yaml),
        *MICRO,
        "--registered-model",
        model,
        "--min-improvement",
        "-0.5",
        "--max-drop",
        "1",
        env=stack_env,
        tmp_path=tmp_path / "wins",
    )
    assert wins.returncode == 0, wins.stdout[-3000:]
    staged = client.get_model_version_by_alias(model, "staging")
    assert staged.version != champion
    assert client.get_model_version_by_alias(model, "production").version == champion


def test_require_pretrained_fails_fast_naming_the_file(tmp_path, data_yaml):
    from ultralytics.utils import is_online

    if is_online():
        pytest.skip("network available: yolov8n.pt downloads, so nothing is missing")
    result = run_suite(
        "--require-pretrained", "--stack", "embedded", "--data", str(data_yaml), *MICRO, tmp_path=tmp_path
    )
    assert result.returncode == 4
    assert "ERROR: --require-pretrained: yolov8n.pt is not on disk and could not be downloaded" in result.stderr
    assert not (tmp_path / "stack").exists()  # stopped before any stack started
