#!/usr/bin/env bash
# The mini recipe: the whole pipeline on the embedded synthesized corpus, on a laptop CPU.
# Stages run in order; each is skipped when its output is already there (delete it to redo).
#   bash examples/mini/run.sh [--stage N] [--stop-stage M] [--exp DIR] [--hours H]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
stage=0; stop_stage=100; exp="$REPO/exp/mini"; hours=1.0
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2;; --stop-stage) stop_stage=$2; shift 2;;
    --exp) exp=$2; shift 2;; --hours) hours=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
PY="$REPO/.venv/bin/python"
export PATH="$REPO/.venv/bin:$PATH" PYTHONHASHSEED=0 HF_HUB_OFFLINE=1
mkdir -p "$exp"
log="$exp/log.$(date +%Y%m%d-%H%M%S)"
exec > >(tee -a "$log") 2>&1
say() { echo "[$(date +%H:%M:%S)] $*"; }
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
corpus="$exp/corpus"

if run_stage 0; then
  say "stage 0: synthesize the mini corpus ($hours h) -> $corpus"
  "$PY" -m speechlm corpus mini "$corpus" --hours "$hours"
fi
if run_stage 1; then
  say "stage 1: check the corpus"
  "$PY" -m speechlm corpus check "$corpus"
fi
say "done; log: $log"
