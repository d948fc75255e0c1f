"""A run's key: one hash of everything that determines what its training produces,
so that a finished run with the same key is the result a new training would give
(up to the nondeterminism a CPU/GPU kernel leaves), and an interrupted one can be
continued.

What goes in (`components()`):
- every resolved training argument: the grid point's values (model, optimizer,
  epochs, batch, imgsz, lr0, seed); the arguments fixed in `training.py` are covered
  by its hash below;
- the starting weights: the sha256 of the `.pt` file used (the project checkpoint
  standing in for a missing yolov8n.pt too), or of the `.yaml` model definition when
  it is a file; a bare name ultralytics ships (`yolov8n.yaml`) is the name, its
  content being fixed by the ultralytics version;
- the data: the DVC digest of the dataset where the session has one (the default
  dataset, checked against dvc.lock; its source.json, hence the source it was built
  from, is part of that digest); otherwise a hash of the data yaml's bytes, the
  bytes of every label file and the relative path and size of every image under the
  splits it names (images are not read: a dataset of many gigabytes is listed, not
  hashed; an image edited in place to the same size is not noticed);
- the training code: the package version and the sha256 of the modules that shape
  training (`TRAINING_MODULES`);
- ultralytics' and torch's versions;
- the device kind (`cpu`, `cuda`, `mps`): the same arguments on another kind of
  device give other numbers.

What does not: where the session writes, the tracking server, the number of torch
threads, the host. The key is stored on the run as the tag `suite.run_key`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

TAG = "suite.run_key"
# The modules whose code decides what a training computes (its arguments, its
# callbacks' effect on the trainer, the grid's values); others only record it.
TRAINING_MODULES = ("train/training.py", "train/grid.py", "train/devices.py")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_PACKAGE = Path(__file__).resolve().parents[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, computed once per process while the file is unchanged."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def device_kind(device: str | None) -> str:
    """`cpu`, `cuda` or `mps` from a torch/ultralytics device string (None: cpu)."""
    text = (device or "cpu").strip().lower()
    if text in ("", "cpu"):
        return "cpu"
    if text.startswith("mps"):
        return "mps"
    return "cuda"  # "cuda", "cuda:0", "0", "0,1"


def weights_digest(model_used: str) -> str:
    path = Path(model_used)
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    return f"name:{model_used}"  # a definition ultralytics ships: fixed by its version


def _split_folders(data_yaml: Path) -> list[Path]:
    import yaml

    spec = yaml.safe_load(data_yaml.read_text()) or {}
    root = (data_yaml.parent / str(spec.get("path") or ".")).resolve()
    folders = []
    for split in ("train", "val", "test"):
        entries = spec.get(split) or []
        for entry in entries if isinstance(entries, list) else [entries]:
            images = (root / str(entry)).resolve()
            folders.append(images)
            if "images" in images.parts:  # ultralytics reads labels from the sibling labels/ folder
                parts = list(images.parts)
                at = len(parts) - 1 - parts[::-1].index("images")
                folders.append(Path(*parts[:at], "labels", *parts[at + 1 :]))
    return folders


def _listing_digest(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for folder in _split_folders(path):
        files = sorted(folder.rglob("*")) if folder.is_dir() else ([folder] if folder.is_file() else [])
        for file in files:
            if not file.is_file() or file.suffix == ".cache":  # ultralytics' own label caches
                continue
            name = str(file.relative_to(path.parent)) if path.parent in file.parents else str(file)
            if file.suffix.lower() in IMAGE_SUFFIXES:
                digest.update(f"{name}\0{file.stat().st_size}\n".encode())
            else:
                digest.update(f"{name}\0{_sha256(file.read_bytes())}\n".encode())
    return digest.hexdigest()


def data_digest(data_yaml: Path, dvc_md5: str | None) -> str:
    """Computed once per session, by its controller (SessionInfo.data_digest)."""
    if dvc_md5:
        return f"dvc:{dvc_md5}"
    return f"listing:{_listing_digest(Path(data_yaml).resolve())}"


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("mlflow-cv-yolo")
    except PackageNotFoundError:
        package = "unknown"
    modules = {name: file_sha256(_PACKAGE / name)[:16] for name in TRAINING_MODULES if (_PACKAGE / name).is_file()}
    return {"package": package, **modules}


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Read from the installed distributions: importing torch only to ask is a second
    of a run's cost where it is not imported yet."""
    from importlib.metadata import version

    return {"ultralytics": version("ultralytics"), "torch": version("torch").split("+")[0]}


def components(values: dict[str, Any], *, model_used: str, data: str, device: str | None) -> dict[str, Any]:
    """What the key hashes, by name (kept readable for a person comparing two keys);
    `data` is `data_digest()`'s."""
    return {
        "args": {k: str(v) for k, v in sorted(values.items())},
        "weights": weights_digest(model_used),
        "data": data,
        "code": code_version(),
        "libraries": library_versions(),
        "device": device_kind(device),
    }


def run_key(values: dict[str, Any], *, model_used: str, data: str, device: str | None) -> str:
    parts = components(values, model_used=model_used, data=data, device=device)
    return _sha256(json.dumps(parts, sort_keys=True).encode())[:32]
