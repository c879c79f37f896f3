#!/usr/bin/env bash
# Every GPU measurement docs/studies/benchmarks.md still lacks, in one run of under 8 minutes, as one markdown table
# ($OUT/gpu_check.md when $OUT is set, else benchmarks/results/gpu_check.md). See "GPU check" in that file.
#
#   bash benchmarks/gpu_check.sh [--tiny] [--peak-tflops X] [--budget-s S] [--only image,recon] [--out FILE]
#
# --tiny (or TINY=1): the same code on the CPU in tiny sizes, for the test. Wheels in ./.whl (carried to a
# GPU machine that has no package index) are installed into /tmp/site first. PYTHON picks the interpreter
# (default python3); BUDGET_S the whole run's wall-clock budget in seconds, wheel install included (460).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
[ "${TINY:-0}" = 1 ] && set -- --tiny "$@"
# opt-in (PEERS=1, about 4 minutes of the budget): quality per GPU-minute against the peers, bf16, one device
# (docs/guide/benchmarks.md); the digits are written to /tmp/peers_digits on first use
if [ "${PEERS:-0}" = 1 ] && [ "${TINY:-0}" != 1 ]; then
  mkdir -p "${OUT:-benchmarks/results}"
  timeout 300 "$py" -m benchmarks.peers --domain image --minutes 0.5 --data /tmp/peers_digits --out /tmp/peers_runs \
    --device cuda --precision bf16 --json "${OUT:-benchmarks/results}/peers.json" || echo "peers: failed (exit $?)"
fi
budget=$(( ${BUDGET_S:-460} - (SECONDS - start) ))
# the Python side keeps every step inside the budget and writes the table; this outer limit is the backstop
exec timeout -k 10 $(( budget + 30 )) "$py" -m benchmarks.gpu_check --budget-s "$budget" "$@"
