"""A session's settings: every option, parsed and checked once, as one frozen value.

The pytest plugin builds it from the command line and pytest.ini; nothing here
knows about pytest. Parsers raise `ValueError` with the text pytest shows after
the option's name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_cv_yolo.decide.decision import GATE_STATS, Criteria
from mlflow_cv_yolo.train.grid import RunConfig, expand, load_grid
from mlflow_cv_yolo.train.pruning import Pruning
from mlflow_cv_yolo.train.ray_cluster import ExecutorSettings


def fraction(text: str) -> float:
    """A threshold on mAP: a finite number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise ValueError(f"{text} is not in [0, 1]")
    return value


def margin(text: str) -> float:
    """A gain over the champion: a finite number in [-1, 1] (mAP differences)."""
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{text} is not a finite number in [-1, 1]")
    return value


def gate_stat(text: str) -> str:
    """What the improvement criterion compares: "ci" (a paired bootstrap interval) or "point"."""
    if text not in GATE_STATS:
        raise ValueError(f"{text!r} is not one of {', '.join(GATE_STATS)}")
    return text


def criteria_from(given: dict[str, Any], ini: dict[str, str], gate: dict[str, float]) -> Criteria:
    """Command line first, then the grid file's `gate:` (checked when read), then
    pytest.ini; an ini value out of range names its key."""
    values = {}
    keys = (
        ("min_map", fraction),
        ("min_map_scratch", fraction),
        ("min_improvement", margin),
        ("max_drop", fraction),
        ("gate_stat", gate_stat),
    )
    for key, parse in keys:
        if given.get(key) is not None or key in gate:
            values[key] = given[key] if given.get(key) is not None else gate[key]
            continue
        try:
            values[key] = parse(str(ini[key]))
        except ValueError as exc:
            raise ValueError(f"pytest.ini {key} = {ini[key]!r}: {exc}") from None
    return Criteria(**values)


EXECUTORS = ("local", "ray")


def gpus(text: str) -> float:
    """GPUs one run asks Ray for: a finite number >= 0 (0.25 packs four runs a GPU)."""
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also false for nan
        raise ValueError(f"{text} is not a finite number >= 0")
    return value


def cpus(text: str) -> float:
    """CPUs one run asks Ray for: a finite number > 0 (training needs a thread)."""
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise ValueError(f"{text} is not a finite number > 0")
    return value


def _integer_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < least:
        raise ValueError(f"{text} is not {what} >= {least}")
    return value


def epochs_count(text: str) -> int:
    """--prune-min-epochs: the first rung, an integer epoch >= 1."""
    return _integer_at_least(text, 1, "an epoch")


def eta(text: str) -> int:
    """--prune-eta: the reduction factor, an integer >= 2 (1/eta of the runs go on at each rung)."""
    return _integer_at_least(text, 2, "an integer")


@dataclass(frozen=True)
class Settings:
    root: Path
    grid_file: Path
    overrides: tuple[tuple[str, tuple[str, ...]], ...]
    data: Path
    default_data: bool
    experiment: str
    stack: str
    stack_dir: Path
    fresh_stack: bool
    criteria: Criteria
    registered_model: str
    promote_to: str
    promote: bool
    require_pretrained: bool
    allow_dirty_data: bool
    reports_dir: Path
    runs_dir: Path
    images: dict[str, str | None] = field(default_factory=dict)
    device: str = "auto"  # --device, its syntax checked (devices.parse); the machine is asked at start
    workers: int = 1  # xdist's -n (1 without xdist)
    rerun: bool = False  # train even where a finished run with the same key exists (see reuse)
    resume: bool = True  # continue an interrupted run with the same key (see resume)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    pruning: Pruning = field(default_factory=Pruning)  # --prune, --prune-min-epochs, --prune-eta

    def load_grid(self) -> list[RunConfig]:
        """The whole grid (before -k): read only when the experiment tests are collected."""
        return expand(load_grid(self.grid_file, [(k, list(v)) for k, v in self.overrides]))


def absolute(path: Path | str, root: Path) -> Path:
    path = Path(path).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def make_settings(*, root: Path, cwd: Path, options: dict[str, Any], criteria: Criteria) -> Settings:
    """`options` as the command line gave them (paths relative to `cwd`)."""
    overrides = [(k, tuple(v)) for k, v in options["grid_set"]]
    if options.get("model"):
        overrides.append(("model", (options["model"],)))
    data = options.get("data")
    return Settings(
        root=root,
        grid_file=absolute(options.get("grid") or root / "experiments" / "grid.yaml", cwd),
        overrides=tuple(overrides),
        data=absolute(data, cwd) if data else root / "data" / "tiny_coco.yaml",
        default_data=data is None,
        experiment=options["experiment"],
        stack=options["stack"],
        stack_dir=absolute(options["stack_dir"], cwd),
        fresh_stack=options["fresh_stack"],
        criteria=criteria,
        registered_model=options["registered_model"],
        promote_to=options["promote_to"],
        promote=not options["no_promote"],
        require_pretrained=options["require_pretrained"],
        allow_dirty_data=options["allow_dirty_data"],
        reports_dir=absolute(options["reports_dir"], cwd),
        runs_dir=absolute(options["runs_dir"], cwd),
        images={"mysql_image": options.get("mysql_image"), "s3_image": options.get("s3_image")},
        device=options.get("device") or "auto",
        workers=_workers(options),
        rerun=bool(options.get("rerun")),
        resume=not options.get("no_resume"),
        executor=ExecutorSettings(
            kind=options.get("executor") or "local",
            ray_address=options.get("ray_address"),
            cpus_per_run=options.get("cpus_per_run", 1.0),
            gpus_per_run=options.get("gpus_per_run", 0.0),
        ),
        pruning=Pruning(
            mode=options.get("prune") or "off",
            min_epochs=options.get("prune_min_epochs"),
            eta=options.get("prune_eta") or Pruning.eta,
        ),
    )


def _workers(options: dict[str, Any]) -> int:
    """How many xdist workers the session runs (one gateway each), 1 without xdist."""
    distributed = options.get("dist", "no") != "no" and options.get("tx")
    return max(1, len(options["tx"])) if distributed else 1
