"""Which weights a session starts from. Pretrained `.pt` files are fetched by
ultralytics where the network allows; without them the session trains the same
architecture from scratch, and says so everywhere, or stops when asked to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow_cv_yolo.errors import WeightsError


@dataclass(frozen=True)
class ModelChoice:
    requested: str
    used: str
    pretrained: bool
    note: str


def resolve(requested: str, *, require_pretrained: bool = False) -> ModelChoice:
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
    if require_pretrained:
        raise WeightsError(f"--require-pretrained: {requested} is not on disk and could not be downloaded ({error})")
    scratch = Path(requested).with_suffix(".yaml").name
    return ModelChoice(
        requested,
        scratch,
        False,
        f"{requested} is not on disk and could not be downloaded ({error}): TRAINING FROM SCRATCH with {scratch}",
    )
