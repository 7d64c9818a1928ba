#!/usr/bin/env bash
# The four SpeechLM tokenizers on one corpus directory, stage by stage (see README.md beside this file).
#   bash examples/tokenizers/run.sh --corpus CORPUS --exp DIR [--stage N] [--stop-stage M]
#        [--k 100] [--recognizer-epochs 60] [--t2u-updates 400] [--t2u-config t2u_tiny] [--text FILE]
# Each stage is skipped when its output is there (delete it to redo); the log is DIR/log.<time>.
#   1 text -> phoneme units -> binarized text (DIR/text_bin: train.phn-ltr.*)
#   2 speech -> phone units: CTC recognizer on train_paired, forced alignment of train/valid
#   3 speech -> hidden units: MFCC features, k-means, train/train_paired/valid .km (+ purity on valid)
#   4 text -> hidden units: text_to_unit on (phones, units) of train, generate, binarize (train.km-ltr.*)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common/recipe.sh"
stage=1; stop_stage=100; corpus=""; exp=""; k=100; recognizer_epochs=60; t2u_updates=400; t2u_config=t2u_tiny; text=""
parse_options "$@"
expect_positional 0
[ -n "$corpus" ] && [ -n "$exp" ] || { echo "usage: $0 --corpus CORPUS --exp DIR [...]" >&2; exit 2; }
text=${text:-$corpus/unpaired.wrd}
mkdir -p "$exp"
exp="$(cd "$exp" && pwd)"
start_log "$exp"

if run_stage 1; then
  say "stage 1: text -> phoneme units -> $exp/text_bin"
  done_or "$exp/text/lm.phn" && speechlm phonemize "$text" --out-prefix "$exp/text/lm" --seed 1
  done_or "$exp/text_bin/train.phn-ltr.phn.idx" && speechlm binarize --units "$exp/text/lm.phn" \
    --letters "$exp/text/lm.ltr" --unit-dict "$corpus/dict.phn.txt" --letter-dict "$corpus/dict.ltr.txt" \
    --dest "$exp/text_bin" --split train
fi
if run_stage 2; then
  say "stage 2: speech -> phone units (CTC recognizer on train_paired)"
  done_or "$exp/phone_ctc.pt" && speechlm phone-units train "$corpus" --split train_paired \
    --save "$exp/phone_ctc.pt" --epochs "$recognizer_epochs" --batch-size 8
  for split in train valid; do
    done_or "$exp/phn/$split.phn" && speechlm phone-units label "$corpus" "$split" --model "$exp/phone_ctc.pt" \
      --out-dir "$exp/phn" --transcripts
  done
  speechlm phone-units score --hyp "$exp/phn/valid.phn" --ref "$corpus/valid.phn" | tee "$exp/phn/valid.score.json"
fi
if run_stage 3; then
  say "stage 3: speech -> hidden units (MFCC + k-means, K=$k)"
  for split in train train_paired valid; do
    done_or "$exp/feat/${split}_0_1.npy" && speechlm features dump "$corpus" "$split" "$exp/feat"
  done
  done_or "$exp/km.npy" && speechlm kmeans learn "$exp/feat" train --km-path "$exp/km.npy" -k "$k" --percent 0.5
  for split in train train_paired valid; do
    done_or "$exp/km/$split.km" && speechlm kmeans apply "$exp/feat" "$split" --km-path "$exp/km.npy" --lab-dir "$exp/km"
  done
  speechlm kmeans score --units "$exp/km/valid.km" --phones "$corpus/valid.phn" | tee "$exp/km/valid.purity.json"
fi
if run_stage 4; then
  say "stage 4: text -> hidden units (text_to_unit, $t2u_config, $t2u_updates updates)"
  d="$exp/t2u_data"
  mkdir -p "$d"
  for split in train valid; do cp "$exp/phn/$split.phn" "$d/"; cp "$exp/km/$split.km" "$d/"; done
  cp "$corpus/dict.phn.txt" "$exp/km/dict.km.txt" "$d/"
  done_or "$exp/t2u/checkpoint_best.pt" && fairseq-hydra-train \
    --config-dir "$REPO/examples/tokenizers/config" --config-name "$t2u_config" \
    common.user_dir="$REPO/speechlm" task.data="$d" checkpoint.save_dir="$exp/t2u" \
    optimization.max_update="$t2u_updates"
  done_or "$exp/text/lm_km.km" && speechlm t2u generate --checkpoint "$exp/t2u/checkpoint_best.pt" \
    --units "$exp/text/lm.phn" --letters "$exp/text/lm.ltr" --out-prefix "$exp/text/lm_km"
  done_or "$exp/text_bin/train.km-ltr.km.idx" && speechlm binarize --units "$exp/text/lm_km.km" \
    --letters "$exp/text/lm_km.ltr" --unit-dict "$exp/km/dict.km.txt" --letter-dict "$corpus/dict.ltr.txt" \
    --dest "$exp/text_bin" --split train
fi
say "done; log: $log"
