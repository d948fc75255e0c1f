"""The session's HTML report as a person sees it: opened from disk in a real
headless Chromium, it renders, every image loads, and the console stays clean."""

from __future__ import annotations

import re

from report_samples import DECISION, history, record, write


def test_report_renders_in_chromium_with_every_image_loaded(tmp_path, browser):
    runs = [
        record("imgsz320-seed1", "imgsz320", 0.45, start=1, imgsz="320", seed="1"),
        record("imgsz416-seed42", "imgsz416", 0.52, start=2, imgsz="416", seed="42"),  # DECISION's candidate
        record("imgsz512-seed1", "imgsz512", None, status="FAILED", start=3, imgsz="512", seed="1"),
    ]
    files = write(tmp_path, runs, {r.run_id: history(r.metrics["best/mAP50-95"], 3) for r in runs[:2]}, DECISION)
    page = browser.page
    page.goto(files.html.as_uri())
    page.wait_for_load_state("load")  # every <img> has loaded or failed by then

    assert page.title() == "Experiment report s1"
    assert page.locator("h1").all_inner_texts() == ["Experiment report: session s1"]
    assert page.locator("h2").all_inner_texts() == [
        "Decision",
        "Runs, best first (val mAP50-95 of the best weights)",
        "Configurations and seed noise",
        "Hyperparameter effects",
        "Curves",
    ]
    assert page.locator("table").first.is_visible()
    assert (
        page.locator("a", has_text="imgsz416-seed42").first.get_attribute("href")
        == "http://127.0.0.1:5000/#/experiments/1/runs/rid2"
    )
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    # The same images, in the same order, as report.md shows beside the page.
    assert [alt for alt, *_ in images] == re.findall(r"!\[([^\]]*)\]\(", files.markdown.read_text())
    assert len(images) == 3
    for alt, complete, width, height in images:
        assert complete and width > 300 and height > 200, (alt, complete, width, height)
    assert browser.errors == []
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
