#!/usr/bin/env bash
# Regenerates requirements/constraints.txt, the lock every install uses: a real
# install of the project with every extra of pyproject.toml into a throwaway venv,
# checked (pip check) and frozen. Constraints only constrain what gets installed, so
# the one file serves any choice of extras. Rerun it after changing dependencies or
# extras, and commit the result. Needs python3 >= 3.11 (tomllib) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=requirements/constraints.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m pip install -q --upgrade pip
extras=$("$py" -c 'import tomllib; print(",".join(tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})))')
"$py" -m pip install -q -e ".[$extras]"
"$py" -m pip check
{
  echo "# The lock: every package a full install resolved to, made by scripts/lock.sh (do not edit by hand)."
  echo "# Extras covered: $extras. Made with $("$py" -c 'import platform, sys; print(f"CPython {platform.python_version()} on {sys.platform} {platform.machine()}")')."
  echo "# Use: pip install -c $out -e '.[EXTRAS]'"
  "$py" -m pip freeze --all --exclude-editable --exclude setuptools --exclude wheel
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(grep -c '==' "$out") pins"
