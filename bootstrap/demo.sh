#!/usr/bin/env bash
# Installs Beachhead, starts the vSphere lab, and runs a bootstrap plan on its Linux guests,
# then shows the run's journal and undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/install.sh
exec .venv/bin/python -m beachhead.bootstrap.run_demo "$@"
