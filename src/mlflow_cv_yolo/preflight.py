"""What the user gave, checked before any stack starts: a bad value costs one line
naming it, and nothing is started, created or written.

Each check raises `InputError` with that line; the session turns it into a usage error.
"""

from __future__ import annotations

import difflib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from mlflow_cv_yolo.data.yolo_format import DatasetError, check_split
from mlflow_cv_yolo.errors import InputError
from mlflow_cv_yolo.train.grid import RunConfig
from mlflow_cv_yolo.train.pruning import Pruning, default_min_epochs

SPLITS = ("train", "val", "test")


def shown_uri(uri: str) -> str:
    """A tracking URI fit to print: credentials in it (user:password@host) are masked."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_tracking_uri(uri: str, *, name: str = "MLFLOW_TRACKING_URI") -> None:
    """The suite's workers talk to a tracking *server*: an http(s) URL with a host."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"{name}={shown_uri(uri)!r}: not the http(s) URL of an MLflow tracking server (e.g. http://127.0.0.1:5000)"
        )


def check_model(name: str) -> None:
    """A model file here, or one ultralytics can fetch or build: a typo must not surface
    only after the stack started and every run failed."""
    if Path(name).is_file():
        if name.endswith(".pt"):
            check_checkpoint(Path(name))
        return
    if name.endswith(".yaml"):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(name)
        except Exception:  # ultralytics raises FileNotFoundError, or others for a bad scale
            raise InputError(
                f"model {name!r}: no such file here, and not a model definition ultralytics ships (e.g. yolov8n.yaml)"
            ) from None
        return
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    if Path(name).name in GITHUB_ASSETS_NAMES:
        return
    close = difflib.get_close_matches(Path(name).name, sorted(GITHUB_ASSETS_NAMES), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InputError(f"model {name!r}: no such file here, and ultralytics releases no weights of that name{hint}")


# What torch.save wrote before its zip format (1.6): a pickled magic number.
LEGACY_TORCH_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")


def check_checkpoint(path: Path) -> None:
    """A .pt file must be a PyTorch checkpoint: a zip archive holding a data.pkl
    (torch.save's format) or a legacy torch pickle. Read from its header and table of
    contents only: unpickling it would run its code and take seconds."""
    try:
        with path.open("rb") as file:
            head = file.read(len(LEGACY_TORCH_MAGIC))
        if head == LEGACY_TORCH_MAGIC:
            return
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(entry.rsplit("/", 1)[-1] == "data.pkl" for entry in archive.namelist()):
                    return
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"model {str(path)!r}: cannot be read ({exc})") from None
    raise InputError(
        f"model {str(path)!r}: not a PyTorch checkpoint (neither torch.save's zip archive with a data.pkl "
        "nor a legacy torch pickle): give YOLO weights (.pt) or a model definition (.yaml)"
    )


def check_output_folder(option: str, folder: Path) -> None:
    """A folder the session will write (`option` names it): the folder, or the
    nearest part of its path that exists, must be a writable folder. Found here, not
    after the runs trained and the stack's decision began."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder}: {existing} is not writable (read-only or not this user's)")


def check_output_folders(reports: Path, runs: Path, stack: Path | None) -> None:
    """Every folder a session writes: --reports-dir, --runs-dir and (where the
    session keeps its stack in a folder of its own) --stack-dir."""
    check_output_folder("--reports-dir", reports)
    check_output_folder("--runs-dir", runs)
    if stack is not None:
        check_output_folder("--stack-dir", stack)


@dataclass(frozen=True)
class DatasetSummary:
    yaml_path: Path
    classes: int
    images: dict[str, int]  # split -> images
    boxes: dict[str, int]  # split -> label lines


def check_dataset(yaml_path: Path) -> DatasetSummary:
    """Read a YOLO dataset yaml the way ultralytics does and check every image and
    label line of every split it names with the project's `file:line` validator:
    ultralytics itself drops a bad label or a truncated image with a warning, and a
    session would then train (and promote) on less than it was given."""
    yaml_path = Path(yaml_path)
    try:
        spec = yaml.safe_load(yaml_path.read_text())
    except FileNotFoundError:
        raise InputError(f"--data {yaml_path}: dataset yaml not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"--data {yaml_path}: not readable YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(spec, dict):
        raise InputError(f"--data {yaml_path}: expected a mapping with train, val and names")
    for key in ("train", "val", "names"):
        if not spec.get(key):
            raise InputError(f"--data {yaml_path}: field {key!r} is missing")
    names = spec["names"]
    if not isinstance(names, (dict, list)) or not names:
        raise InputError(f"--data {yaml_path}: field 'names' must be a list or a mapping of class names")
    if isinstance(names, dict) and sorted(names) != list(range(len(names))):
        raise InputError(f"--data {yaml_path}: field 'names' must number its classes 0..{len(names) - 1}")
    base = yaml_path.parent
    if spec.get("path"):
        base = Path(os.path.expanduser(str(spec["path"])))
        base = base if base.is_absolute() else (yaml_path.parent / base)
    images, boxes = {}, {}
    for split in SPLITS:
        value = spec.get(split)
        if not value:
            continue
        if not isinstance(value, str):
            raise InputError(f"--data {yaml_path}: field {split!r} must be one folder of images, got {value!r}")
        folder = (base / value).resolve()
        if not folder.is_dir():
            raise InputError(f"--data {yaml_path}: field {split!r}: {folder} is not a folder")
        try:
            images[split], boxes[split] = check_split(folder, classes=len(names))
        except DatasetError as exc:
            raise InputError(f"--data {yaml_path}: {exc}") from None
    return DatasetSummary(yaml_path, len(names), images, boxes)


def check_pruning(pruning: Pruning, grid: list[RunConfig]) -> None:
    """--prune compares configurations at rung epochs: it needs two of them, and a rung
    before the last epoch."""
    if not pruning.on:
        return
    configs = sorted({c.config_id for c in grid})
    if len(configs) < 2:
        raise InputError(
            f"--prune {pruning.mode}: the grid has one configuration ({configs[0] if configs else 'none'}); "
            "successive halving compares several (add values to a grid key, or drop --prune)"
        )
    if not any(pruning.rungs(c.epochs) for c in grid):
        epochs = max(c.epochs for c in grid)
        first = pruning.min_epochs or default_min_epochs(epochs)
        raise InputError(
            f"--prune {pruning.mode}: no rung before the last epoch (first rung {first}, epochs={epochs}): "
            "lower --prune-min-epochs or raise epochs"
        )


def check_slices(yaml_path: Path) -> None:
    """The slices file beside a dataset yaml (the gate's AP by slice), read now: a bad
    one is one line before any stack starts."""
    from mlflow_cv_yolo.decide import detection_stats as stats

    yaml_path = Path(yaml_path)
    try:
        stats.load_slices(stats.slices_path(yaml_path), stats.dataset_names(yaml_path))
    except DatasetError as exc:
        raise InputError(str(exc)) from None
