"""What a person opens in MLflow's UI: the experiment the suite sets up, and the
links it prints, checked in a real headless Chromium against a real `mlflow server`."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.stack import make_stack

BEST = "metrics.`best/mAP50-95`"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """A real MLflow server on SQLite (the UI is the same on every stack)."""
    stack = make_stack("embedded", tmp_path_factory.mktemp("ui-stack"), log=lambda line: None)
    info = stack.start("UI tests")
    yield info.tracking_uri
    stack.stop()


def test_ensure_experiment_sets_kind_and_description_once(server):
    client = MlflowClient(server)
    created = tracking.ensure_experiment(client, "fresh")
    assert tracking.ensure_experiment(client, "fresh") == created
    tags = client.get_experiment(created).tags
    assert (tags[tracking.KIND_TAG], tags[tracking.NOTE_TAG]) == ("custom_model_development", tracking.DESCRIPTION)

    bare = client.create_experiment("made-before")  # as main's session created it: no tags
    assert tracking.ensure_experiment(client, "made-before") == bare
    tags = client.get_experiment(bare).tags
    assert (tags[tracking.KIND_TAG], tags[tracking.NOTE_TAG]) == ("custom_model_development", tracking.DESCRIPTION)

    described = client.create_experiment("described", tags={tracking.NOTE_TAG: "someone's own words"})
    tracking.ensure_experiment(client, "described")
    tags = client.get_experiment(described).tags
    assert (tags[tracking.KIND_TAG], tags[tracking.NOTE_TAG]) == ("custom_model_development", "someone's own words")


def test_a_deleted_experiment_is_named_not_reused(server):
    client = MlflowClient(server)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    with pytest.raises(MlflowException) as raised:
        tracking.ensure_experiment(client, "gone")
    assert raised.value.message == (
        f"experiment 'gone' (id {gone}) is deleted: restore it with `mlflow experiments "
        f"restore --experiment-id {gone}` or choose another experiment name"
    )


def test_link_forms():
    base = "http://127.0.0.1:5000"
    assert tracking.runs_view_url(base + "/", "7") == f"{base}/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking.runs_view_url(base, "7", search="tags.`suite.session` = 's1'", order_by=BEST) == (
        f"{base}/#/experiments/7/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60suite.session%60%20%3D%20%27s1%27"
        "&orderByKey=metrics.%60best%2FmAP50-95%60&orderByAsc=false"
    )
    assert tracking.run_url(base, "7", "abc") == f"{base}/#/experiments/7/runs/abc?workflowType=machine_learning"
    with pytest.raises(ValueError) as raised:
        tracking.run_url("sqlite:///x.db", "7", "abc")
    assert str(raised.value) == "tracking URI 'sqlite:///x.db': no MLflow UI behind it (links need an http(s) server)"


def test_runs_view_lists_the_runs_with_their_metric(server, browser, tmp_path):
    client = MlflowClient(server)
    experiment_id = tracking.ensure_experiment(client, "cv_yolo_tiny")
    parent = client.create_run(experiment_id, run_name="session-s1", tags={tracking.TAG_KIND: "session"})
    runs = {}
    for name, best in (("imgsz64-seed1", 0.25), ("imgsz64-seed42", 0.5)):
        run = client.create_run(
            experiment_id, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id, tracking.TAG_KIND: "grid"}
        )
        for epoch in (1, 2):
            client.log_metric(run.info.run_id, "mAP50-95", best * epoch / 2, step=epoch)
        client.log_metric(run.info.run_id, "best/mAP50-95", best)
        client.set_terminated(run.info.run_id)
        runs[name] = run.info.run_id
    client.set_terminated(parent.info.run_id)
    page = browser.page
    page.set_viewport_size({"width": 2200, "height": 900})  # room for the metric column beside the assistant

    page.goto(tracking.runs_view_url(server, experiment_id, order_by=BEST))
    names = page.locator(".ag-row a[href*='/runs/']")
    names.first.wait_for()
    # Sorted by the metric, the child runs are listed flat, best first (the
    # session run, without the metric, last).
    assert names.all_inner_texts() == ["imgsz64-seed42", "imgsz64-seed1", "session-s1"]
    assert page.get_by_text(tracking.DESCRIPTION).is_visible()  # the experiment's description
    assert "Sort: best/mAP50-95" in page.get_by_role("button", name="Sort").inner_text()
    # MLflow 3.17 shows no metric column until one is picked; pick it as a person would.
    page.get_by_role("button", name="Columns").click()
    page.get_by_test_id("column-selector-tree").get_by_text("best/mAP50-95", exact=True).click()
    page.keyboard.press("Escape")
    page.locator(f"[role=columnheader][col-id='{BEST}']").wait_for()
    assert page.locator(f".ag-row [col-id='{BEST}']").all_inner_texts() == ["0.5", "0.25", "-"]
    page.screenshot(path=str(tmp_path / "runs_view.png"))

    page.goto(tracking.run_url(server, experiment_id, runs["imgsz64-seed42"]))
    page.get_by_text("best/mAP50-95", exact=True).first.wait_for()
    assert page.get_by_role("heading", name="imgsz64-seed42").is_visible()
    page.screenshot(path=str(tmp_path / "run_page.png"))
