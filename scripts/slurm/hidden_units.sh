#!/usr/bin/env bash
# Speech -> hidden units, as Slurm arrays: features dump (NSHARD tasks) -> k-means learn on LEARN_SPLIT
# -> k-means apply (NSHARD tasks per split) -> merge (SPLIT.km + dict.km.txt).
#   bash scripts/slurm/hidden_units.sh TSV_DIR FEAT_DIR LAB_DIR NSHARD LEARN_SPLIT SPLIT...
# FEATURE_OPTS: "" for MFCC, or "--checkpoint CKPT --layer 6" (add --device cuda and a GPU in SBATCH_OPTS).
# KMEANS_OPTS: e.g. "-k 500 --percent 0.1".
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
tsv=$1 feat=$2 lab=$3 n=$4 learn=$5; shift 5
fopts="${FEATURE_OPTS:-}" kopts="${KMEANS_OPTS:--k 500 --percent 0.1}"
declare -A dump
for split in "$learn" "$@"; do
  [ -n "${dump[$split]:-}" ] && continue
  dump[$split]=$(submit_array "features-$split" "$n" "" \
    "$SPEECHLM features dump $tsv $split $feat $fopts --nshard $n --rank \$SLURM_ARRAY_TASK_ID")
done
k=$(submit kmeans-learn "${dump[$learn]}" "$SPEECHLM kmeans learn $feat $learn --nshard $n --km-path $lab/km.npy $kopts")
for split in "$@"; do
  a=$(submit_array "kmeans-apply-$split" "$n" "$k:${dump[$split]}" \
    "$SPEECHLM kmeans apply $feat $split --km-path $lab/km.npy --lab-dir $lab --nshard $n --rank \$SLURM_ARRAY_TASK_ID")
  m=$(submit "kmeans-merge-$split" "$a" "$SPEECHLM kmeans merge $lab $split --nshard $n --km-path $lab/km.npy")
  echo "$split: features ${dump[$split]} -> learn $k -> apply $a -> merge $m"
done
