"""`--stack embedded`: an MLflow server on SQLite with artifacts in a local folder,
for machines without a MySQL server binary."""

from __future__ import annotations

from .base import Stack, StackInfo
from .mlflow_server import MLflowServer


class EmbeddedStack(Stack):
    kind = "embedded"

    def _start(self, reason: str) -> StackInfo:
        db, artifacts = self.state_dir / "mlflow.db", self.state_dir / "artifacts"
        server = MLflowServer(
            self.state_dir / "mlflow", backend_uri=f"sqlite:///{db}", artifacts_destination=str(artifacts), log=self.log
        )
        url = self._run(server)
        return StackInfo(
            self.kind, url, reason, {"mlflow": url, "metadata": f"sqlite {db}", "artifacts": str(artifacts)}
        )
