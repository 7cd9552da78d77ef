#!/usr/bin/env bash
# Installs Beachhead, starts a local sshd as a demo guest, and runs a bootstrap plan on it,
# then shows the run's journal and undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/install.sh
exec .venv/bin/python -m bootstrap.run_demo "$@"
