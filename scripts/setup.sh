#!/usr/bin/env bash
# Create .venv (Python 3.11) and install exactly what requirements.lock pins, then the project itself.
# Safe to run again; `bash scripts/lock.sh` refreshes the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
start=$SECONDS
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
echo "setup: installing the locked dependencies (requirements.lock; torch alone is about 1 GB to download)"
# pip's own progress stays visible; only the noise of this machine's local package mirror is hidden
.venv/bin/python -m pip install --progress-bar on --disable-pip-version-check -r requirements.lock 2>&1 \
  | { grep -v -E "^(WARNING: Location|Requirement already satisfied)" || true; }
echo "setup: installing the project (editable, no further dependencies)"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -m src.env_check
echo "setup: done in $((SECONDS - start)) s; .venv holds $(du -sh .venv | cut -f1)"
