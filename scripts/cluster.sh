#!/usr/bin/env bash
# Several app processes on this machine behind HAProxy, with a private Redis, on one data folder; Ctrl-C stops
# them all. Installs what is missing first (redis-server, haproxy and postgresql too). Options: scripts/cluster.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_CLUSTER=1 scripts/setup.sh
exec .venv/bin/python scripts/cluster.py "$@"
