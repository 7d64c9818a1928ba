#!/usr/bin/env bash
# One prepared check for a GPU machine (about 5 minutes on one GPU, limit 8): SpeechLM Base pre-training in fp16
# through fairseq's FP16Optimizer for a few hundred updates (every loss finite, overflow-skipped updates counted),
# its step time against fairseq's HuBERT Base at fp16 on the same batch, CTC decoding speed, peak memory.
# Writes a JSON (scripts/gpu_check.py says what each number is).
#   bash scripts/gpu_check.sh [--out FILE] [--cpu-smoke] [-- ARGS for scripts/gpu_check.py, e.g. --updates 200]
# --cpu-smoke: the same code with tiny sizes in bf16 on the CPU (checks the path, measures nothing).
# Installs what is missing first (scripts/setup.sh: keeps an already installed CUDA torch).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
out="exp/gpu_check/gpu_check.json"
smoke=false
LIMIT_S=480
extra=()
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --cpu-smoke) smoke=true; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--out FILE] [--cpu-smoke] [-- ARGS for scripts/gpu_check.py]" >&2; exit 2 ;;
  esac
done
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import fairseq, speechlm' 2>/dev/null; then
  say "installing (scripts/setup.sh)"
  bash scripts/setup.sh
fi
PY=.venv/bin/python
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if $smoke; then
  args=(--cpu-smoke --updates 4 --warmup 1 --hubert-updates 3 --batch 2 --seconds 1 --decode-repeats 1)
else
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "ERROR: torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)')); on a CPU use --cpu-smoke"
    exit 1
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  args=()
fi
mkdir -p "$(dirname "$out")"
say "running scripts/gpu_check.py ${args[*]} ${extra[*]} (limit ${LIMIT_S} s) -> $out"
rc=0
timeout "$LIMIT_S" "$PY" scripts/gpu_check.py --out "$out" "${args[@]}" "${extra[@]}" \
  2> "${out%.json}.log" || rc=$?
if [ "$rc" = 124 ]; then
  say "ERROR: over ${LIMIT_S} s; fewer updates: $0 -- --updates 100"
elif [ "$rc" != 0 ]; then
  say "ERROR: exit $rc; the last lines of ${out%.json}.log:"
  tail -20 "${out%.json}.log" >&2
else
  say "done: $out"
fi
exit "$rc"
