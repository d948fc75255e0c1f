"""tracking.RunRecorder's order of work, driven with ultralytics' callback sequence
on a fake trainer and a fake client (pure logic: what goes when; the real uploads are
checked by every suite test's check_run)."""

from __future__ import annotations

import threading
from concurrent.futures import wait
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlflow_cv_yolo.runs.tracking import RunRecorder
from mlflow_cv_yolo.train.training import PLOTS, TrainResult

VAL_PLOTS = [f"plots/{name}" for name in PLOTS if name != "results.png"]


class FakeClient:
    """Records each call as it starts; an upload of `fail` raises."""

    def __init__(self, steps_held=(), fail: str | None = None):
        self.calls: list[tuple] = []
        self.steps_held = steps_held
        self.fail = fail
        self._lock = threading.Lock()

    def get_metric_history(self, run_id, key):
        return [SimpleNamespace(step=s) for s in self.steps_held]

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        with self._lock:
            self.calls.append(("metrics", sorted({m.step for m in metrics}), sorted(t.key for t in tags)))

    def log_artifact(self, run_id, path, folder=None):
        name = f"{folder}/{Path(path).name}" if folder else Path(path).name
        with self._lock:
            self.calls.append(("file", name))
        if name == self.fail:
            raise OSError(f"upload of {name} failed")

    def uploaded(self) -> list[str]:
        return sorted(c[1] for c in self.calls if c[0] == "file")


class FakeTrainer:
    """ultralytics' trainer as the callbacks see it, writing its files when it would."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self.best, self.last = save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt"
        self.best.parent.mkdir(parents=True)
        (save_dir / "args.yaml").write_text("epochs: 2\n")
        self.epoch, self.metrics, self.tloss, self.lr = 0, {"metrics/mAP50-95(B)": 0.1}, [0.5], {"lr/pg0": 0.01}

    def label_loss_items(self, loss, prefix):
        return {f"{prefix}/box_loss": loss[0]}

    def result(self) -> TrainResult:
        return TrainResult(self.save_dir, self.best, self.last, {"metrics/mAP50-95(B)": 0.2})


def settled(recorder: RunRecorder, client: FakeClient) -> list[str]:
    """The files uploaded once those submitted so far are done."""
    wait(list(recorder._uploads.values()))
    return client.uploaded()


def train(recorder: RunRecorder, trainer: FakeTrainer, epochs: int, client: FakeClient, seen: dict) -> None:
    """ultralytics' order: per epoch train end, validation, files, fit end; then
    final_eval strips the weights and validates best.pt (its plots), then results.png."""
    for epoch in range(epochs):
        trainer.epoch = epoch
        recorder.on_train_epoch_end(trainer)
        recorder.on_val_start(None)
        recorder.on_val_end(None)
        (trainer.save_dir / "results.csv").write_text(f"epoch\n{epoch}\n")
        trainer.best.write_bytes(b"weights")
        trainer.last.write_bytes(b"weights")
        recorder.on_fit_epoch_end(trainer)
    seen["before final validation"] = settled(recorder, client)
    recorder.on_val_start(None)
    seen["at its start"] = settled(recorder, client)
    for name in PLOTS:
        (trainer.save_dir / name).write_bytes(b"png")
    recorder.on_val_end(None)
    recorder.on_fit_epoch_end(trainer)  # final_eval's, which is no epoch
    seen["after it"] = settled(recorder, client)


def test_files_go_once_each_as_soon_as_they_are_final_and_finish_waits_for_all(tmp_path):
    client, trainer, seen = FakeClient(), FakeTrainer(tmp_path), {}
    with RunRecorder(client, "run") as recorder:
        train(recorder, trainer, 2, client, seen)
        recorder.finish(trainer.result(), metrics={"peak": 1.0}, tags={"amp": "false"})
    # During training, nothing: results.csv and last.pt change every epoch.
    assert seen["before final validation"] == []
    assert seen["at its start"] == ["args.yaml", "results.csv", "weights/best.pt", "weights/last.pt"]
    assert seen["after it"] == sorted([*seen["at its start"], *VAL_PLOTS])
    assert client.uploaded() == sorted([*seen["after it"], "plots/results.png"])  # each file once
    metrics = [c for c in client.calls if c[0] == "metrics"]
    assert metrics == [("metrics", [1], []), ("metrics", [2], []), ("metrics", [0], ["amp"])]


def test_steps_the_run_holds_are_not_logged_again(tmp_path):
    client, trainer = FakeClient(steps_held=(1,)), FakeTrainer(tmp_path)
    with RunRecorder(client, "run") as recorder:
        train(recorder, trainer, 2, client, {})
        recorder.finish(trainer.result())
    assert [c[1] for c in client.calls if c[0] == "metrics"] == [[2], [0]]


def test_a_failed_upload_fails_finish_and_the_others_still_end(tmp_path):
    client, trainer = FakeClient(fail="weights/last.pt"), FakeTrainer(tmp_path)
    with pytest.raises(OSError) as raised, RunRecorder(client, "run") as recorder:
        train(recorder, trainer, 1, client, {})
        recorder.finish(trainer.result())
    assert str(raised.value) == "upload of weights/last.pt failed"
    assert len(client.uploaded()) == 4 + len(VAL_PLOTS) + 1


def test_finish_uploads_every_file_but_a_plot_even_if_missing_so_the_run_fails(tmp_path):
    """A plot ultralytics did not draw is left out; a missing results file or checkpoint
    is still uploaded, and the real client's upload of it raises."""
    client, trainer = FakeClient(), FakeTrainer(tmp_path)  # no epoch: no weights, no results, no plots
    with RunRecorder(client, "run") as recorder:
        recorder.finish(trainer.result())
    assert client.uploaded() == ["args.yaml", "results.csv", "weights/best.pt", "weights/last.pt"]
