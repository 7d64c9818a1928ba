#!/usr/bin/env bash
# Unpaired text -> hidden units -> binarized text, as Slurm arrays (after phonemize.sh's merge step):
#   bash scripts/slurm/t2u_generate.sh CHECKPOINT PHONEMIZED_PREFIX OUT_PREFIX NSHARD DICT_DIR TEXT_DIR [SPLIT]
# DICT_DIR: dict.km.txt (from `speechlm kmeans merge`) and dict.ltr.txt.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ckpt=$1 src=$2 prefix=$3 n=$4 dicts=$5 dest=$6 split=${7:-train}
a=$(submit_array t2u "$n" "" "$SPEECHLM t2u generate --checkpoint $ckpt --units $src.phn --letters $src.ltr --out-prefix $prefix --nshard $n --rank \$SLURM_ARRAY_TASK_ID ${T2U_OPTS:-}")
m=$(submit t2u-merge "$a" "$SPEECHLM t2u merge --out-prefix $prefix --nshard $n")
b=$(submit binarize-km "$m" "$SPEECHLM binarize --units $prefix.km --letters $prefix.ltr --unit-dict $dicts/dict.km.txt --letter-dict $dicts/dict.ltr.txt --dest $dest --split $split")
echo "t2u array $a -> merge $m -> binarize $b"
