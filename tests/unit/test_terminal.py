"""The session's header and reuse line, drawn from plain values."""

from __future__ import annotations

from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.present.terminal import header_lines, reuse_line
from mlflow_cv_yolo.stack import StackInfo


def info(**changes) -> SessionInfo:
    values = dict(
        session_id="s1", experiment="cv_yolo_tiny", experiment_id="1", tracking_uri="http://127.0.0.1:1",
        stack_kind="local", data="data/tiny_coco.yaml", model_requested="yolov8n.pt", model_used="yolov8n.pt",
        pretrained=True, model_note="", workdir="runs/s1", parent_run_id="p1",
    )  # fmt: skip
    return SessionInfo(**{**values, **changes})


STACK = StackInfo("local", "http://127.0.0.1:1", "auto: a MariaDB server binary", {"mlflow": "http://127.0.0.1:1"})


def test_the_header_names_stack_weights_data_and_devices():
    lines = header_lines(
        info(dataset_md5="abc.dir"),
        STACK,
        ready_in="3.0 s",
        state=".stack/local",
        ray=None,
        devices_line="devices: cpu",
    )
    assert lines == [
        "stack: local (auto: a MariaDB server binary)",
        "  mlflow: http://127.0.0.1:1",
        "  ready in: 3.0 s",
        "  state: .stack/local",
        "session: s1, experiment 'cv_yolo_tiny'",
        "weights: yolov8n.pt",
        "data: data/tiny_coco.yaml (DVC abc.dir)",
        "devices: cpu",
    ]


def test_weights_that_are_not_pretrained_are_loud():
    scratch = info(model_used="yolov8n.yaml", pretrained=False, model_note="TRAINING FROM SCRATCH")
    lines = header_lines(scratch, STACK, ready_in="1 s", state="x", ray="ray: local", devices_line="devices: cpu")
    assert lines[5:7] == ["!!!!!!!! weights: yolov8n.yaml — TRAINING FROM SCRATCH", "ray: local"]


def test_the_reuse_line_counts_the_selected_tests():
    assert reuse_line(1, 2, workers=2) == (
        "reuse: 1 of 2 configurations have a finished run with the same key (--rerun trains them again)"
    )
    assert reuse_line(2, 2, workers=0).endswith("; nothing to train: the tests run in this process, no worker started")


def test_the_reuse_line_says_how_many_pruned_runs_are_continued():
    assert reuse_line(1, 4, workers=2, continued=2) == (
        "reuse: 1 of 4 configurations have a finished run with the same key (--rerun trains them again); "
        "2 pruned runs continued"
    )


def test_the_data_line_names_its_source_and_is_loud_when_synthetic():
    def data_line(source):
        lines = header_lines(info(), STACK, ready_in="1 s", state="x", ray=None, devices_line="d", data_source=source)
        return lines[6]

    assert data_line(("COCO person cut, 60 real images (shipped)", False)) == (
        "data: data/tiny_coco.yaml — COCO person cut, 60 real images (shipped)"
    )
    assert data_line(("SYNTHETIC images, 40 drawn by seed 0 — not photographs", True)) == (
        "!!!!!!!! data: data/tiny_coco.yaml — SYNTHETIC images, 40 drawn by seed 0 — not photographs"
    )
    assert data_line(None) == "data: data/tiny_coco.yaml"
