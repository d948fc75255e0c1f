"""Which weights a session starts from. Pretrained `.pt` files are fetched by
ultralytics where the network allows; without yolov8n.pt the session starts from the
project's own checkpoint (yolov8n pretrained on the synthetic set, shipped in git),
and without that, trains the same architecture from scratch; it says so everywhere,
or stops when asked to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.errors import WeightsError

# The project's own checkpoint (dvc.yaml stage `checkpoint`), and the weights it stands in for.
CHECKPOINT = Path(__file__).resolve().parents[3] / "data" / "weights" / "yolov8n-synthetic.pt"
STANDS_IN_FOR = "yolov8n.pt"


@dataclass(frozen=True)
class ModelChoice:
    requested: str
    used: str
    # The weights asked for are used: False for a scratch model and for the project
    # checkpoint standing in for yolov8n.pt (gated by min_map_scratch, shown loudly).
    pretrained: bool
    note: str
    fallback: bool = False  # not the weights asked for: the project checkpoint or a scratch model


def resolve(requested: str, *, require_pretrained: bool = False, checkpoint: Path | None = None) -> ModelChoice:
    """`checkpoint`: the fallback for a missing yolov8n.pt (default `CHECKPOINT`)."""
    if requested.endswith(".yaml"):
        return ModelChoice(requested, requested, False, f"{requested} is a model definition: training from scratch")
    if Path(requested).is_file():
        return ModelChoice(requested, str(Path(requested).resolve()), True, f"pretrained weights {requested}")
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        found = Path(attempt_download_asset(requested))
    except Exception as exc:  # ultralytics raises ConnectionError, or others, offline
        found, error = None, f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    else:
        error = "download produced no file"
    if found is not None and found.is_file():
        return ModelChoice(requested, str(found.resolve()), True, f"pretrained weights {requested}")
    return missing(requested, error, require_pretrained=require_pretrained, checkpoint=checkpoint)


def missing(
    requested: str, error: str, *, require_pretrained: bool = False, checkpoint: Path | None = None
) -> ModelChoice:
    """The choice when `requested` is neither on disk nor downloadable (`error` says why)."""
    if require_pretrained:
        raise WeightsError(f"--require-pretrained: {requested} is not on disk and could not be downloaded ({error})")
    checkpoint = CHECKPOINT if checkpoint is None else Path(checkpoint)
    why = f"{requested} is not on disk and could not be downloaded ({error})"
    if Path(requested).name == STANDS_IN_FOR and checkpoint.is_file():
        return ModelChoice(
            requested,
            str(checkpoint.resolve()),
            False,
            f"project checkpoint, synthetic-pretrained — not {STANDS_IN_FOR} ({why})",
            fallback=True,
        )
    scratch = Path(requested).with_suffix(".yaml").name
    return ModelChoice(requested, scratch, False, f"{why}: TRAINING FROM SCRATCH with {scratch}", fallback=True)
