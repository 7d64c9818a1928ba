#!/usr/bin/env bash
# The mini recipe: SpeechLM in miniature on the embedded synthesized corpus, on a CPU (a GPU is used
# when torch sees one). Each stage is skipped when its output is already there (delete it to redo).
#   bash examples/mini/run.sh [--stage N] [--stop-stage M] [--exp DIR] [--hours H] [--jobs J] [--full]
#        [--pretrain-updates N] [--finetune-updates N] [--tokenizer-epochs N]   (default: the configs')
#        [--seeds "1 2 3"]   (default: 1; with --full 1 2 3)
#   0 synthesize the corpus (--hours, default 1)        1 check it
#   2 unpaired text -> upsampled phoneme units + letters, binarized; a word 4-gram of it
#   3 speech -> phoneme units: `speechlm phone-units` trained on train_paired only, then the unpaired
#     train speech (and valid) labelled by beam search over its posteriors with a phone 4-gram of the
#     unpaired text; scored against the true alignments
#   4 pre-training, one run per row: speech-only (UMLM alone) and SpeechLM-P (speech + unpaired text)
#   5 CTC fine-tuning on train_paired of every row, and of the same model from random weights
#   6 decoding of test and test_other, Viterbi and with the word 4-gram (weights chosen on valid);
#     SpeechLM-P also zero-shot through its UCTC head; the shared space of every pre-trained model (and of
#     the random weights) on valid: speech vs text frames per Shared Transformer layer (speechlm analyze
#     shared-space -> EXP/runs/RUN/shared_space/shared_space.{json,png})
#   (stages 4-6 run as one chain per row, J chains at a time: a row fine-tunes as soon as it is pre-trained)
#   7 the comparison: EXP/results.json, EXP/results.png, the table (TensorBoard logs: EXP/runs/*/tb)
#   8 (only when asked: --stage 8 --stop-stage 8) speech translation into a SYNTHETIC language: an ST decoder
#     trained on each frozen encoder, random weights, speech-only and SpeechLM-P (+ SpeechLM-H with --full),
#     BLEU and chrF of test next to copying the source: EXP/st/results.json, EXP/st/results.png, the table
# --full adds the rows "SpeechLM-P, no swapping", "oracle units" (the synthesizer's true alignments as
# speech units), SpeechLM-H, the text-amount rows (1 % and 0.1 % of the unpaired text) and "SpeechLM without
# paired data" (stage 3n: k-means of MFCC as speech units, phonemes as text units), and runs every row with
# seeds 1 2 3 (mean and spread in the table).
# SpeechLM-H's hidden units (stage 3h, examples/mini/hidden_units.sh, once for all seeds) are k-means
# clusters of the speech-only model's last Speech Transformer layer, as HuBERT's second iteration takes
# its first's features: its chains start from the first seed's speech-only pre-training.
# Runs go J at a time (default: 2 if the machine has 2 cores or more), each with nproc/J threads;
# every step's console output is in EXP/runs/RUN/*.log, its wall and CPU seconds in EXP/runs/RUN/time.*.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common/recipe.sh"
stage=0; stop_stage=7; exp="$REPO/exp/mini"; hours=1.0; jobs=""; full=false
pretrain_updates=""; finetune_updates=""; tokenizer_epochs=30; seeds=""
parse_options "$@"
expect_positional 0
mkdir -p "$exp"
exp="$(cd "$exp" && pwd)"
start_log "$exp"
corpus="$exp/corpus"; text_bin="$exp/text_bin"; units="$exp/units"; word_lm="$exp/text/words_4gram.arpa"

[ -n "$jobs" ] || jobs=$(( ncpu >= 2 ? 2 : 1 ))
threads=$(( ncpu / jobs > 0 ? ncpu / jobs : 1 ))
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
device=$("$PY" "$RECIPE_PY" device 2>/dev/null || echo cpu)
cpu=$([ "$device" = cpu ] && echo true || echo false)
[ -n "$seeds" ] || { seeds="1"; $full && seeds="1 2 3"; }
first_seed=${seeds%% *}

# need FILE...: after a parallel stage, every step's marker must be there
need() { local f; for f in "$@"; do [ -f "$f" ] || { say "missing $f: a step failed (see its log)"; exit 1; }; done; }
# meta RUN NAME SEED ORDER PRETRAIN_UPDATES [TIME_FROM]: what stage 7 reads about a run (EXP/runs/RUN/meta.json)
meta() {
  "$PY" "$REPO/scripts/mini_summary.py" meta --exp "$exp" --run "$1" --name "$2" --seed "$3" --order "$4" \
    --pretrain-updates "$5" ${6:+--time-from "$6"}
}
config_value() { "$PY" "$RECIPE_PY" config-value "$@"; }
pre_config="$REPO/examples/mini/config/pretrain/speechlm_tiny.yaml"
[ -n "$pretrain_updates" ] || pretrain_updates=$(config_value "$pre_config" optimization.max_update)
[ -n "$finetune_updates" ] || finetune_updates=$(config_value \
  "$REPO/examples/mini/config/finetune/speechlm_ctc_tiny.yaml" optimization.max_update)

# pretrain RUN DATA TEXT_DIR|null SEED [OVERRIDES...]
pretrain() {
  local run=$1 data=$2 text=$3 seed=$4; shift 4
  local d="$exp/runs/$run"
  if [ -f "$d/pretrain/done" ]; then say "  $run: pre-training done, skipped"; return 0; fi
  mkdir -p "$d/pretrain"
  say "  $run: pre-training -> $d/pretrain (log: $d/pretrain.log)"
  (cd "$REPO" && timed "$d/pretrain" fairseq-hydra-train \
    --config-dir examples/mini/config/pretrain --config-name speechlm_tiny \
    task.data="$data" task.text_data="$text" task.labels='[phn]' common.user_dir="$REPO/speechlm" \
    common.cpu=$cpu common.seed="$seed" common.tensorboard_logdir="$d/tb/pretrain" \
    optimization.max_update="$pretrain_updates" checkpoint.save_dir="$d/pretrain" \
    hydra.run.dir="$d/pretrain/hydra" "$@") || { say "  $run: pre-training FAILED (log: $d/pretrain.log)"; return 1; }
  touch "$d/pretrain/done"
  say "  $run: pre-training finished ($(cat "$d/time.pretrain"))"
}
# finetune RUN PRETRAINED SEED [OVERRIDES...]
finetune() {
  local run=$1 pre=$2 seed=$3; shift 3
  local d="$exp/runs/$run"
  if [ -f "$d/finetune/done" ]; then say "  $run: fine-tuning done, skipped"; return 0; fi
  mkdir -p "$d/finetune"
  say "  $run: CTC fine-tuning on train_paired -> $d/finetune (log: $d/finetune.log)"
  (cd "$REPO" && timed "$d/finetune" fairseq-hydra-train \
    --config-dir examples/mini/config/finetune --config-name speechlm_ctc_tiny \
    task.data="$corpus" model.w2v_path="$pre" common.user_dir="$REPO/speechlm" common.cpu=$cpu \
    common.seed="$seed" common.tensorboard_logdir="$d/tb/finetune" \
    optimization.max_update="$finetune_updates" checkpoint.save_dir="$d/finetune" \
    hydra.run.dir="$d/finetune/hydra" "$@") || { say "  $run: fine-tuning FAILED (log: $d/finetune.log)"; return 1; }
  touch "$d/finetune/done"
  say "  $run: fine-tuning finished ($(cat "$d/time.finetune"))"
}
# decode RUN: the fine-tuned model (best on valid WER) on test and test_other
decode() {
  local d="$exp/runs/$1"
  if [ -f "$d/decode/done" ]; then return 0; fi
  (cd "$REPO" && timed "$d/decode" speechlm infer \
    --config-dir examples/mini/config/decode --config-name infer_viterbi common.cpu=$cpu \
    common_eval.path="$d/finetune/checkpoint_best.pt" dataset.gen_subset=test,test_other \
    common_eval.results_path="$d/decode") && touch "$d/decode/done"
}
# lm_decode RUN: CTC beam search with the word 4-gram; `speechlm infer --tune-on valid` chooses its weight and
# word score on valid (one forward pass for the whole grid; the choice in decode_lm/setting), then decodes
# test and test_other with the best setting
lm_decode() {
  local d="$exp/runs/$1"
  if [ -f "$d/decode_lm/done" ]; then return 0; fi
  (cd "$REPO" && timed "$d/decode_lm" speechlm infer --config-dir examples/mini/config/decode \
    --config-name infer_kenlm --tune-on valid common.cpu=$cpu common_eval.path="$d/finetune/checkpoint_best.pt" \
    decoding.lm_path="$word_lm" decoding.lm_weight=0.5,1,2 decoding.word_score=0,1,2 \
    dataset.gen_subset=test,test_other common_eval.results_path="$d/decode_lm") && touch "$d/decode_lm/done"
}
# zero_shot RUN PRETRAINED: no fine-tuning, the pre-trained UCTC head reads speech
zero_shot() {
  local d="$exp/runs/$1"
  if [ -f "$d/decode/done" ]; then return 0; fi
  local flag=""; $cpu && flag="--cpu"
  (cd "$REPO" && timed "$d/decode" "$PY" scripts/zero_shot_uctc.py $flag \
    --checkpoint "$2" --data "$corpus" --subsets test,test_other --results-path "$d/decode") \
    && touch "$d/decode/done"
}
# shared_space RUN CHECKPOINT [ARGS...]: where speech meets text in the pre-trained model, on valid: per
# Shared Transformer layer the same-phone nearest neighbour of speech frames among text frames, CKA, t-SNE
shared_space() {
  local run=$1 ckpt=$2; shift 2
  local d="$exp/runs/$run"
  if [ -f "$d/shared_space/shared_space.json" ]; then return 0; fi
  (cd "$REPO" && timed "$d/shared_space" speechlm analyze shared-space "$ckpt" "$corpus" --split valid \
    --out "$d/shared_space" "$@")
}

if run_stage 0; then
  stage_begin
  if [ -f "$corpus/done" ]; then say "stage 0: corpus exists, skipped"; else
    say "stage 0: synthesize the mini corpus ($hours h) -> $corpus"
    speechlm corpus mini "$corpus" --hours "$hours"
  fi
  stage_end 0
fi
if run_stage 1; then
  stage_begin
  say "stage 1: check the corpus"
  speechlm corpus check "$corpus"
  stage_end 1
fi
say "device: $device; $jobs run(s) at a time, $threads thread(s) each; seeds: $seeds"
if run_stage 2; then
  stage_begin
  say "stage 2: unpaired text -> phoneme units -> $text_bin"
  for pair in "train:$corpus/unpaired.wrd" "valid:$corpus/valid.wrd"; do
    split=${pair%%:*}; src=${pair#*:}
    if [ -f "$text_bin/$split.phn-ltr.phn.idx" ]; then say "  $split: exists, skipped"; continue; fi
    speechlm phonemize "$src" --out-prefix "$exp/text/$split" --seed 1
    speechlm binarize --units "$exp/text/$split.phn" --letters "$exp/text/$split.ltr" \
      --unit-dict "$corpus/dict.phn.txt" --letter-dict "$corpus/dict.ltr.txt" --dest "$text_bin" --split "$split"
  done
  if $full; then  # the text-amount rows (the paper's Figure 3): the first 1 % and 0.1 % of the unpaired sentences
    n=$(wc -l < "$exp/text/train.phn")
    for part in "1pct:$(( n / 100 ))" "0p1pct:$(( n / 1000 ))"; do
      dest="$exp/text_bin_${part%%:*}"
      [ -f "$dest/train.phn-ltr.phn.idx" ] && continue
      mkdir -p "$dest/text"
      head -n "${part#*:}" "$exp/text/train.phn" > "$dest/text/train.phn"
      head -n "${part#*:}" "$exp/text/train.ltr" > "$dest/text/train.ltr"
      speechlm binarize --units "$dest/text/train.phn" --letters "$dest/text/train.ltr" --unit-dict "$corpus/dict.phn.txt" \
        --letter-dict "$corpus/dict.ltr.txt" --dest "$dest" --split train
      cp "$text_bin"/valid.phn-ltr.* "$dest/"
    done
  fi
  # the word 4-gram for stage 6's beam search: the same unpaired text, nothing of test or valid
  [ -f "$word_lm" ] || speechlm ngram "$corpus/unpaired.wrd" --order 4 --out "$word_lm"
  stage_end 2
fi
if run_stage 3; then
  stage_begin
  say "stage 3: speech -> phoneme units (phone-units tokenizer trained on train_paired only) -> $units"
  mkdir -p "$units"
  if [ ! -f "$units/phone_ctc.pt" ]; then
    timed "$units/train" speechlm phone-units train "$corpus" \
      --split train_paired --save "$units/phone_ctc.pt" --epochs "$tokenizer_epochs" --batch-size 8
  fi
  # a phone 4-gram of the unpaired text (through the lexicon) guides the search over the posteriors
  [ -f "$units/phone_lm.arpa" ] || speechlm ngram "$corpus/unpaired.wrd" --phones --order 4 \
    --out "$units/phone_lm.arpa"
  for split in train valid; do  # no transcripts: the unpaired speech is labelled by phone-LM beam search
    if [ ! -f "$units/$split.phn" ]; then
      run_shards "$jobs" speechlm phone-units label "$corpus" "$split" --model "$units/phone_ctc.pt" \
        --out-dir "$units" --phone-lm "$units/phone_lm.arpa" --lm-weight 0.5 --insertion 1 --blank-penalty 2
      if [ "$jobs" -gt 1 ]; then
        speechlm phone-units merge "$units" "$split" --nshard "$jobs"
        rm -f "$units/${split}_"*"_$jobs.phn"
      fi
    fi
    spk=(); [ -f "$corpus/$split.spk" ] && spk=(--spk "$corpus/$split.spk")  # + PER per voice (the summary prints it)
    speechlm phone-units score --hyp "$units/$split.phn" --ref "$corpus/$split.phn" "${spk[@]}" \
      > "$units/score.$split.json"
    cp "$corpus/$split.tsv" "$units/"
  done
  cp "$corpus/dict.phn.txt" "$corpus/dict.ltr.txt" "$units/"
  "$PY" "$REPO/scripts/mini_summary.py" tokenizer --exp "$exp"
  stage_end 3
fi

# the rows: RUN-prefix | name | order | data | text | extra overrides (one word, ',' separated); their chains
# start in this order, the longest first (SpeechLM-P's pre-training also reads text: the critical path)
rows=("SpeechLM-P|SpeechLM-P|3|$units|$text_bin|"
      "speech-only|speech-only (UMLM)|2|$units|null|")
if $full; then
  rows+=("SpeechLM-P-no-swap|SpeechLM-P, no swapping|5|$units|$text_bin|model.random_swap_prob=0"
         "oracle|SpeechLM-P, oracle units|6|$corpus|$text_bin|"
         "SpeechLM-H|SpeechLM-H|7|$exp/hidden/data|$exp/hidden/text_bin|task.labels=[km]"
         "P-text1pct|SpeechLM-P, 1 % of the text|8|$units|$exp/text_bin_1pct|"
         "P-text0p1pct|SpeechLM-P, 0.1 % of the text|9|$units|$exp/text_bin_0p1pct|"
         "no-paired|SpeechLM without paired data|10|$exp/mfcc/nopaired/data|$exp/mfcc/nopaired/text_bin|task.labels=[kmphn]")
fi
# hidden_units SEED: stage 3h, SpeechLM-H's units, made by the first seed's SpeechLM-H chain once the first
# seed's speech-only model is pre-trained (k-means of its last Speech Transformer layer; the text's units from
# a t2u model); the other seeds' chains wait for them. One thread: the chain holds one of the $jobs slots.
hidden_units() {
  local h="$exp/hidden" src="$exp/runs/speech-only.s$first_seed"
  if [ "$1" != "$first_seed" ]; then
    await "$h/done" "$exp/runs/SpeechLM-H.s$first_seed/failed" || { say "  SpeechLM-H.s$1: no hidden units"; return 1; }
    return 0
  fi
  [ -f "$h/done" ] && return 0
  await "$src/pretrain/done" "$src/failed" || { say "  stage 3h: speech-only.s$first_seed failed, no features"; return 1; }
  local layer; layer=$(config_value "$pre_config" model.speech_encoder_layers)
  say "  stage 3h: hidden units from layer $layer of speech-only.s$first_seed -> $h (log: $exp/hidden.log)"
  timed "$exp/hidden" bash "$REPO/examples/mini/hidden_units.sh" "$corpus" "$units" \
    "$exp/text" "$h" --checkpoint "$src/pretrain/checkpoint_last.pt" --layer "$layer" --jobs 1 --threads "$threads" \
    || { say "  stage 3h FAILED (log: $exp/hidden.log)"; return 1; }
  touch "$h/done"
  say "  stage 3h: hidden units done ($(cat "$exp/time.hidden"))"
}
# nopaired_units SEED: stage 3n, the no-paired-data row's units (hidden_units.sh --no-paired: k-means of MFCC for
# the speech, the text's phonemes, one vocabulary), made once by the first seed's chain; one thread
nopaired_units() {
  local m="$exp/mfcc"
  if [ "$1" != "$first_seed" ]; then
    await "$m/done" "$exp/runs/no-paired.s$first_seed/failed" || { say "  no-paired.s$1: no units"; return 1; }
    return 0
  fi
  [ -f "$m/done" ] && return 0
  say "  stage 3n: k-means of MFCC + the text's phonemes -> $m (log: $exp/mfcc.log)"
  timed "$exp/mfcc" bash "$REPO/examples/mini/hidden_units.sh" "$corpus" "$units" "$exp/text" "$m" --no-paired \
    --jobs 1 --threads "$threads" || { say "  stage 3n FAILED (log: $exp/mfcc.log)"; return 1; }
  touch "$m/done"
}
# Stages 4-6 as one chain per row and seed -- pre-training -> fine-tuning -> decoding (Viterbi, then the
# word 4-gram) --, each chain's next step as soon as its own previous one is done, $jobs chains at a time
# (a row whose pre-training is short does not wait for the longest one before it fine-tunes).
# chain RUN DATA TEXT SEED [OVERRIDES...]
chain() {
  local run=$1 data=$2 text=$3 seed=$4; shift 4
  local d="$exp/runs/$run"
  if [ "${run%%.*}" = SpeechLM-H ] && run_stage 4; then
    hidden_units "${run##*.s}" || { touch "$d/failed"; return 1; }
  fi
  if [ "${run%%.*}" = no-paired ] && run_stage 4; then
    nopaired_units "${run##*.s}" || { touch "$d/failed"; return 1; }
  fi
  if run_stage 4; then pretrain "$run" "$data" "$text" "$seed" "$@" || { touch "$d/failed"; return 1; }; fi
  if run_stage 5; then finetune "$run" "$d/pretrain/checkpoint_last.pt" "$seed" || return 1; fi
  if run_stage 6; then
    decode "$run" && lm_decode "$run" || return 1
    local units=()  # SpeechLM-H reads k-means units: its text side gets valid's units, not the phones
    [ "${run%%.*}" = SpeechLM-H ] && units=(--units-dir "$exp/hidden/data" --label km)
    [ "${run%%.*}" = no-paired ] && units=(--units-dir "$exp/mfcc/nopaired/phones" --label kmphn)  # its phones
    shared_space "$run" "$d/pretrain/checkpoint_last.pt" "${units[@]}" || return 1
    if [ "${run%%.*}" = SpeechLM-P ]; then
      zero_shot "SpeechLM-P-zero-shot.s$seed" "$d/pretrain/checkpoint_last.pt" || return 1
    fi
  fi
}
# random_chain SEED: the same architecture from random weights (a pre-trained checkpoint gives the shapes:
# speech-only's, the shortest, once its pre-training is done), fine-tuned and decoded
random_chain() {
  local seed=$1 first="$exp/runs/speech-only.s$1"
  if [ ! -f "$first/pretrain/done" ] && ! { run_stage 4 && await "$first/pretrain/done" "$first/failed"; }; then
    say "  random.s$seed: no pre-trained checkpoint ($first/pretrain) to take the shapes from"; return 1
  fi
  if run_stage 5; then
    finetune "random.s$seed" "$first/pretrain/checkpoint_last.pt" "$seed" model.no_pretrained_weights=true || return 1
  fi
  if run_stage 6; then
    decode "random.s$seed" && lm_decode "random.s$seed" || return 1
    shared_space "random.s$seed" "$first/pretrain/checkpoint_last.pt" --random-init --seed "$seed"
  fi
}
lo=$(( stage > 4 ? stage : 4 )); hi=$(( stop_stage < 6 ? stop_stage : 6 ))
if [ "$lo" -le "$hi" ]; then
  stage_begin
  say "stages $lo-$hi: pre-training ($pretrain_updates updates), CTC fine-tuning on train_paired" \
    "($finetune_updates updates),"
  say "  decoding test and test_other (Viterbi; beam search with the word 4-gram, weights chosen on valid)"
  for seed in $seeds; do
    for row in "${rows[@]}"; do
      IFS='|' read -r run name order data text extra <<< "$row"
      meta "$run.s$seed" "$name" "$seed" "$order" "$pretrain_updates"
      rm -f "$exp/runs/$run.s$seed/failed"
    done
    meta "random.s$seed" "random weights" "$seed" 1 0
    meta "SpeechLM-P-zero-shot.s$seed" "SpeechLM-P zero-shot (UCTC head)" "$seed" 4 "$pretrain_updates" \
      "runs/SpeechLM-P.s$seed/time.pretrain"
  done
  for seed in $seeds; do
    for row in "${rows[@]}"; do
      IFS='|' read -r run name order data text extra <<< "$row"
      spawn chain "$run.s$seed" "$data" "$text" "$seed" ${extra//,/ }
    done
    spawn random_chain "$seed"
  done
  wait_all || true  # a failed chain is named below, by the marker it did not leave
  for seed in $seeds; do
    for run in "${rows[@]%%|*}"; do
      need "$exp/runs/$run.s$seed/pretrain/done"
      [ "$hi" -ge 5 ] && need "$exp/runs/$run.s$seed/finetune/done"
      [ "$hi" -ge 6 ] && need "$exp/runs/$run.s$seed/decode/done" "$exp/runs/$run.s$seed/decode_lm/done"
    done
    [ "$hi" -ge 5 ] && need "$exp/runs/random.s$seed/finetune/done"
    [ "$hi" -ge 6 ] && need "$exp/runs/random.s$seed/decode/done" "$exp/runs/random.s$seed/decode_lm/done" \
      "$exp/runs/SpeechLM-P-zero-shot.s$seed/decode/done"
  done
  stage_end "$lo-$hi"
fi
if run_stage 7; then
  say "stage 7: the comparison (same pre-training updates and fine-tuning for every row)"
  "$PY" "$REPO/scripts/mini_summary.py" --exp "$exp" --jobs "$jobs"
fi
# stage 8: ST into the synthetic Cipherese from each encoder, like stages 4-7 for ASR: the same data, updates and
# decoder (examples/mini/config/st: encoder frozen) for every row; random weights take speech-only's architecture
if run_stage 8; then
  stage_begin
  st="$exp/st_data"
  say "stage 8: speech translation into the SYNTHETIC Cipherese (speechlm/corpora/st_synthetic.py) -> $exp/st"
  [ -f "$st/config.yaml" ] || speechlm st prepare "$corpus" "$st" --synthetic cipherese --splits train,valid,test
  ckpt="$exp/runs/%s.s{seed}/pretrain/checkpoint_last.pt"  # {seed}: filled in by `speechlm st compare`
  st_rows=(--row "random weights=random:$(printf "$ckpt" speech-only)"
           --row "speech-only (UMLM)=$(printf "$ckpt" speech-only)" --row "SpeechLM-P=$(printf "$ckpt" SpeechLM-P)")
  if $full; then st_rows+=(--row "SpeechLM-H=$(printf "$ckpt" SpeechLM-H)"); fi
  cpu_flag=(); if $cpu; then cpu_flag=(--cpu); fi
  # shellcheck disable=SC2086
  (cd "$REPO" && speechlm st compare "$st" "$exp/st" "${st_rows[@]}" --seeds $seeds --jobs "$jobs" \
    --threads "$threads" "${cpu_flag[@]}")
  stage_end 8
fi
say "done; log: $log"
