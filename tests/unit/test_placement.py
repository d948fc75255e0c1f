"""Where runs train: --device parsing, device discovery and placement (pure logic,
fed any machine), training slots (real locks, real threads) and AMP's check offline."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlflow_cv_yolo.train import devices, training
from mlflow_cv_yolo.train.devices import DeviceError, Found, Placement, describe, place, select, slot, workers_to_start
from mlflow_cv_yolo.train.grid import GridError, expand, load_grid

H200 = "NVIDIA H200"
LINUX_CPU = Found(cuda=(), mps=False, platform="linux")


def gpus(n: int) -> Found:
    return Found(cuda=(H200,) * n, mps=False, platform="linux")


@pytest.mark.parametrize(
    "text, value",
    [("auto", "auto"), ("CPU", "cpu"), ("mps", "mps"), ("0", "0"), ("0,1, 3", "0,1,3"), ("cuda:1", "1"), ("01", "1")],
)
def test_device_syntax(text, value):
    assert devices.parse(text) == value


@pytest.mark.parametrize(
    "text, error",
    [
        ("gpu", "expected auto, cpu, mps or GPU indices such as 0 or 0,1"),
        ("0,-1", "expected auto, cpu, mps or GPU indices such as 0 or 0,1"),
        ("1,1", "a GPU is given twice"),
    ],
)
def test_device_syntax_errors(text, error):
    with pytest.raises(ValueError) as raised:
        devices.parse(text)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    "found, requested, selected",
    [
        (LINUX_CPU, "auto", ("cpu",)),
        (Found(mps=True, platform="darwin"), "auto", ("mps",)),
        (gpus(1), "auto", ("cuda:0 NVIDIA H200",)),
        (gpus(2), "auto", ("cuda:0 NVIDIA H200", "cuda:1 NVIDIA H200")),
        (gpus(4), "auto", tuple(f"cuda:{i} NVIDIA H200" for i in range(4))),
        (gpus(4), "3,1", ("cuda:3 NVIDIA H200", "cuda:1 NVIDIA H200")),
        (gpus(2), "cpu", ("cpu",)),
        (Found(cuda=("NVIDIA A100", "NVIDIA L4"), platform="linux"), "1", ("cuda:1 NVIDIA L4",)),
        (Found(mps=True, platform="darwin"), "mps", ("mps",)),
    ],
)
def test_selection(found, requested, selected):
    assert select(requested, found) == selected


@pytest.mark.parametrize(
    "found, requested, error",
    [
        (LINUX_CPU, "0", "--device 0: CUDA is not available here (no CUDA, no mps); use --device cpu or auto"),
        (gpus(1), "3", "--device 3: no GPU 3: torch sees 1 CUDA device (0: NVIDIA H200)"),
        (gpus(2), "0,2,5", "--device 0,2,5: no GPU 2, 5: torch sees 2 CUDA devices (0: NVIDIA H200, 1: NVIDIA H200)"),
        (gpus(1), "mps", "--device mps: Apple's Metal (mps) exists only on macOS; this is linux (1 CUDA GPU, no mps)"),
        (
            Found(mps=False, platform="darwin"),
            "mps",
            "--device mps: torch reports mps unavailable on this Mac "
            "(macOS 12.3+ and an Apple-silicon or AMD GPU are needed); use "
            "--device cpu",
        ),
    ],
)
def test_selection_errors_are_one_line(found, requested, error):
    with pytest.raises(DeviceError) as raised:
        select(requested, found)
    assert str(raised.value) == error


def test_probe_reads_this_machine():
    import torch

    found = devices.probe()
    assert found.cuda == tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    assert select("auto", found)[0].split()[0] == ("cuda:0" if found.cuda else "mps" if found.mps else "cpu")


def placements(workers: int, found: Found, cpus: int) -> list[Placement]:
    selected = select("auto", found)
    return [place(k, workers, selected, cpus) for k in range(workers)]


def test_one_gpu_packs_every_worker_and_feeds_each_from_its_share_of_cores():
    assert placements(8, gpus(1), 16) == [Placement("cuda:0", "cuda:0 NVIDIA H200", 1, 1)] * 8
    assert placements(1, gpus(1), 16) == [Placement("cuda:0", "cuda:0 NVIDIA H200", 8, 8)]
    assert placements(4, gpus(1), 2) == [Placement("cuda:0", "cuda:0 NVIDIA H200", 1, 0)] * 4


def test_two_gpus_alternate_and_four_gpus_take_one_worker_each():
    assert [p.device for p in placements(8, gpus(2), 16)] == ["cuda:0", "cuda:1"] * 4
    assert placements(4, gpus(4), 16) == [Placement(f"cuda:{i}", f"cuda:{i} NVIDIA H200", 1, 3) for i in range(4)]
    assert [p.device for p in placements(6, gpus(4), 12)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert [p.device for p in [place(k, 3, ("cuda:3 NVIDIA H200", "cuda:1 NVIDIA H200"), 6) for k in range(3)]] == [
        "cuda:3",
        "cuda:1",
        "cuda:3",
    ]


def test_cpu_workers_share_the_cores_and_never_train_more_runs_than_cores():
    assert placements(1, LINUX_CPU, 2) == [Placement("cpu", "cpu", 2, 0, slots=1)]
    assert placements(2, LINUX_CPU, 2) == [Placement("cpu", "cpu", 1, 0, slots=2)] * 2
    assert placements(4, LINUX_CPU, 2) == [Placement("cpu", "cpu", 1, 0, slots=2)] * 4  # two of four wait
    assert placements(3, LINUX_CPU, 8) == [Placement("cpu", "cpu", 2, 0, slots=4)] * 3
    assert placements(2, Found(mps=True, platform="darwin"), 8) == [Placement("mps", "mps", 1, 3)] * 2


def test_on_the_cpu_a_session_starts_one_worker_a_core_at_most():
    assert workers_to_start(4, ("cpu",), 2) == 2  # the other two would only wait for a slot
    assert workers_to_start(2, ("cpu",), 2) == 2
    assert workers_to_start(3, ("cpu",), 8) == 3
    assert workers_to_start(1, ("cpu",), 1) == 1
    assert workers_to_start(8, select("0", gpus(1)), 2) == 8  # runs share a GPU: every worker asked for
    assert workers_to_start(4, ("mps",), 2) == 4


def test_placement_refuses_a_worker_outside_the_count():
    with pytest.raises(ValueError):
        place(2, 2, ("cpu",), 2)


def test_a_replacement_worker_takes_the_dead_workers_place(tmp_path):
    """xdist replaces a killed gw1 of 2 with gw2 of 2: it gets place 1 (the dead
    worker's device and cores), not 2 (out of range) nor 0 (gw0's, still alive)."""
    folder = tmp_path / "workers"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mlflow_cv_yolo.train import devices\n"
        "with devices.worker_slot(Path(sys.argv[1]), 2, 1) as i:\n"
        "    print(i, flush=True); time.sleep(60)\n"
    )
    with devices.worker_slot(folder, 2, devices.worker_id("gw0")) as first:
        gw1 = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
        try:
            assert gw1.stdout.readline() == "1\n"
            with devices.worker_slot(folder, 2, 2) as while_alive:  # both held: shares by ordinal
                assert while_alive == 0
        finally:
            gw1.send_signal(signal.SIGKILL)
            gw1.wait(10)
        with devices.worker_slot(folder, 2, devices.worker_id("gw2")) as replacement:
            assert (first, replacement) == (0, 1)
            assert place(replacement, 2, ("cuda:0 A", "cuda:1 B"), 16).label == "cuda:1 B"


def test_the_header_line_says_what_was_found_and_how_runs_are_placed():
    assert describe("auto", LINUX_CPU, ("cpu",), 2, 2) == (
        "devices: cpu (auto: no CUDA, no mps) — 2 workers, 1 thread each, 2 training slots on 2 cores"
    )
    assert describe("auto", LINUX_CPU, ("cpu",), 2, 2, workers_asked=4) == (
        "devices: cpu (auto: no CUDA, no mps) — 2 workers of -n 4 (one a core: the others would wait for a core), "
        "1 thread each, 2 training slots on 2 cores"
    )
    assert describe("auto", LINUX_CPU, ("cpu",), 1, 2, workers_asked=2) == (
        "devices: cpu (auto: no CUDA, no mps) — 1 worker of -n 2 (one a selected test at most), "
        "2 threads each, 1 training slot on 2 cores"
    )
    assert describe("cpu", gpus(1), ("cpu",), 1, 2) == (
        "devices: cpu (--device cpu; found 1 CUDA GPU, no mps) — 1 worker, 2 threads each, 1 training slot on 2 cores"
    )
    assert describe("auto", gpus(2), select("auto", gpus(2)), 8, 16) == (
        "devices: cuda:0 NVIDIA H200, cuda:1 NVIDIA H200 (auto: 2 CUDA GPUs, no mps) — 8 workers, 1 thread and "
        "1 dataloader worker each, runs per device: cuda:0 4, cuda:1 4"
    )
    assert describe("0", gpus(1), select("0", gpus(1)), 1, 16) == (
        "devices: cuda:0 NVIDIA H200 (--device 0; found 1 CUDA GPU, no mps) — 1 worker, 8 threads and "
        "8 dataloader workers each"
    )


def test_runs_beyond_the_slots_wait_for_one(tmp_path):
    """Three runs, two slots: the third starts only when one of the first two ends."""
    events: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def run(name: str) -> None:
        with slot(tmp_path / "slots", 2, poll=0.02):
            with lock:
                events.append(f"start {name}")
            if name != "c":
                release.wait(10)
            with lock:
                events.append(f"end {name}")

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    third = threading.Thread(target=run, args=("c",))
    third.start()
    time.sleep(0.3)
    assert sorted(events) == ["start a", "start b"]  # c waits: both slots are held
    release.set()
    for t in (*threads, third):
        t.join(10)
    assert events.index("start c") > min(events.index("end a"), events.index("end b"))
    assert len(events) == 6
    with slot(tmp_path / "none", 0) as held:  # 0: no limit, nothing written
        assert held is None
    assert not (tmp_path / "none").exists()


def test_amp_is_an_optional_grid_key():
    grid = Path(__file__).resolve().parents[2] / "experiments" / "grid.yaml"
    base = [("imgsz", ["64"]), ("lr0", ["0.01"]), ("seed", ["1"])]
    (run,) = expand(load_grid(grid, base))
    assert "amp" not in run.values  # not given: not recorded, on by default on CUDA
    runs = expand(load_grid(grid, [*base, ("amp", ["true", "False"])]))
    assert [(r.id, r.values["amp"]) for r in runs] == [("amptrue", True), ("ampfalse", False)]
    with pytest.raises(GridError, match="^amp=maybe: must be true or false$"):
        load_grid(grid, [*base, ("amp", ["maybe"])])


def test_amp_check_offline_is_skipped_at_once_and_says_why():
    from ultralytics.utils import WEIGHTS_DIR

    if (WEIGHTS_DIR / training.AMP_WEIGHTS).is_file():
        pytest.skip(f"{training.AMP_WEIGHTS} is on disk here: the check would run (it needs CUDA)")
    start = time.monotonic()
    assert training.amp_check("cuda:0") == f"skipped: {WEIGHTS_DIR / 'yolo26n.pt'} is not on disk (no download tried)"
    assert time.monotonic() - start < 5  # nothing downloaded or waited for
    assert training.amp_check("cpu") == "skipped: no AMP on cpu"


def test_the_trainer_takes_the_sessions_amp_verdict_instead_of_checking_again():
    """ultralytics' trainer calls check_amp by its module's name: the verdict replaces it
    while a run trains, and nothing else is left changed."""
    from ultralytics.engine import trainer

    original = trainer.check_amp
    for verdict in ("passed", "skipped: offline", "failed", "failed: the check raised OSError: ..."):
        with training._amp_verdict(not verdict.startswith("failed")):
            assert trainer.check_amp(None) is (not verdict.startswith("failed"))
    assert trainer.check_amp is original
