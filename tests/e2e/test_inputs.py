"""Bad input stops a session with one line naming the value, before any stack
starts: exit 4, and nothing written (no stack folder, no report, no run)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from helpers import MICRO, REPO, run_suite


def small_dataset(tmp_path: Path, tiny_coco: Path) -> Path:
    """Three real images per split with their labels, and a yaml over them."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for image in sorted((tiny_coco / "images" / split).glob("*.jpg"))[:3]:
            for kind, source in (("images", image), ("labels", tiny_coco / "labels" / split / f"{image.stem}.txt")):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, root / kind / split / source.name)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: person\n")
    return yaml_path


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def refused(tmp_path: Path, *args: str, env: dict | None = None, micro: bool = True) -> list[str]:
    """Run a session that must be refused; return its error lines."""
    result = run_suite("--stack", "local", *(MICRO if micro else ()), *args, tmp_path=tmp_path, env=env, timeout=300)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    for written in ("stack", "reports", "runs"):
        assert not (tmp_path / written).exists(), f"{written} was written"
    # argparse's refusals come after a usage line, which names no value
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("ERROR:", "python -m pytest: error:")) and not line.startswith("ERROR: usage:")
    ]


def test_malformed_grid_yaml(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("epochs: [1, 2\n")
    (line,) = refused(tmp_path, "--grid", str(grid), micro=False)
    assert line.startswith(f"ERROR: grid file {grid}: not valid YAML (while parsing a flow sequence")


GRID = "model: yolov8n.yaml\noptimizer: SGD\nepochs: 1\nbatch: 8\nimgsz: 64\nlr0: 0.01\nseed: 1\n"


@pytest.mark.parametrize(
    "change, error",
    [
        (
            {"colour": "red"},
            "grid file {grid}: unknown key 'colour' (allowed: model, optimizer, epochs, batch, imgsz, "
            "lr0, seed, amp, patience, gate)",
        ),
        ({"epochs": "[1, two]"}, "epochs=two: must be an integer"),
        (
            {"lr0": "[0.01, 0.0100000001]"},
            "two grid points have the same test id 'lr0.01' (lr0=0.01 and "
            "0.0100000001): give values that differ when printed",
        ),
        (
            {"model": "[yolov8n.yaml, yolov8s.yaml]"},
            "model=yolov8n.yaml,yolov8s.yaml: one model per session (run the suite once per model)",
        ),
    ],
)
def test_bad_grid_values(tmp_path, change, error):
    grid = tmp_path / "grid.yaml"
    lines = dict(line.split(": ", 1) for line in GRID.splitlines())
    grid.write_text("".join(f"{k}: {v}\n" for k, v in {**lines, **change}.items()))
    assert refused(tmp_path, "--grid", str(grid), micro=False) == [f"ERROR: {error.format(grid=grid)}"]


def test_invalid_dataset_yaml(tmp_path, tiny_coco):
    data = small_dataset(tmp_path, tiny_coco)
    data.write_text(f"path: {data.parent}\ntrain: images/train\nnames:\n  0: person\n")
    assert refused(tmp_path, "--data", str(data)) == [f"ERROR: --data {data}: field 'val' is missing"]


@pytest.mark.parametrize(
    "damage, error",
    [
        ("class", "{label}:1: class 5 is not one of the dataset's 1 names (0..0)"),
        ("coordinate", "{label}:1: x_center 1.7 is outside [0, 1] (coordinates are normalised)"),
        ("truncated", "{image}: cannot decode image (OSError: image file is truncated"),
    ],
)
def test_broken_labels_and_images_are_named(tmp_path, tiny_coco, damage, error):
    data = small_dataset(tmp_path, tiny_coco)
    image = first(data.parent / "images" / "val", "*.jpg")
    label = data.parent / "labels" / "val" / f"{image.stem}.txt"
    if damage == "class":
        label.write_text("5 0.5 0.5 0.2 0.2\n")
    elif damage == "coordinate":
        label.write_text("0 1.7 0.5 0.2 0.2\n")
    else:
        image.write_bytes(image.read_bytes()[:2000])
    (line,) = refused(tmp_path, "--data", str(data))
    assert line.startswith(f"ERROR: --data {data}: " + error.format(label=label, image=image)), line


def test_unknown_model_is_refused_before_the_stack(tmp_path):
    assert refused(tmp_path, "--model", "yolov8nn.pt") == [
        "ERROR: model 'yolov8nn.pt': no such file here, and ultralytics releases no weights of that name "
        "(did you mean yolov8n.pt?)"
    ]


def test_a_model_file_that_is_not_a_checkpoint(tmp_path):
    model = tmp_path / "x.pt"
    model.write_bytes(os.urandom(4096))
    assert refused(tmp_path, "--model", str(model)) == [
        f"ERROR: model {str(model)!r}: not a PyTorch checkpoint (neither torch.save's zip archive with a data.pkl "
        "nor a legacy torch pickle): give YOLO weights (.pt) or a model definition (.yaml)"
    ]


@pytest.mark.parametrize("option", ["--reports-dir", "--runs-dir", "--stack-dir"])
def test_an_output_folder_that_cannot_be_written(tmp_path, option):
    """Found before the stack starts, not when the decision writes its report."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert refused(tmp_path, option, str(blocker / "out")) == [
        f"ERROR: {option} {blocker / 'out'}: {blocker} is a file, not a folder"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: no refusal to see")
def test_a_read_only_reports_folder(tmp_path):
    reports = tmp_path / "read-only"
    reports.mkdir(mode=0o555)
    assert refused(tmp_path, "--reports-dir", str(reports)) == [
        f"ERROR: --reports-dir {reports}: {reports} is not writable (read-only or not this user's)"
    ]


def test_a_selection_of_no_configuration_starts_nothing(tmp_path):
    """-k that matches no grid id: pytest's status for no tests (5), one line, nothing started."""
    result = run_suite("--stack", "local", *MICRO, "-n", "2", "-k", "imgsz999", tmp_path=tmp_path, timeout=300)
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.splitlines() == ["Exit: no configuration selected (-k, -m, node ids or --deselect left none)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tracking_uri_that_is_not_a_url(tmp_path):
    lines = refused(tmp_path, "--stack", "auto", env={"MLFLOW_TRACKING_URI": "not-a-url"})
    assert lines == [
        "ERROR: MLFLOW_TRACKING_URI='not-a-url': not the http(s) URL of an MLflow tracking server "
        "(e.g. http://127.0.0.1:5000)"
    ]


def test_thresholds_out_of_range(tmp_path):
    assert refused(tmp_path, "--min-improvement", "nan") == [
        "python -m pytest: error: argument --min-improvement: invalid margin value: 'nan'"
    ]
    assert refused(tmp_path, "-o", "min_map=1.5") == ["ERROR: pytest.ini min_map = '1.5': 1.5 is not in [0, 1]"]
    assert refused(tmp_path, "--max-drop", "-0.1") == [
        "python -m pytest: error: argument --max-drop: invalid fraction value: '-0.1'"
    ]
    assert refused(tmp_path, "--gate-stat", "mean") == [
        "python -m pytest: error: argument --gate-stat: invalid gate_stat value: 'mean'"
    ]
    assert refused(tmp_path, "-o", "gate_stat=median") == [
        "ERROR: pytest.ini gate_stat = 'median': 'median' is not one of ci, point"
    ]


def test_a_stack_that_cannot_start_has_its_own_exit_status(tmp_path):
    """Not a usage error: the stack is down, not the command line (exit 6)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_suite(
        "--stack", "external", *MICRO, tmp_path=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    )
    assert result.returncode == 6, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Exit:")]
    assert line.startswith(
        f"Exit: --stack external: MLFLOW_TRACKING_URI=http://127.0.0.1:{port}: no MLflow server "
        f"answers at http://127.0.0.1:{port}/health"
    )


def test_the_project_tests_never_read_the_grid(tmp_path):
    """`pytest tests` with a grid file that does not exist: never read, nothing fails."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/unit/test_grid_file.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--grid",
            str(tmp_path / "missing.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:]
