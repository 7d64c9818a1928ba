#!/usr/bin/env bash
# From a LibriSpeech download to fine-tuned SpeechLM-P and SpeechLM-H, with a WER table (README.md beside this file).
#   bash examples/librispeech/run.sh --librispeech ROOT --lm-text FILE --lexicon FILE --exp DIR \
#        [--size tiny|base] [--stage N] [--stop-stage M] [--slurm] [--nshard N] [--kenlm-arpa 4-gram.arpa]
# ROOT holds LibriSpeech/{train-clean-100,...}; --lm-text the normalized LM corpus (librispeech-lm-norm.txt);
# --lexicon librispeech-lexicon.txt. Every step is skipped when its output exists (delete it to redo); the log
# of each run is DIR/log.<time>.
#   1 manifests: one per subset found (FLAC read directly) + train_960 (all train-* subsets)
#   2 transcripts: speechlm labels -> .wrd .ltr dict.ltr.txt
#   3 text -> phoneme units -> binarized (DIR/text_bin: train.phn-ltr.*, valid = dev_clean transcripts)
#   4 speech -> phone units: recognizer on train_clean_100; forced alignment of train_clean_100 and dev_clean,
#     phone-LM decoding of the rest of train_960 (no transcripts used)
#   5 speech -> hidden units: MFCC, k-means, text -> unit model, LM text -> units -> binarized (km-ltr)
#   6 pre-training: SpeechLM-P (phone units) and SpeechLM-H (hidden units)
#   7 CTC fine-tuning of each on train_clean_100
#   8 decoding of dev/test (Viterbi; KenLM with --kenlm-arpa or a 3-gram built from the LM text): WER table
# --size tiny: the CPU configs of examples/mini (minutes); base: the paper's Base configs (a GPU cluster).
# Smaller runs: --recognizer-subset (default train_clean_100) --recognizer-epochs --k --t2u-updates
# --pretrain-updates --finetune-updates --lm-lines (first N lines of the LM text only).
# --slurm: sharded steps (phonemize, phone units of train_960, features, k-means apply, t2u generate) run as job
# arrays of --nshard tasks through scripts/slurm/common.sh (SBATCH_OPTS for partition/time/memory), each stage
# waiting for its arrays (sbatch --wait); locally, shard by shard, otherwise. Merged outputs equal unsharded ones.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common/recipe.sh"
stage=1; stop_stage=8; librispeech=""; lm_text=""; lexicon=""; exp=""; size=tiny; slurm=false; nshard=1
kenlm_arpa=""; recognizer_subset=train_clean_100; recognizer_epochs=""; k=""; t2u_updates=""; pretrain_updates=""
finetune_updates=""; lm_lines=""
parse_options "$@"
expect_positional 0
[ -n "$librispeech" ] && [ -n "$lm_text" ] && [ -n "$lexicon" ] && [ -n "$exp" ] || {
  echo "usage: $0 --librispeech ROOT --lm-text FILE --lexicon FILE --exp DIR [--size tiny|base] [...]" >&2; exit 2; }
case "$size" in
  tiny) pre_cfg=(examples/mini/config/pretrain speechlm_tiny); ft_cfg=(examples/mini/config/finetune speechlm_ctc_tiny)
        t2u_cfg=t2u_tiny; k=${k:-100}; recognizer_epochs=${recognizer_epochs:-30}; t2u_updates=${t2u_updates:-400}
        pretrain_updates=${pretrain_updates:-300}; finetune_updates=${finetune_updates:-400}
        decode_cfg=examples/mini/config/decode;;
  base) pre_cfg=(examples/librispeech/config/pretrain speechlm_p_base_librispeech)
        ft_cfg=(examples/librispeech/config/finetune speechlm_base_100h); t2u_cfg=t2u_base; k=${k:-500}
        recognizer_epochs=${recognizer_epochs:-30}; t2u_updates=${t2u_updates:-100000}
        decode_cfg=examples/librispeech/config/decode;;
  *) echo "--size must be tiny or base" >&2; exit 2;;
esac
ls_root="$(cd "$librispeech" && pwd)"; [ -d "$ls_root/LibriSpeech" ] && ls_root="$ls_root/LibriSpeech"
lm_text="$(cd "$(dirname "$lm_text")" && pwd)/$(basename "$lm_text")"
lexicon="$(cd "$(dirname "$lexicon")" && pwd)/$(basename "$lexicon")"
mkdir -p "$exp"
exp="$(cd "$exp" && pwd)"
start_log "$exp"
# the wall and CPU seconds of every heavy step -> DIR/cpu_times.tsv (step, wall s, user s, sys s): the README's
# cost table; the steps' output stays on the console
TIMES_TSV="$exp/cpu_times.tsv"
# one sharded step: locally rank by rank, or with --slurm a job array through scripts/slurm/common.sh
# (run_array: sbatch --wait, task logs in DIR/slurm/NAME-JOB_TASK.log; a failed task stops the recipe)
if $slurm; then LOGDIR="$exp/slurm"; source "$REPO/scripts/slurm/common.sh"; fi
sharded() {  # sharded NAME CMD... (CMD gets --nshard N --rank R appended)
  local name=$1; shift
  [ "$1" = speechlm ] && { shift; set -- "$PY" -m speechlm "$@"; }  # a Slurm task runs a program, not a function
  if $slurm; then
    say "  $name: Slurm array of $nshard tasks (logs: $exp/slurm/$name-*.log)"
    run_array "$name" "$nshard" "$@" >/dev/null
  else
    for ((r = 0; r < nshard; r++)); do timed "$name" "$@" --nshard "$nshard" --rank "$r"; done
  fi
}
data="$exp/data"
subsets() { for s in train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other; do
  [ -d "$ls_root/$s" ] && echo "$s"; done; }

if run_stage 1; then
  say "stage 1: manifests of $ls_root -> $data"
  mkdir -p "$data"
  for s in $(subsets); do
    name=${s//-/_}
    done_or "$data/$name.tsv" || continue
    speechlm manifest "$ls_root/$s" --dest "$data/tmp_$name" --ext flac --valid-percent 0 >/dev/null
    # root = the LibriSpeech folder, rows subset/SPK/CHAPTER/UTT.flac (so train_960 can join subsets)
    { echo "$ls_root"; tail -n +2 "$data/tmp_$name/train.tsv" | sed "s|^|$s/|"; } > "$data/$name.tsv"
    rm -r "$data/tmp_$name"
    say "  $name: $(($(wc -l < "$data/$name.tsv") - 1)) utterances"
  done
  if done_or "$data/train_960.tsv"; then
    { echo "$ls_root"; for s in $(subsets | grep '^train-'); do tail -n +2 "$data/${s//-/_}.tsv"; done; } > "$data/train_960.tsv"
  fi
fi
if run_stage 2; then
  say "stage 2: transcripts -> .wrd .ltr dict.ltr.txt"
  done_or "$data/train_clean_100.ltr" && timed labels speechlm labels "$data/train_clean_100.tsv" --transcripts "$ls_root/train-clean-100"
  for f in "$data"/*.tsv; do
    name=$(basename "$f" .tsv)
    done_or "$data/$name.ltr" && timed labels speechlm labels "$f" --transcripts "$ls_root" --dict "$data/dict.ltr.txt"
  done
  "$PY" "$RECIPE_PY" phone-dict "$data/dict.phn.txt"
fi
text="$exp/text"; text_bin="$exp/text_bin"
lm_src="$lm_text"
if [ -n "$lm_lines" ]; then lm_src="$exp/text/lm_subset.txt"; mkdir -p "$text"; head -n "$lm_lines" "$lm_text" > "$lm_src"; fi
if run_stage 3; then
  say "stage 3: LM text -> phoneme units (lexicon $lexicon) -> $text_bin"
  if done_or "$text/lm.phn"; then
    if [ "$nshard" -gt 1 ]; then
      sharded phonemize speechlm phonemize "$lm_src" --out-prefix "$text/lm" --lexicon "$lexicon" --seed 1
      speechlm phonemize --merge --out-prefix "$text/lm" --nshard "$nshard"
    else
      timed phonemize speechlm phonemize "$lm_src" --out-prefix "$text/lm" --lexicon "$lexicon" --seed 1
    fi
  fi
  done_or "$text/valid.phn" && speechlm phonemize "$data/dev_clean.wrd" --out-prefix "$text/valid" --lexicon "$lexicon" --seed 1
  for split in train valid; do
    src=$([ $split = train ] && echo lm || echo valid)
    done_or "$text_bin/$split.phn-ltr.phn.idx" && timed binarize speechlm binarize --units "$text/$src.phn" --letters "$text/$src.ltr" \
      --unit-dict "$data/dict.phn.txt" --letter-dict "$data/dict.ltr.txt" --dest "$text_bin" --split "$split"
  done
fi
phn="$exp/phn"
if run_stage 4; then
  say "stage 4: speech -> phone units (recognizer on train_clean_100, phone LM for unpaired speech)"
  done_or "$exp/phone_ctc.pt" && timed phone_units_train speechlm phone-units train "$data" --split "$recognizer_subset" --lexicon "$lexicon" \
    --save "$exp/phone_ctc.pt" --epochs "$recognizer_epochs" --batch-size 8
  done_or "$exp/phone_lm.arpa" && timed phone_lm speechlm ngram "$lm_src" --phones --lexicon "$lexicon" --order 4 \
    --max-lines 2000000 --out "$exp/phone_lm.arpa"
  for split in train_clean_100 dev_clean; do
    done_or "$phn/$split.phn" && timed phone_units_align speechlm phone-units label "$data" "$split" --model "$exp/phone_ctc.pt" \
      --out-dir "$phn" --transcripts --lexicon "$lexicon" --phone-lm "$exp/phone_lm.arpa"
  done
  if done_or "$phn/train_960.phn"; then
    sharded phone_units speechlm phone-units label "$data" train_960 --model "$exp/phone_ctc.pt" --out-dir "$phn" \
      --phone-lm "$exp/phone_lm.arpa"
    [ "$nshard" -gt 1 ] && speechlm phone-units merge "$phn" train_960 --nshard "$nshard"
  fi
fi
km="$exp/km"; feat="$exp/feat"
if run_stage 5; then
  say "stage 5: speech -> hidden units (MFCC + k-means K=$k), text -> hidden units ($t2u_cfg)"
  for split in train_960 train_clean_100 dev_clean; do
    done_or "$feat/${split}_0_$nshard.npy" && sharded features speechlm features dump "$data" "$split" "$feat"
  done
  done_or "$exp/km.npy" && timed kmeans_learn speechlm kmeans learn "$feat" train_960 --nshard "$nshard" --km-path "$exp/km.npy" -k "$k" --percent 0.1
  for split in train_960 train_clean_100 dev_clean; do
    if done_or "$km/$split.km"; then
      sharded kmeans speechlm kmeans apply "$feat" "$split" --km-path "$exp/km.npy" --lab-dir "$km"
      [ "$nshard" -gt 1 ] && speechlm kmeans merge "$km" "$split" --nshard "$nshard" --km-path "$exp/km.npy"
    fi
  done
  d="$exp/t2u_data"; mkdir -p "$d"
  cp "$phn/train_clean_100.phn" "$d/train.phn"; cp "$km/train_clean_100.km" "$d/train.km"
  cp "$phn/dev_clean.phn" "$d/valid.phn"; cp "$km/dev_clean.km" "$d/valid.km"
  cp "$data/dict.phn.txt" "$km/dict.km.txt" "$d/"
  done_or "$exp/t2u/checkpoint_best.pt" && (cd "$REPO" && timed t2u_train fairseq-hydra-train \
    --config-dir examples/tokenizers/config --config-name "$t2u_cfg" common.user_dir="$REPO/speechlm" \
    task.data="$d" checkpoint.save_dir="$exp/t2u" hydra.run.dir="$exp/t2u/hydra" optimization.max_update="$t2u_updates")
  if done_or "$text/lm_km.km"; then  # the LM text: 40M sentences, sharded like phonemize
    t2u=(speechlm t2u generate --checkpoint "$exp/t2u/checkpoint_best.pt" --data "$d" --units "$text/lm.phn" \
      --letters "$text/lm.ltr" --out-prefix "$text/lm_km")
    if [ "$nshard" -gt 1 ]; then
      sharded t2u_generate "${t2u[@]}"
      speechlm t2u merge --out-prefix "$text/lm_km" --nshard "$nshard"
    else
      timed t2u_generate "${t2u[@]}"
    fi
  fi
  done_or "$text/valid_km.km" && timed t2u_generate speechlm t2u generate --checkpoint "$exp/t2u/checkpoint_best.pt" \
    --data "$d" --units "$text/valid.phn" --letters "$text/valid.ltr" --out-prefix "$text/valid_km"
  for split in train valid; do
    src=$([ $split = train ] && echo lm || echo valid)
    done_or "$text_bin/$split.km-ltr.km.idx" && timed binarize speechlm binarize --units "$text/${src}_km.km" \
      --letters "$text/${src}_km.ltr" --unit-dict "$km/dict.km.txt" --letter-dict "$data/dict.ltr.txt" \
      --dest "$text_bin" --split "$split"
  done
fi
# pre-training data: train = train_960, valid = dev_clean, with their frame units
for u in phn km; do
  pd="$exp/pretrain_data_$u"
  if run_stage 6 && [ ! -f "$pd/valid.$u" ]; then
    mkdir -p "$pd"
    src=$([ $u = phn ] && echo "$phn" || echo "$km")
    cp "$data/train_960.tsv" "$pd/train.tsv"; cp "$src/train_960.$u" "$pd/train.$u"
    cp "$data/dev_clean.tsv" "$pd/valid.tsv"; cp "$src/dev_clean.$u" "$pd/valid.$u"
    cp "$([ $u = phn ] && echo "$data/dict.phn.txt" || echo "$km/dict.km.txt")" "$data/dict.ltr.txt" "$pd/"
  fi
done
over_pre=(); over_ft=()
[ -n "$pretrain_updates" ] && over_pre=(optimization.max_update="$pretrain_updates")
[ -n "$finetune_updates" ] && over_ft=(optimization.max_update="$finetune_updates")
if run_stage 6; then
  for model in p h; do
    u=$([ $model = p ] && echo phn || echo km); out="$exp/pretrain_$model"
    cfg_name=${pre_cfg[1]}; [ "$size" = base ] && cfg_name=speechlm_${model}_base_librispeech
    if [ -f "$out/done" ]; then say "stage 6: SpeechLM-${model^^} pre-training done, skipped"; continue; fi
    say "stage 6: SpeechLM-${model^^} pre-training ($size) -> $out"
    (cd "$REPO" && timed "pretrain_$model" fairseq-hydra-train --config-dir "${pre_cfg[0]}" --config-name "$cfg_name" \
      task.data="$exp/pretrain_data_$u" task.text_data="$text_bin" task.labels="[$u]" common.user_dir="$REPO/speechlm" \
      checkpoint.save_dir="$out" hydra.run.dir="$out/hydra" "${over_pre[@]}")
    touch "$out/done"
  done
fi
if run_stage 7; then
  for model in p h; do
    out="$exp/finetune_$model"
    if [ -f "$out/done" ]; then say "stage 7: SpeechLM-${model^^} fine-tuning done, skipped"; continue; fi
    say "stage 7: CTC fine-tuning of SpeechLM-${model^^} on train_clean_100 -> $out"
    (cd "$REPO" && timed "finetune_$model" fairseq-hydra-train --config-dir "${ft_cfg[0]}" --config-name "${ft_cfg[1]}" \
      task.data="$data" model.w2v_path="$exp/pretrain_$model/checkpoint_last.pt" common.user_dir="$REPO/speechlm" \
      dataset.train_subset=train_clean_100 dataset.valid_subset=dev_clean \
      checkpoint.save_dir="$out" hydra.run.dir="$out/hydra" "${over_ft[@]}")
    touch "$out/done"
  done
fi
if run_stage 8; then
  evals=$(for s in dev_clean dev_other test_clean test_other; do [ -f "$data/$s.tsv" ] && printf '%s,' "$s"; done)
  evals=${evals%,}
  arpa="$kenlm_arpa"
  if [ -z "$arpa" ]; then
    arpa="$exp/word_3gram.arpa"
    done_or "$arpa" && timed word_lm speechlm ngram "$lm_src" --order 3 --out "$arpa"
  fi
  say "stage 8: decoding $evals (Viterbi, KenLM $(basename "$arpa"))"
  table="$exp/wer.txt"; : > "$table"
  for model in p h; do
    ckpt="$exp/finetune_$model/checkpoint_best.pt"
    for dec in viterbi kenlm; do
      extra=(); [ $dec = kenlm ] && extra=(++decoding.type=kenlm ++decoding.lm_path="$arpa" ++decoding.beam=50)
      (cd "$REPO" && timed "decode_$dec" speechlm infer --config-dir "$decode_cfg" --config-name infer_viterbi \
        common_eval.path="$ckpt" task.data="$data" dataset.gen_subset="$evals" \
        common_eval.results_path="$exp/decode_${model}_$dec" "${extra[@]}") \
        | grep -E '^(dev|test)_' | sed "s/^/SpeechLM-${model^^} $dec /" | tee -a "$table"
    done
  done
  say "WER table (model decoder subset setting utts words WER CER RTF): $table"
  cat "$table"
fi
say "done; log: $log"
