"""The GitHub Actions workflow: valid YAML, installs, runs the gate, uploads the report."""

from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "experiments.yml"


def test_workflow_runs_the_gate_and_uploads_the_report():
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["grid"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "pip install" in runs and "-e ." in runs
    gate = next(step["run"] for step in steps if "pytest experiments" in step.get("run", ""))
    assert "--grid experiments/ci.yaml" in gate and "--junitxml=reports/junit.xml" in gate
    assert "--no-promote" not in gate  # the gate is the promotion hook's exit status
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    assert True in flow and set(flow[True]) >= {"push", "pull_request"}  # YAML 1.1 reads `on:` as True
