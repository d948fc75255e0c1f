"""Shared fixtures of the project's own tests: real data, a real tracking stack,
and a way to run the experiment suite as a user would (a pytest subprocess)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlflow_cv_yolo.session_info import CLIENT_ENV
from mlflow_cv_yolo.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO.parent / "shared" / "data" / "tiny_coco"
os.environ.update(CLIENT_ENV)  # this process's own MLflow clients download through the server too


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    if not (TINY_COCO / "images" / "train").is_dir():
        pytest.fail(f"real test data missing: {TINY_COCO} (see its README)")
    return TINY_COCO


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory, tiny_coco) -> Path:
    """A dataset yaml over the shared real images (they stay where they are)."""
    path = tmp_path_factory.mktemp("data") / "tiny_coco.yaml"
    path.write_text(f"path: {tiny_coco}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                    "names:\n  0: person\n")
    return path


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """One real MariaDB + S3 + MLflow stack for the tests that share it."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), log=lambda line: None)
    info = stack.start("tests")
    yield info
    stack.stop()


# Flags that let Debian's Chromium run headless as root in a container and keep
# it from calling home; Playwright adds --headless and its own automation flags.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Browser:
    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions, as they come


@pytest.fixture
def browser(tmp_path):
    """A real headless Chromium (the distribution's package, not a Playwright
    download) with a fresh profile under tmp_path, driven by Playwright."""
    executable = os.environ.get("CV_YOLO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        pytest.fail("no Chromium to drive: `apt-get install -y chromium` (or set CV_YOLO_CHROMIUM to a Chromium binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        try:
            context.set_default_timeout(60_000)  # two shared cores: a page can take a while
            page = context.pages[0] if context.pages else context.new_page()
            seen = Browser(page)
            page.on("console", lambda m: seen.errors.append(f"console: {m.text} at {m.location.get('url')}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
            yield seen
        finally:
            context.close()
