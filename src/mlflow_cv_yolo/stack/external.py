"""`--stack external`: a tracking server someone else runs (MLFLOW_TRACKING_URI);
nothing is started or stopped here."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .base import Stack, StackInfo
from .mlflow_server import require_reachable


class ExternalStack(Stack):
    kind = "external"

    def __init__(self, state_dir: Path, url: str | None = None, log: Callable[[str], None] = print):
        super().__init__(state_dir, log)
        self.url = url or os.environ.get("MLFLOW_TRACKING_URI", "")

    def _start(self, reason: str) -> StackInfo:
        if not self.url:
            raise RuntimeError("--stack external: set MLFLOW_TRACKING_URI to the server's URL")
        if self.url.startswith(("http://", "https://")):
            require_reachable(self.url)
        return StackInfo(self.kind, self.url, reason, {"mlflow": self.url})
