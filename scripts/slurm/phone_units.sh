#!/usr/bin/env bash
# Speech -> frame-level phone units, as Slurm arrays: train the CTC phone recognizer on PAIRED_SPLIT,
# then label every SPLIT in NSHARD tasks (forced alignment of SPLIT.wrd when TRANSCRIPTS=1) and merge.
#   bash scripts/slurm/phone_units.sh CORPUS OUT_DIR NSHARD PAIRED_SPLIT SPLIT...
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
corpus=$1 out=$2 n=$3 paired=$4; shift 4
t=""; [ "${TRANSCRIPTS:-0}" = 1 ] && t="--transcripts"
tr=$(submit phone-units-train "" "$SPEECHLM phone-units train $corpus --split $paired --save $out/phone_ctc.pt ${TRAIN_OPTS:-}")
for split in "$@"; do
  a=$(submit_array "phone-units-$split" "$n" "$tr" \
    "$SPEECHLM phone-units label $corpus $split --model $out/phone_ctc.pt --out-dir $out $t --nshard $n --rank \$SLURM_ARRAY_TASK_ID")
  m=$(submit "phone-units-merge-$split" "$a" "$SPEECHLM phone-units merge $out $split --nshard $n")
  echo "$split: train $tr -> label $a -> merge $m"
done
