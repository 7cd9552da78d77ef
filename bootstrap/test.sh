#!/usr/bin/env bash
# Installs everything, then runs the linters, the type checker and the whole test suite.
# Extra arguments go to pytest, e.g. `bash bootstrap/test.sh -k undo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/mypy examples   # scripts, not a package: checked on their own
# --durations: the slowest tests, to keep the suite inside its CI time budget.
exec .venv/bin/pytest --durations=25 "$@"
