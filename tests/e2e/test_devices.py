"""Devices in a real session: the one-line refusals of a device this machine lacks,
and weights from a CUDA-less run loaded and used on the CPU by the pyfunc model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import MICRO, REPO, run_suite

from mlflow_cv_yolo.train import devices, training
from mlflow_cv_yolo.train.grid import expand, load_grid


@pytest.mark.parametrize(
    "device, error",
    [
        ("gpu", "ERROR: --device gpu: expected auto, cpu, mps or GPU indices such as 0 or 0,1"),
        ("0", "ERROR: --device 0: CUDA is not available here (no CUDA, no mps); use --device cpu or auto"),
        ("mps", "ERROR: --device mps: Apple's Metal (mps) exists only on macOS; this is linux (no CUDA, no mps)"),
    ],
)
def test_a_device_this_machine_lacks_stops_the_session_before_anything_starts(tmp_path, device, error):
    if devices.probe().cuda:
        pytest.skip("this machine has CUDA: --device 0 would train")
    result = run_suite("--stack", "local", *MICRO, "--device", device, tmp_path=tmp_path, timeout=300)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("ERROR:")] == [error]
    for written in ("stack", "reports", "runs"):
        assert not (tmp_path / written).exists(), f"{written} was written"


def test_weights_of_a_cuda_less_run_load_and_predict_on_the_cpu(tmp_path, data_yaml, tiny_coco):
    """The pyfunc model as MLflow loads it (its load_context), on weights saved by a
    CPU run: it picks the CPU here, and its boxes are those of ultralytics on the CPU."""
    import torch
    from PIL import Image
    from ultralytics import YOLO

    from mlflow_cv_yolo.detector import COLUMNS, YoloDetector

    (run,) = expand(
        load_grid(
            REPO / "experiments" / "grid.yaml",
            [("epochs", ["1"]), ("imgsz", ["64"]), ("lr0", ["0.01"]), ("seed", ["1"])],
        )
    )
    result = training.train(run, data=data_yaml, model="yolov8n.yaml", project=tmp_path, threads=2, device="cpu")
    assert result.amp is False and result.peak_gpu_memory_mb is None
    saved = torch.load(result.best, map_location="cpu", weights_only=False)
    net = saved.get("ema") or saved["model"]
    assert {p.device.type for p in net.parameters()} == {"cpu"}

    detector = YoloDetector()
    detector.load_context(SimpleNamespace(artifacts={"weights": str(result.best)}))
    assert detector.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    image = sorted((tiny_coco / "images" / "val").iterdir())[0]
    boxes = detector.predict(None, str(image), params={"conf": 0.001, "imgsz": 64})
    assert list(boxes.columns) == COLUMNS
    with Image.open(image) as picture:  # the detector reads every input through PIL
        expected = YOLO(str(result.best)).predict(
            picture.convert("RGB"), conf=0.001, imgsz=64, device="cpu", verbose=False
        )[0]
    assert len(boxes) == len(expected.boxes)
    assert training.evaluate(
        result.best, data=data_yaml, imgsz=64, split="val", project=tmp_path, name="val", device="cpu"
    ).keys() == {"mAP50-95", "mAP50"}
