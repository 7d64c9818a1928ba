#!/usr/bin/env bash
# The mini recipe: the whole pipeline on the embedded synthesized corpus, on a laptop CPU.
# Stages run in order; each is skipped when its output is already there (delete it to redo).
#   bash examples/mini/run.sh [--stage N] [--stop-stage M] [--exp DIR] [--hours H]
#   0 synthesize the corpus           1 check it
#   2 text -> phoneme units, binarized (unpaired text for UCTC; valid.wrd for validation)
#   3 SpeechLM-P tiny pre-training on train (speech units: the corpus's true 50 Hz phones)
#   4 CTC fine-tuning on train_paired  5 decoding of test and test_other: a WER table
#   6 the same fine-tuning from random weights, and both last checkpoints decoded side by side
#   7 (only when asked: --stage 7 --stop-stage 7; ~30 min) speech translation into a SYNTHETIC language
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
stage=0; stop_stage=6; exp="$REPO/exp/mini"; hours=1.0
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
text="$exp/text"; text_bin="$exp/text_bin"
if run_stage 2; then
  say "stage 2: text -> phoneme units -> $text_bin"
  for pair in "train:$corpus/unpaired.wrd" "valid:$corpus/valid.wrd"; do
    split=${pair%%:*}; src=${pair#*:}
    if [ -f "$text_bin/$split.phn-ltr.phn.idx" ]; then say "  $split: exists, skipped"; continue; fi
    "$PY" -m speechlm phonemize "$src" --out-prefix "$text/$split" --seed 1
    "$PY" -m speechlm binarize --units "$text/$split.phn" --letters "$text/$split.ltr" \
      --unit-dict "$corpus/dict.phn.txt" --letter-dict "$corpus/dict.ltr.txt" --dest "$text_bin" --split "$split"
  done
fi
pre="$exp/pretrain"
if run_stage 3; then
  if [ -f "$pre/checkpoint_last.pt" ] && [ -f "$pre/done" ]; then say "stage 3: pre-training done, skipped"; else
    say "stage 3: SpeechLM-P tiny pre-training -> $pre (resumes from checkpoint_last.pt)"
    (cd "$REPO" && fairseq-hydra-train --config-dir examples/mini/config/pretrain --config-name speechlm_tiny \
      task.data="$corpus" task.text_data="$text_bin" task.labels='[phn]' common.user_dir="$REPO/speechlm" \
      checkpoint.save_dir="$pre" hydra.run.dir="$pre/hydra" optimization.update_freq='[2]')
    touch "$pre/done"
  fi
fi
ft="$exp/finetune"
if run_stage 4; then
  if [ -f "$ft/done" ]; then say "stage 4: fine-tuning done, skipped"; else
    say "stage 4: CTC fine-tuning on train_paired -> $ft"
    (cd "$REPO" && fairseq-hydra-train --config-dir examples/mini/config/finetune --config-name speechlm_ctc_tiny \
      task.data="$corpus" model.w2v_path="$pre/checkpoint_last.pt" common.user_dir="$REPO/speechlm" \
      checkpoint.save_dir="$ft" hydra.run.dir="$ft/hydra")
    touch "$ft/done"
  fi
fi
if run_stage 5; then
  say "stage 5: Viterbi decoding of test and test_other -> $exp/decode"
  (cd "$REPO" && "$PY" -m speechlm infer --config-dir examples/mini/config/decode --config-name infer_viterbi \
    common_eval.path="$ft/checkpoint_best.pt" dataset.gen_subset=test,test_other \
    common_eval.results_path="$exp/decode")
fi
ft0="$exp/finetune_scratch"
if run_stage 6; then
  if [ -f "$ft0/done" ]; then say "stage 6: from-scratch baseline done, skipped"; else
    say "stage 6: the same CTC fine-tuning from random weights (baseline) -> $ft0"
    (cd "$REPO" && fairseq-hydra-train --config-dir examples/mini/config/finetune --config-name speechlm_ctc_tiny \
      task.data="$corpus" model.w2v_path="$pre/checkpoint_last.pt" model.no_pretrained_weights=true \
      common.user_dir="$REPO/speechlm" checkpoint.save_dir="$ft0" hydra.run.dir="$ft0/hydra")
    touch "$ft0/done"
  fi
  say "WER / CER of the last checkpoints (pre-trained vs random initialisation, same updates):"
  for run in finetune finetune_scratch; do
    (cd "$REPO" && "$PY" -m speechlm infer --config-dir examples/mini/config/decode --config-name infer_viterbi \
      common_eval.path="$exp/$run/checkpoint_last.pt" dataset.gen_subset=test,test_other \
      common_eval.results_path="$exp/decode_last_$run") | grep '^test' | sed "s/^/$run  /"
  done
fi
st="$exp/st_data"; st_exp="$exp/st"
if run_stage 7; then
  say "stage 7: speech translation into the SYNTHETIC Cipherese (speechlm/corpora/st_synthetic.py)"
  [ -f "$st/config.yaml" ] || "$PY" -m speechlm st prepare "$corpus" "$st" --synthetic cipherese --splits train,valid,test
  "$PY" -m speechlm st baseline "$st" --split test
  if [ ! -f "$st_exp/done" ]; then
    (cd "$REPO" && fairseq-hydra-train --config-dir examples/mini/config/st --config-name speechlm_st_tiny \
      task.data="$st" model.w2v_path="$pre/checkpoint_last.pt" common.user_dir="$REPO/speechlm" \
      checkpoint.save_dir="$st_exp" hydra.run.dir="$st_exp/hydra")
    touch "$st_exp/done"
  fi
  (cd "$REPO" && fairseq-generate "$st" --user-dir "$REPO/speechlm" --task speech_to_text \
    --path "$st_exp/checkpoint_best.pt" --gen-subset test --beam 5 --max-tokens 20000 \
    --required-batch-size-multiple 1 --scoring sacrebleu) | tail -1
fi
say "done; log: $log"
