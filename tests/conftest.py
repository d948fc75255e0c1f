"""Shared fixtures of the project's own tests: real data (data/coco_persons), a
real tracking stack, and each test's MLflow settings put back after it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest

from mlflow_cv_yolo.handoff import CLIENT_ENV
from mlflow_cv_yolo.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
os.environ.update(CLIENT_ENV)  # this process's own MLflow clients download through the server too


@pytest.fixture(autouse=True)
def _mlflow_settings_restored():
    """A test that points mlflow somewhere (set_tracking_uri, MLFLOW_* variables)
    leaves the next test where it found it."""
    uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    mlflow.set_tracking_uri(uri)  # after the environment: it writes MLFLOW_TRACKING_URI


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    """60 real COCO person images, carried in the repository (see its README)."""
    return DATA / "coco_persons"


@pytest.fixture(scope="session")
def data_yaml() -> Path:
    """The dataset yaml over data/coco_persons."""
    return DATA / "coco_persons.yaml"


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """One real MariaDB + S3 + MLflow stack for the tests that share it."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), log=lambda line: None)
    info = stack.start("tests")
    yield info
    stack.stop()


# Flags that let Debian's Chromium run headless as root in a container and keep
# it from calling home; Playwright adds --headless and its own automation flags.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Browser:
    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions, as they come


# CI that installs Chromium (.ci/run, the workflow) says so with this variable: there a
# browser test that finds none fails instead of skipping, so CI cannot turn green without it.
REQUIRE_CHROMIUM = "CV_YOLO_REQUIRE_CHROMIUM"
INSTALL_CHROMIUM = "`apt-get install -y chromium` (or set CV_YOLO_CHROMIUM to a Chromium binary)"


def chromium_missing(why: str) -> None:
    """Skip with `why` and the install line, or fail where CV_YOLO_REQUIRE_CHROMIUM=1."""
    if os.environ.get(REQUIRE_CHROMIUM) == "1":
        pytest.fail(f"{REQUIRE_CHROMIUM}=1 (CI installs Chromium) but {why}: {INSTALL_CHROMIUM}", pytrace=False)
    pytest.skip(f"{why}: {INSTALL_CHROMIUM}")


def chromium() -> str | None:
    given = os.environ.get("CV_YOLO_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser(tmp_path):
    """A real headless Chromium (the distribution's package, not a Playwright
    download) with a fresh profile under tmp_path, driven by Playwright."""
    executable = chromium()
    if not executable:
        given = os.environ.get("CV_YOLO_CHROMIUM")
        chromium_missing(f"CV_YOLO_CHROMIUM={given} is not an executable" if given else "no Chromium on PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            context.set_default_timeout(60_000)  # two shared cores: a page can take a while
            page = context.pages[0] if context.pages else context.new_page()
            seen = Browser(page)
            page.on(
                "console",
                lambda m: (
                    seen.errors.append(f"console: {m.text} at {m.location.get('url')}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
            yield seen
        finally:
            context.close()
