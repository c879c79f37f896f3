#!/usr/bin/env bash
# Refresh requirements.lock from pyproject.toml (all extras, every platform) with uv's resolver.
# Run after changing a dependency in pyproject.toml, then commit both files: `bash scripts/lock.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
UV=.venv/bin/uv
[[ -x $UV ]] || UV=uv
"$UV" pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
  -c scripts/lock-constraints.txt -o requirements.lock --no-header "$@"
echo "requirements.lock refreshed; run bash scripts/setup.sh to install it"
