"""The report folder: plots that show something, markdown and self-contained HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_samples import history, record, url, write

from mlflow_cv_yolo.decide.ranking import RunRecord, rank_configs, seed_noise
from mlflow_cv_yolo.present.report import ReportFiles


def assert_plots_show_something(files: ReportFiles) -> None:
    assert [p.name for p in files.plots] == ["curves_map.png", "curves_loss.png", "effects.png"]
    for plot in files.plots:
        with Image.open(plot) as image:
            assert image.format == "PNG"
            assert image.width > 300 and image.height > 200, (plot.name, image.size)
            assert np.asarray(image.convert("L"), dtype=float).var() > 0, f"{plot.name} is blank"


@pytest.fixture
def grid() -> tuple[list[RunRecord], dict]:
    runs = [
        record("imgsz320-seed1", "imgsz320", 0.45, start=1, imgsz="320", seed="1"),
        record("imgsz320-seed42", "imgsz320", 0.46, start=2, imgsz="320", seed="42"),
        record("imgsz416-seed1", "imgsz416", 0.50, start=3, imgsz="416", seed="1"),
        record("imgsz416-seed42", "imgsz416", 0.52, start=4, imgsz="416", seed="42"),
        record("imgsz512-seed1", "imgsz512", None, status="FAILED", start=5, imgsz="512", seed="1"),
    ]
    # The failed run has no history at all.
    return runs, {r.run_id: history(r.metrics["best/mAP50-95"], 3) for r in runs[:4]}


def test_report_files_and_plots(tmp_path: Path, grid) -> None:
    files = write(tmp_path, *grid)
    assert files.html.is_file() and files.markdown.is_file()
    assert {p.parent for p in files.plots} == {tmp_path / "reports" / "s1"}
    assert_plots_show_something(files)


def test_html_is_self_contained_with_table_links_and_decision(tmp_path: Path, grid) -> None:
    runs, histories = grid
    page = write(tmp_path, runs, histories).html.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert 'src="curves' not in page  # no reference to files beside the page
    for run in runs:
        assert f'<a href="{url(run)}">{run.name}</a>' in page
    # Best first, the failed run last.
    order = [
        page.index(f">{name}</a></td>")
        for name in ("imgsz416-seed42", "imgsz416-seed1", "imgsz320-seed42", "imgsz320-seed1", "imgsz512-seed1")
    ]
    assert order == sorted(order)
    assert "<td>FAILED</td>" in page and "status FAILED" in page
    assert "candidate beats the threshold by 0.260" in page and "PROMOTED" in page
    assert "<td>min_map</td><td>0.2500</td><td>0.5100</td><td>pass</td>" in page
    assert "<td>registered_version</td><td>3</td>" in page


def test_markdown_has_noise_sentence_table_and_images(tmp_path: Path, grid) -> None:
    runs, histories = grid
    text = write(tmp_path, runs, histories).markdown.read_text()
    sentence = seed_noise(rank_configs(runs)).sentence
    assert sentence.startswith("imgsz=416 beats imgsz=320 by 0.055 mAP50-95, seed spread 0.020")
    assert sentence in text
    assert f"| [imgsz416-seed42]({url(runs[3])}) | FINISHED | 3 | 416 |" in text
    assert "| imgsz | 320 | 0.4550 | 0.0050 | 2 |" in text  # the effects table
    assert "Candidate: [imgsz416-seed42](" in text
    assert "![val mAP50-95 per epoch](curves_map.png)" in text


def test_single_run_with_one_epoch(tmp_path: Path) -> None:
    only = record("base", "base", 0.1, start=1)
    files = write(
        tmp_path,
        [only],
        {only.run_id: history(0.1, 1)},
        {"outcome": "rejected", "reason": "below threshold", "candidate": "base", "criteria": []},
    )
    assert_plots_show_something(files)
    text = files.markdown.read_text()
    assert "cannot be estimated" in text and "No hyperparameter varies" in text
    assert "below threshold" in files.html.read_text()


def test_only_failed_runs(tmp_path: Path) -> None:
    failed = record("base", "base", None, status="FAILED", start=1)
    files = write(
        tmp_path, [failed], {}, {"outcome": "skipped", "reason": "no run finished", "candidate": None, "criteria": []}
    )
    assert_plots_show_something(files)
    assert "no run finished" in files.markdown.read_text()
