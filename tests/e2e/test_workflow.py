"""CI wiring: the GitHub workflow and .ci/run run the same gate script, which records on
a persistent tracking server when one is given and says so when it falls back; CI that
declares a Docker engine fails the engine's tests instead of skipping them."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import REPO, suite_env

WORKFLOW = REPO / ".github" / "workflows" / "experiments.yml"
GATE = REPO / "scripts" / "gate.sh"


def test_workflow_runs_the_gate_with_the_secrets_and_uploads_the_report():
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["grid"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert f'pip install -c requirements/constraints.txt {index} -e ".[ray,test]"' in runs
    tests = next(step for step in steps if step.get("run", "").startswith("pytest tests"))
    assert tests["env"] == {
        "CV_YOLO_REQUIRE_DOCKER": "1",
        "CV_YOLO_CHROMIUM": "/usr/bin/google-chrome",
        "CV_YOLO_REQUIRE_CHROMIUM": "1",
    }
    gate = next(step for step in steps if "scripts/gate.sh" in step.get("run", ""))
    assert gate["env"] == {
        name: f"${{{{ secrets.{name} }}}}"
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    assert "--no-promote" not in gate["run"]  # the gate is the promotion hook's exit status
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    assert True in flow and set(flow[True]) >= {"push", "pull_request"}  # YAML 1.1 reads `on:` as True
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/gate.sh" in ci and "CV_YOLO_REQUIRE_DOCKER=1 python -m pytest tests" in ci
    assert ci.index("export CV_YOLO_REQUIRE_CHROMIUM=1") < ci.index("python -m pytest tests -n 2")


def test_ci_and_the_workflow_run_the_readme_test_command():
    """What the README tells a user to install and run is what CI installs and runs."""
    lines = (REPO / "README.md").read_text().splitlines()
    (tests,) = [line for line in lines if line.startswith("pytest tests")]
    install = lines[lines.index(tests) - 1]  # the command block's install line, just above
    assert (install, tests) == (
        'pip install -c requirements/constraints.txt -e ".[ray,test]"',
        "pytest tests -n 2 --dist loadfile",
    )
    ci = (REPO / ".ci" / "run").read_text()
    assert 'python -m pip install -q -c requirements/constraints.txt -e ".[ray,test]"' in ci
    assert f"CV_YOLO_REQUIRE_DOCKER=1 python -m {tests} -p no:cacheprovider -rs" in ci
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["grid"]["steps"]
    assert [step["run"] for step in steps if "pytest tests" in step.get("run", "")] == [
        f"{tests} -p no:cacheprovider -rs"
    ]


def gate(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """scripts/gate.sh as CI runs it, collecting only (no stack starts); the python on PATH is this one."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    args = ["--collect-only", "-q", "--reports-dir", str(tmp_path), f"--junitxml={tmp_path / 'junit.xml'}"]
    return subprocess.run(
        ["bash", str(GATE), *args],
        cwd=tmp_path,
        env=suite_env({"PATH": path, **env}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gate_uses_the_persistent_server_when_given_one(tmp_path):
    result = gate(tmp_path, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_TRACKING_PASSWORD": "s3cret-pw"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == (
        "gate: persistent tracking server (MLFLOW_TRACKING_URI is set): "
        "challengers are compared with its production model"
    )
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if "::test_grid[" in line]) == 4  # the CI profile


def test_gate_falls_back_to_a_throwaway_stack_and_says_so(tmp_path):
    result = gate(tmp_path, {"MLFLOW_TRACKING_URI": ""})  # an unset secret arrives empty
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == (
        "gate: no MLFLOW_TRACKING_URI: throwaway stack, nothing is kept and there is no champion to compare with"
    )


def test_docker_tests_fail_instead_of_skipping_where_ci_declares_an_engine(tmp_path):
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    command = [sys.executable, "-m", "pytest", "tests/e2e/test_docker_stack.py", "-p", "no:cacheprovider", "-q", "-rsf"]
    skipped = subprocess.run(
        command,
        cwd=REPO,
        env=suite_env({**nowhere, "CV_YOLO_REQUIRE_DOCKER": ""}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert skipped.returncode == 0 and "2 skipped" in skipped.stdout, skipped.stdout[-2000:]
    required = subprocess.run(
        command,
        cwd=REPO,
        env=suite_env({**nowhere, "CV_YOLO_REQUIRE_DOCKER": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert required.returncode == 1 and "2 errors" in required.stdout, required.stdout[-2000:]
    assert "CV_YOLO_REQUIRE_DOCKER=1 (CI declares a Docker engine) but no Docker engine answers" in required.stdout


def test_browser_tests_skip_without_chromium_and_fail_where_ci_requires_it(tmp_path):
    """Where no Chromium is found: a skip with the reason and the install line; with
    CV_YOLO_REQUIRE_CHROMIUM=1 (CI, which installs it), a failure."""
    missing = {"CV_YOLO_CHROMIUM": str(tmp_path / "no-chromium")}
    command = [sys.executable, "-m", "pytest", "tests/e2e/test_report_browser.py", "-p", "no:cacheprovider", "-q"]
    command += ["-rsE"]
    reason = (
        f"CV_YOLO_CHROMIUM={tmp_path / 'no-chromium'} is not an executable: `apt-get install -y chromium` "
        "(or set CV_YOLO_CHROMIUM to a Chromium binary)"
    )
    skipped = subprocess.run(
        command, cwd=REPO, env=suite_env({**missing, "CV_YOLO_REQUIRE_CHROMIUM": ""}), capture_output=True, text=True
    )
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert f"SKIPPED [1] tests/e2e/test_report_browser.py:11: {reason}" in skipped.stdout
    required = subprocess.run(
        command, cwd=REPO, env=suite_env({**missing, "CV_YOLO_REQUIRE_CHROMIUM": "1"}), capture_output=True, text=True
    )
    assert required.returncode == 1 and "1 error" in required.stdout, required.stdout[-2000:]
    assert f"CV_YOLO_REQUIRE_CHROMIUM=1 (CI installs Chromium) but {reason}" in required.stdout
