"""The grid file, overrides and run ids (pure logic)."""

from pathlib import Path

import pytest

from mlflow_cv_yolo.train.grid import GridError, expand, load_gate, load_grid, parse_override

GRID = Path(__file__).resolve().parents[2] / "experiments" / "grid.yaml"


def test_default_grid_has_eight_runs_with_ids_from_varying_axes():
    runs = expand(load_grid(GRID))
    assert [r.id for r in runs] == [
        "imgsz320-lr0.005-seed1",
        "imgsz320-lr0.005-seed42",
        "imgsz320-lr0.01-seed1",
        "imgsz320-lr0.01-seed42",
        "imgsz416-lr0.005-seed1",
        "imgsz416-lr0.005-seed42",
        "imgsz416-lr0.01-seed1",
        "imgsz416-lr0.01-seed42",
    ]
    assert runs[-1].config_id == "imgsz416-lr0.01"
    assert runs[-1].values == {
        "model": "yolov8n.pt",
        "optimizer": "SGD",
        "epochs": 3,
        "batch": 8,
        "imgsz": 416,
        "lr0": 0.01,
        "seed": 42,
    }


def test_overrides_replace_levels_and_fixed_axes_leave_the_id():
    runs = expand(load_grid(GRID, [("epochs", ["1"]), ("imgsz", ["64"]), ("seed", ["1", "2", "1"])]))
    assert [r.id for r in runs] == ["lr0.005-seed1", "lr0.005-seed2", "lr0.01-seed1", "lr0.01-seed2"]
    assert {r.epochs for r in runs} == {1} and {r.imgsz for r in runs} == {64}


def test_nothing_varies_gives_base():
    runs = expand(load_grid(GRID, [("imgsz", ["64"]), ("lr0", ["0.01"]), ("seed", ["1"])]))
    assert [(r.id, r.config_id) for r in runs] == [("base", "base")]


@pytest.mark.parametrize(
    "override, message",
    [
        (("epochs", ["0"]), "epochs=0: must be an integer >= 1"),
        (("imgsz", ["100"]), "imgsz=100: must be a positive multiple of 32"),
        (("imgsz", ["-64"]), "imgsz=-64: must be a positive multiple of 32"),
        (("lr0", ["0"]), "lr0=0: must be a finite number > 0"),
        (("lr0", ["fast"]), "lr0=fast: must be a number"),
        (("optimizer", ["auto"]), "optimizer=auto: must be one of"),
        (("colour", ["red"]), "--set colour: unknown key"),
        (("model", ["resnet"]), "model=resnet: must be a .pt weights file or a .yaml"),
    ],
)
def test_bad_values_name_the_key_and_value(override, message):
    with pytest.raises(GridError, match=None) as err:
        load_grid(GRID, [override])
    assert message in str(err.value)


def test_parse_override():
    assert parse_override("imgsz=320,416") == ("imgsz", ["320", "416"])
    with pytest.raises(GridError, match="expected KEY=VALUE"):
        parse_override("imgsz")


def test_grid_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text(
        "epochs: 1\nimgsz: 64\nlr0: 0.01\nseed: 1\nbatch: 8\noptimizer: SGD\nmodel: yolov8n.yaml\nwarmup: 3\n"
    )
    with pytest.raises(GridError, match=f"grid file {bad}: unknown key 'warmup'"):
        load_grid(bad)
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "missing.yaml")


POINT = "model: yolov8n.yaml\noptimizer: SGD\nepochs: 1\nbatch: 8\nimgsz: 64\nlr0: 0.01\nseed: 1\n"


def test_gate_mapping_is_read_and_left_out_of_the_grid(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(POINT + "gate:\n  min_map: 0.05\n  min_map_scratch: 0\n  min_improvement: 0.01\n")
    assert load_gate(grid) == {"min_map": 0.05, "min_map_scratch": 0.0, "min_improvement": 0.01}
    assert [r.id for r in expand(load_grid(grid))] == ["base"]
    assert load_gate(GRID) == {}  # the default grid has none: pytest.ini's thresholds apply


def test_ci_profile_carries_its_own_gate():
    gate = load_gate(GRID.with_name("ci.yaml"))
    assert set(gate) == {"min_map", "min_map_scratch", "min_improvement"}


@pytest.mark.parametrize(
    "gate, message",
    [
        ("gate:\n  min_map: 1.5\n", "gate.min_map = 1.5: must be a number in [0, 1]"),
        ("gate:\n  min_map: -0.1\n", "gate.min_map = -0.1: must be a number in [0, 1]"),
        ("gate:\n  min_map: high\n", "gate.min_map = 'high': must be a number in [0, 1]"),
        ("gate:\n  min_map: true\n", "gate.min_map = True: must be a number in [0, 1]"),
        ("gate:\n  min_map: .nan\n", "gate.min_map = nan: must be a number in [0, 1]"),
        (
            "gate:\n  min_mAP: 0.2\n",
            "gate.min_mAP: unknown key (allowed: min_map, min_map_scratch, min_improvement, max_drop)",
        ),
        ("gate: 0.25\n", "gate: expected a mapping of min_map, min_map_scratch, min_improvement, max_drop to numbers"),
    ],
)
def test_bad_gate_is_one_line_naming_the_file_and_key(tmp_path, gate, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(POINT + gate)
    for load in (load_gate, load_grid):  # the grid itself refuses a bad gate too
        with pytest.raises(GridError) as err:
            load(grid)
        assert str(err.value) == f"grid file {grid}: {message}"
