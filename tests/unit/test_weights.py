"""Which weights a session starts from when the asked-for .pt is neither on disk nor
downloadable: the project checkpoint for yolov8n.pt, a scratch model otherwise, and a
refusal under --require-pretrained. Neither fallback counts as the pretrained weights
asked for: both are gated by min_map_scratch and shown loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_cv_yolo.errors import WeightsError
from mlflow_cv_yolo.train import weights

WHY = "ConnectionError: offline"


def test_a_missing_yolov8n_falls_back_to_the_project_checkpoint(tmp_path):
    checkpoint = tmp_path / "yolov8n-synthetic.pt"
    checkpoint.write_bytes(b"weights")
    choice = weights.missing("yolov8n.pt", WHY, checkpoint=checkpoint)
    assert choice == weights.ModelChoice(
        "yolov8n.pt",
        str(checkpoint.resolve()),
        False,
        "project checkpoint, synthetic-pretrained — not yolov8n.pt "
        "(yolov8n.pt is not on disk and could not be downloaded (ConnectionError: offline))",
        fallback=True,
    )


def test_without_the_checkpoint_or_for_another_model_it_trains_from_scratch(tmp_path):
    absent = weights.missing("yolov8n.pt", WHY, checkpoint=tmp_path / "absent.pt")
    assert (absent.used, absent.pretrained, absent.fallback) == ("yolov8n.yaml", False, True)
    assert absent.note.endswith(": TRAINING FROM SCRATCH with yolov8n.yaml")
    checkpoint = tmp_path / "yolov8n-synthetic.pt"
    checkpoint.write_bytes(b"weights")
    other = weights.missing("yolov8s.pt", WHY, checkpoint=checkpoint)
    assert (other.used, other.pretrained, other.fallback) == ("yolov8s.yaml", False, True)


def test_require_pretrained_refuses_even_with_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "yolov8n-synthetic.pt"
    checkpoint.write_bytes(b"weights")
    with pytest.raises(WeightsError) as refused:
        weights.missing("yolov8n.pt", WHY, require_pretrained=True, checkpoint=checkpoint)
    assert str(refused.value) == (
        "--require-pretrained: yolov8n.pt is not on disk and could not be downloaded (ConnectionError: offline)"
    )


def test_the_project_checkpoint_is_shipped_in_the_repository():
    repo = Path(__file__).resolve().parents[2]
    assert repo / "data" / "weights" / "yolov8n-synthetic.pt" == weights.CHECKPOINT
    assert weights.CHECKPOINT.is_file()
