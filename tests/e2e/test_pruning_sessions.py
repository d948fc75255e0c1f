"""Successive halving with real sessions (embedded stack, real training), then the
pruned run finished later. One chain of two sessions on one stack folder, fine-tuning
the project's checkpoint on the synthetic set for 2 epochs, lr0 0.001 (the checkpoint
keeps its mAP) and 1.0 (far too high: it loses it in the first epoch), in that order:

1. `--prune asha --prune-min-epochs 1 --prune-eta 2`: the good run reaches the rung
   alone and goes on; the bad one is second of two there, below the cut, and stops;
2. the same session without `--prune`: the good run is reused, the bad one is
   continued from its last.pt into the same run, to the last epoch.
"""

from __future__ import annotations

import re

import pytest
from helpers import REPO, dvc_repro, run_suite
from mlflow.tracking import MlflowClient

CHECKPOINT = REPO / "data" / "weights" / "yolov8n-synthetic.pt"
SYNTHETIC = REPO / "data" / "synthetic.yaml"
GOOD, BAD = "lr0.001", "lr1"  # the test ids (one seed, one varying key)
GRID = (
    "--set", "epochs=2", "--set", "imgsz=64", "--set", "batch=8", "--set", "seed=1",
    "--set", "lr0=0.001,1.0", "--no-promote", "--stack", "embedded",
)  # fmt: skip
PRUNE = ("--prune", "asha", "--prune-min-epochs", "1", "--prune-eta", "2")


@pytest.fixture(scope="module")
def synthetic():
    if not (CHECKPOINT.is_file() and SYNTHETIC.is_file()):
        dvc_repro("checkpoint")  # builds the synthetic set; the committed checkpoint matches its lock


def session(tmp, *args: str, reuse: bool) -> tuple:
    """A session on the synthetic set in `tmp`'s embedded stack, to exit 0; its output,
    the grid runs by name, and the epochs each logged."""
    result = run_suite(
        "--data", str(SYNTHETIC), "--model", str(CHECKPOINT), *args, tmp_path=tmp, reuse=reuse, timeout=600
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp / 'stack' / 'embedded' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cv_yolo_tiny").experiment_id
    runs = client.search_runs([experiment], "tags.`suite.kind` = 'grid'", max_results=10)
    steps = {r.info.run_name: [m.step for m in client.get_metric_history(r.info.run_id, "mAP50-95")] for r in runs}
    return result, {r.info.run_name: r for r in runs}, steps


@pytest.fixture(scope="module")
def chain(tmp_path_factory, synthetic):
    tmp = tmp_path_factory.mktemp("prune")
    pruned = session(tmp, *GRID, *PRUNE, reuse=False)
    finished = session(tmp, *GRID, reuse=True)
    return {"pruned": pruned, "finished": finished}


def test_the_bad_configuration_stops_at_the_rung_and_its_test_skips(chain):
    result, runs, steps = chain["pruned"]
    bad, good = runs[BAD], runs[GOOD]
    assert steps == {GOOD: [1, 2], BAD: [1]}
    assert (good.info.status, bad.info.status) == ("FINISHED", "FINISHED")
    assert "suite.pruned" not in good.data.tags
    value = float(bad.data.tags["suite.rung.1"])
    cut = float(good.data.tags["suite.rung.1"])
    assert value < cut
    assert bad.data.tags["suite.pruned"] == f"rung=1 value={value:.6g} cut={cut:.6g} reached=2 eta=2"
    reason = (
        f"pruned at epoch 1: val mAP50-95 {value:.4f} below the cut {cut:.4f} (top 1/2 of 2 runs at that epoch go on)"
    )
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and skipped[0].endswith(reason), result.stdout[-3000:]
    assert re.search(r"\b1 passed, 1 skipped\b", result.stdout), result.stdout[-2000:]
    table = next(line for line in result.stdout.splitlines() if line.startswith(f"{BAD} "))  # not a [progress] line
    assert table.rstrip().endswith(f"epoch 1 ({value:.4f} < cut {cut:.4f})"), result.stdout[-3000:]


def test_a_session_without_prune_continues_the_pruned_run_into_the_same_run(chain):
    _, before, _ = chain["pruned"]
    result, runs, steps = chain["finished"]
    assert {name: run.info.run_id for name, run in runs.items()} == {
        name: run.info.run_id for name, run in before.items()
    }
    assert steps == {GOOD: [1, 2], BAD: [1, 2]}
    bad = runs[BAD]
    assert bad.info.status == "FINISHED"
    assert "suite.pruned" not in bad.data.tags
    assert bad.data.tags["suite.was_pruned"] == before[BAD].data.tags["suite.pruned"]
    assert bad.data.tags["suite.resumed_at_epoch"] == "2"
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout[-2000:]
    reuse = "reuse: 1 of 2 configurations have a finished run with the same key (--rerun trains them again)"
    assert f"{reuse}; 1 pruned run continued" in result.stdout.splitlines(), result.stdout[-3000:]


def test_with_the_ray_executor_and_a_k_slice_the_bad_configuration_stops_too(tmp_path, synthetic):
    """The rule reads the other runs from MLflow, so a Ray task prunes as a local run does
    (2 CPUs a run: one task at a time on this machine, good first, as above); a -k slice
    compares the runs it selects."""
    grid = [a if a != "lr0=0.001,1.0" else "lr0=0.001,0.01,1.0" for a in GRID]
    ray = ("--executor", "ray", "--cpus-per-run", "2")
    result, runs, _ = session(tmp_path, *grid, *PRUNE, "-k", "not lr0.01", *ray, reuse=False)
    assert all("ray.worker_pid" in run.data.tags for run in runs.values())
    assert {name: run.data.tags.get("suite.pruned", "").split(" ")[0] for name, run in runs.items()} == {
        GOOD: "",
        BAD: "rung=1",
    }
    assert float(runs[BAD].data.tags["suite.rung.1"]) < float(runs[GOOD].data.tags["suite.rung.1"])
    assert re.search(r"\b1 passed, 1 skipped, 1 deselected\b", result.stdout), result.stdout[-2000:]
