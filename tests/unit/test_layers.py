"""The package's shape: its stages import one way (import-linter's layers contract in
pyproject.toml) and the library never imports pytest (fixtures/ is the only glue)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mlflow_cv_yolo"


def test_the_layers_contract_is_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([lint, "--no-cache"], cwd=PACKAGE.parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout.splitlines()


def test_the_library_never_imports_pytest():
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(name == "pytest" or name.startswith(("pytest.", "_pytest", "xdist")) for name in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == []
