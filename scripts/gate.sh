#!/usr/bin/env bash
# The promotion gate: the CI profile of the grid (experiments/ci.yaml, which carries
# its own thresholds). Run by .ci/run and by the GitHub workflow; extra arguments go
# to pytest. Exit status: 0 = promoted, non-zero = a test or a criterion failed.
#
# With MLFLOW_TRACKING_URI set (a repository secret; MLFLOW_TRACKING_USERNAME and
# MLFLOW_TRACKING_PASSWORD too for MLflow's basic-auth app) the gate records on that
# persistent server: `production` survives between runs and each challenger is
# compared with it. Without it the gate uses a throwaway stack: nothing is kept and
# there is never a champion to beat. MLflow clients read the credentials from the
# environment; nothing here prints them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
  echo "gate: persistent tracking server (MLFLOW_TRACKING_URI is set): challengers are compared with its production model"
  stack=(--stack external)
else
  echo "gate: no MLFLOW_TRACKING_URI: throwaway stack, nothing is kept and there is no champion to compare with"
  # An empty secret arrives as an empty variable, which MLflow would read as a URI.
  unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
  stack=(--fresh-stack)
fi
# The stack choice comes last, so that it wins over a --stack among the arguments.
exec python -m pytest experiments --grid experiments/ci.yaml -n 2 -p no:cacheprovider \
  --junitxml=reports/junit.xml "$@" "${stack[@]}"
