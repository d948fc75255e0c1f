"""The experiment grid: one YAML file, command-line overrides, expansion into runs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlflow_cv_yolo.errors import GridError


def _positive_int(key: str, value: Any) -> int:
    number = _int(key, value)
    if number < 1:
        raise GridError(f"{key}={value}: must be an integer >= 1")
    return number


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise GridError(f"{key}={value}: must be an integer")
    try:
        number = int(str(value))
    except ValueError:
        raise GridError(f"{key}={value}: must be an integer") from None
    return number


def _patience(key: str, value: Any) -> int:
    number = _int(key, value)
    if number < 0:
        raise GridError(f"{key}={value}: must be an integer >= 0 (0: never stop early)")
    return number


def _imgsz(key: str, value: Any) -> int:
    number = _int(key, value)
    if number < 32 or number % 32:
        raise GridError(f"{key}={value}: must be a positive multiple of 32 (the YOLO stride)")
    return number


def _lr(key: str, value: Any) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise GridError(f"{key}={value}: must be a number") from None
    if not number > 0 or number != number or number == float("inf"):
        raise GridError(f"{key}={value}: must be a finite number > 0")
    return number


def _seed(key: str, value: Any) -> int:
    number = _int(key, value)
    if number < 0:
        raise GridError(f"{key}={value}: must be an integer >= 0")
    return number


# "auto" is refused: ultralytics then picks the optimizer and its own learning
# rate, so lr0 would silently have no effect (the seed project's no-op grid).
OPTIMIZERS = ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp")


def _optimizer(key: str, value: Any) -> str:
    name = str(value)
    if name not in OPTIMIZERS:
        raise GridError(f"{key}={value}: must be one of {', '.join(OPTIMIZERS)} ('auto' ignores lr0)")
    return name


def _model(key: str, value: Any) -> str:
    name = str(value).strip()
    if not name.endswith((".pt", ".yaml")):
        raise GridError(f"{key}={value}: must be a .pt weights file or a .yaml model definition")
    return name


def _bool(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise GridError(f"{key}={value}: must be true or false")
    return text == "true"


FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "model": _model,
    "optimizer": _optimizer,
    "epochs": _positive_int,
    "batch": _positive_int,
    "imgsz": _imgsz,
    "lr0": _lr,
    "seed": _seed,
    "amp": _bool,  # mixed precision on CUDA (ignored elsewhere)
    "patience": _patience,  # epochs without improvement before ultralytics stops early
}
# Keys a grid may leave out; a run without one uses the default and does not record it.
OPTIONAL = {"amp": True, "patience": 100}
# Axes in the order they appear in a run id; fixed keys never appear there.
ID_ORDER = ("model", "optimizer", "epochs", "batch", "imgsz", "lr0", "amp", "patience", "seed")
# lr0=0.01 reads "lr0.01" in an id, not "lr00.01".
ID_PREFIX = {"lr0": "lr"}


@dataclass(frozen=True)
class RunConfig:
    """One grid point: the values for every field, plus the id built from the axes that vary."""

    id: str
    values: dict[str, Any]
    # The id without the seed: runs that differ only by seed share it.
    config_id: str

    def __getattr__(self, name: str) -> Any:
        # Through __dict__: unpickling (a run sent to another process) asks for
        # attributes before `values` is set, and self.values would recurse.
        values = self.__dict__.get("values") or {}
        if name not in values:
            raise AttributeError(name)
        return values[name]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_override(text: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2` -> (KEY, [V1, V2]); the values are checked later, with the grid."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise GridError(f"--set {text}: expected KEY=VALUE[,VALUE...]")
    return key, [v.strip() for v in raw.split(",")]


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path}: not found") from None
    except yaml.YAMLError as exc:
        raise GridError(f"grid file {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise GridError(f"grid file {path}: expected a mapping of keys to values")
    return raw


def load_grid(path: Path, overrides: list[tuple[str, list[str]]] = ()) -> dict[str, list[Any]]:
    """Read the grid file, apply overrides and check every value. Returns key -> levels."""
    raw = _read(path)
    _check_gate(path, raw.get(GATE))
    levels: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key == GATE:
            continue
        if key not in FIELDS:
            raise GridError(f"grid file {path}: unknown key {key!r} (allowed: {', '.join((*FIELDS, GATE))})")
        levels[key] = value if isinstance(value, list) else [value]
    for key, values in overrides:
        if key not in FIELDS:
            raise GridError(f"--set {key}: unknown key (allowed: {', '.join(FIELDS)})")
        levels[key] = values

    missing = [k for k in FIELDS if k not in levels and k not in OPTIONAL]
    if missing:
        raise GridError(f"grid file {path}: missing keys {', '.join(missing)}")
    checked = {}
    for key, values in levels.items():
        if not values:
            raise GridError(f"{key}: needs at least one value")
        parsed = [FIELDS[key](key, v) for v in values]
        checked[key] = list(dict.fromkeys(parsed))
    if len(checked["model"]) > 1:
        # Weights are resolved, and the gate's threshold chosen, once per session.
        raise GridError(f"model={','.join(checked['model'])}: one model per session (run the suite once per model)")
    return checked


# A grid file may carry its own promotion thresholds (a profile is gated for its
# settings: 64-pixel CI runs cannot reach what 416-pixel runs do). Precedence:
# command line > grid file > pytest.ini.
GATE = "gate"
GATE_KEYS = ("min_map", "min_map_scratch", "min_improvement", "max_drop")


def load_gate(path: Path) -> dict[str, float]:
    """The grid file's `gate:` mapping, checked: key -> threshold in [0, 1]; {} without one."""
    return _check_gate(path, _read(path).get(GATE))


def _check_gate(path: Path, gate: Any) -> dict[str, float]:
    if gate is None:
        return {}
    if not isinstance(gate, dict):
        raise GridError(f"grid file {path}: gate: expected a mapping of {', '.join(GATE_KEYS)} to numbers")
    thresholds = {}
    for key, value in gate.items():
        if key not in GATE_KEYS:
            raise GridError(f"grid file {path}: gate.{key}: unknown key (allowed: {', '.join(GATE_KEYS)})")
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not 0.0 <= number <= 1.0:
            raise GridError(f"grid file {path}: gate.{key} = {value!r}: must be a number in [0, 1]")
        thresholds[key] = float(number)
    return thresholds


def expand(levels: dict[str, list[Any]]) -> list[RunConfig]:
    """Every combination of the levels, with ids like `imgsz416-lr0.01-seed42`."""
    keys = [k for k in ID_ORDER if k in levels]
    varying = [k for k in keys if len(levels[k]) > 1]
    runs = []
    for combo in itertools.product(*(levels[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        label = {k: f"{ID_PREFIX.get(k, k)}{_format(values[k])}" for k in varying}
        run_id = "-".join(label.values()) or "base"
        config_id = "-".join(v for k, v in label.items() if k != "seed") or "base"
        runs.append(RunConfig(id=run_id, values=values, config_id=config_id))
    _refuse_duplicate_ids(runs, varying)
    return runs


def _refuse_duplicate_ids(runs: list[RunConfig], varying: list[str]) -> None:
    """Two grid points whose ids print alike (lr0=0.01 and 0.0100000001 both read
    "lr0.01") would share a test id, a run name and a row of the report."""
    seen: dict[str, RunConfig] = {}
    for run in runs:
        if run.id in seen:
            first = seen[run.id]
            differ = ", ".join(
                f"{k}={first.values[k]!r} and {run.values[k]!r}" for k in varying if first.values[k] != run.values[k]
            )
            raise GridError(
                f"two grid points have the same test id {run.id!r} ({differ}): give values that differ when printed"
            )
        seen[run.id] = run
