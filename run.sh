#!/usr/bin/env bash
# Set up (first time only) and start the app on http://127.0.0.1:5000
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python server.py "$@"
