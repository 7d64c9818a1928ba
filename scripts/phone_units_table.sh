#!/bin/bash
# Unit quality of a phone recognizer on unpaired speech: every labelling of `speechlm phone-units label`
# on SPLITS (default: train valid), scored against CORPUS/SPLIT.phn (the true alignments).
#   bash scripts/phone_units_table.sh CORPUS MODEL PHONE_LM OUT [SPLITS...]
# prints one line per split and labelling: the `phone-units score` JSON and the command's user CPU seconds.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 CORPUS MODEL PHONE_LM OUT [SPLITS...]" >&2; exit 2; }
corpus=$1; model=$2; lm=$3; out=$4; shift 4
splits=("${@:-train valid}")
PY=${PY:-python}
declare -A flags=([argmax]="" [argmax_bp2]="--blank-penalty 2" [plm]="--phone-lm $lm"
                  [plm_bp2]="--phone-lm $lm --lm-weight 0.5 --insertion 1 --blank-penalty 2" [fa]="--transcripts")
for split in ${splits[@]}; do
  for m in argmax argmax_bp2 plm plm_bp2 fa; do
    d=$out/$m; mkdir -p "$d"
    # shellcheck disable=SC2086
    [ -f "$d/$split.phn" ] || /usr/bin/time -f "%U" -o "$d/time.$split" "$PY" -m speechlm phone-units label \
      "$corpus" "$split" --model "$model" --out-dir "$d" ${flags[$m]} 2> "$d/log.$split"
    echo "$split $m $("$PY" -m speechlm phone-units score --hyp "$d/$split.phn" --ref "$corpus/$split.phn") cpu $(cat "$d/time.$split")"
  done
done
