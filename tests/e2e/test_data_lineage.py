"""From a registered model version back to the exact data, on a real local stack:
the main job on the default dataset (built by `dvc repro` if absent), then the
walk of docs/ui-and-lineage.md — model version -> run -> dataset digest -> `dvc pull` at that commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from helpers import MICRO, REPO, run_suite
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.data import lineage
from mlflow_cv_yolo.stack.local import LocalStack


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, check=True)


def test_model_version_leads_back_to_the_exact_data(tmp_path):
    result = run_suite("--stack", "local", *MICRO, "--registered-model", "lineage-probe", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["build_dataset"]["outs"]
    md5 = next(o["md5"] for o in locked if o["path"] == "data/tiny_coco")
    assert f"(DVC {md5})" in result.stdout
    # A clone that built its data with `dvc repro` (CI's fresh clone does) matches the committed lock.
    assert subprocess.run(["git", "diff", "--quiet", "--", "dvc.lock"], cwd=REPO).returncode == 0
    session = next(line.split()[1].rstrip(",") for line in result.stdout.splitlines() if line.startswith("session: "))
    record = json.loads((tmp_path / "reports" / session / "decision.json").read_text())
    assert record["dataset_digest"] == md5

    with LocalStack(tmp_path / "stack", log=lambda _: None) as info:  # reopen the kept stack
        client = MlflowClient(info.tracking_uri)
        version = client.get_model_version_by_alias("lineage-probe", "staging")
        run = client.get_run(version.run_id)
        (data_input,) = run.inputs.dataset_inputs
        assert data_input.dataset.name == "tiny_coco" and data_input.dataset.digest == md5
        source = json.loads(data_input.dataset.source)
        assert source["url"] == f"s3://{info.s3.bucket}/dvc" and source["path"] == "data/tiny_coco"

        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        if source["rev"]:
            subprocess.run(["git", "checkout", "-q", source["rev"], "--", "dvc.lock"], cwd=clone, check=True)
        lineage.configure_remote(
            clone, url=source["url"], endpoint_url=info.s3.endpoint_url, credential_path=info.s3.credentials_file
        )
        dvc("pull", "data/tiny_coco", cwd=clone)
        state = lineage.check_dataset(clone)
        assert state.clean and state.md5 == md5
        for path in (REPO / "data" / "tiny_coco").rglob("*"):
            if path.is_file() and path.suffix != ".cache":  # ultralytics label caches, .dvcignore-d
                assert (clone / path.relative_to(REPO)).read_bytes() == path.read_bytes()
    mlflow.set_tracking_uri(None)


def test_suite_refuses_stale_data_unless_allowed(tmp_path):
    """Hand-edited data: the session stops before training, naming dvc repro / dvc pull."""
    if not (REPO / "data" / "tiny_coco").is_dir():
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "dvc", "repro", "build_dataset"], cwd=REPO, env=env, check=True)
    label = sorted((REPO / "data" / "tiny_coco" / "labels" / "train").glob("*.txt"))[0]
    original = label.read_bytes()
    try:
        label.write_bytes(original + b"0 0.5 0.5 0.1 0.1\n")
        refused = run_suite("--stack", "embedded", *MICRO, tmp_path=tmp_path / "refused")
        assert refused.returncode == 4
        assert "data/tiny_coco differs from dvc.lock" in refused.stderr
        assert "`dvc repro`" in refused.stderr and "`dvc pull`" in refused.stderr
        allowed = run_suite(
            "--stack", "embedded", *MICRO, "--allow-dirty-data", "--no-promote", tmp_path=tmp_path / "allowed"
        )
        assert allowed.returncode == 0, allowed.stdout[-3000:]
        assert "DIRTY: differs from dvc.lock" in allowed.stdout
    finally:
        label.write_bytes(original)
    assert lineage.check_dataset(REPO).clean
