#!/usr/bin/env bash
# Text -> phoneme units -> binarized text for speechlm_pretraining, as a Slurm array.
#   bash scripts/slurm/phonemize.sh TEXT OUT_PREFIX NSHARD DICT_DIR TEXT_DIR [SPLIT]
# TEXT: one sentence per line (e.g. librispeech-lm-norm.txt, 40M lines: NSHARD=32 is well under an hour);
# DICT_DIR: the speech side's dict.phn.txt and dict.ltr.txt; TEXT_DIR: where binarize writes.
# Extra phonemize options (--seed, --lexicon, --max-len) go in PHONEMIZE_OPTS.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
text=$1 prefix=$2 n=$3 dicts=$4 dest=$5 split=${6:-train}
opts="${PHONEMIZE_OPTS:-}"
a=$(submit_array phonemize "$n" "" "$SPEECHLM phonemize $text --out-prefix $prefix $opts --nshard $n --rank \$SLURM_ARRAY_TASK_ID")
m=$(submit phonemize-merge "$a" "$SPEECHLM phonemize --merge --out-prefix $prefix --nshard $n")
b=$(submit binarize "$m" "$SPEECHLM binarize --units $prefix.phn --letters $prefix.ltr --unit-dict $dicts/dict.phn.txt --letter-dict $dicts/dict.ltr.txt --dest $dest --split $split --workers \${SLURM_CPUS_PER_TASK:-1}")
echo "phonemize array $a -> merge $m -> binarize $b"
