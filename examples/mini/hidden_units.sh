#!/usr/bin/env bash
# Hidden units for the mini demo's SpeechLM-H row (run.sh --full calls it on the speech-only model's features
# once that model is pre-trained), with the project's commands only, as examples/librispeech/run.sh stage 5
# does at full scale:
#   bash examples/mini/hidden_units.sh CORPUS UNITS_DIR TEXT_DIR OUT_DIR [--k K] [--km-percent P]
#        [--t2u-updates N] [--max-text-lines N] [--jobs J] [--threads T] [--checkpoint CKPT --layer L]
#        [--no-paired]
# CORPUS: the mini corpus (speechlm corpus mini); UNITS_DIR: run.sh stage 3's output (phone_ctc.pt, the
# phone-units recognizer trained on train_paired); TEXT_DIR: run.sh stage 2's upsampled phone units of the
# unpaired text ({train,valid}.{phn,ltr}, speechlm phonemize). Writes under OUT_DIR:
#   1 MFCC (39-d, 50 Hz) of train, train_paired, valid                       feat/
#     or, with --checkpoint, the 50 Hz features of layer L of a pre-trained speechlm/hubert checkpoint
#     (HuBERT's second iteration: run.sh --full gives the speech-only model's last Speech Transformer
#     layer); an existing feat/ made from other features is an error, not reused
#   2 k-means (K clusters) learned on train; units of the three splits       km.npy, km/*.km, km/dict.km.txt
#     -> the pre-training data dir (tsvs, .km, dict.km.txt, dict.ltr.txt)      data/
#     (purity against the synthesizer's true phones, only to score:            km/score.valid.json)
#   3 frame phone units of train_paired and valid by forced alignment of their transcripts with the
#     stage-3 recognizer (what the LibriSpeech recipe gives its t2u model; stage 3's phone LM, if there,
#     decodes the utterances with a word outside the lexicon)                align/
#   4 text-to-unit model (examples/tokenizers/config/t2u_tiny) trained on train_paired: phones -> units,
#     validated on valid                                                     t2u_data/, t2u/checkpoint_best.pt
#   5 the unpaired text's phone units (the same kind of units the text side of SpeechLM-P gets: phonemized,
#     durations sampled) -> hidden units (t2u generate, J shards), then binarized as km-ltr pairs
#                                                                            text/, text_bin/
# --no-paired (the paper's "SpeechLM without paired data", its Table 4): steps 1-2 on MFCC only (nothing trained
# on paired speech), then one unit vocabulary for both sides instead of steps 3-5 -- the speech's k-means units
# and the text's phonemes (from the lexicon, no speech), dict.kmphn.txt = both symbol sets:
#                                                                            nopaired/data/, nopaired/text_bin/
# (swapped frames then carry the embedding of a frame's k-means unit; the text side reads phoneme embeddings;
# only the Shared Transformer is common to both)
# K defaults to 100: 44 min of speech give ~131k frames (1,300 per cluster), and the t2u model learns the
# phone -> unit map from only 4 min (~12k frames, ~120 per unit); K=500 (the paper's, for 960 h) would leave
# ~24 frames per unit there. Every step is skipped when its output exists (delete it to redo); each step's
# console output is in OUT_DIR/logs/STEP.log, its wall and CPU seconds in OUT_DIR/logs/time.STEP.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common/recipe.sh"
k=100; km_percent=0.3; t2u_updates=400; max_text_lines=""; jobs=""; threads=""; checkpoint=""; layer=""
no_paired=false
parse_options "$@"
expect_positional 4
corpus=${positional[0]}; units=${positional[1]}; text=${positional[2]}; out=${positional[3]}
needed=("$corpus/train.tsv" "$corpus/train_paired.tsv" "$corpus/train_paired.wrd" "$corpus/valid.tsv" \
        "$corpus/valid.wrd" "$corpus/dict.phn.txt" "$corpus/dict.ltr.txt" \
        "$text/train.phn" "$text/train.ltr" "$text/valid.phn" "$text/valid.ltr")
$no_paired || needed+=("$units/phone_ctc.pt")
for f in "${needed[@]}"; do
  [ -f "$f" ] || { echo "$0: $f not found (CORPUS: run.sh stage 0; UNITS_DIR: stage 3; TEXT_DIR: stage 2)" >&2; exit 1; }
done
if $no_paired && [ -n "$checkpoint" ]; then
  echo "$0: --no-paired clusters MFCC (a checkpoint's features come from a model trained with paired data's units)" >&2
  exit 2
fi
if [ -n "$checkpoint" ]; then
  [ -f "$checkpoint" ] || { echo "$0: --checkpoint $checkpoint not found" >&2; exit 1; }
  [ -n "$layer" ] || { echo "$0: --checkpoint needs --layer L (1-based Transformer layer)" >&2; exit 2; }
  checkpoint="$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")"
elif [ -n "$layer" ]; then
  echo "$0: --layer is for --checkpoint's features (without it: MFCC)" >&2; exit 2
fi
mkdir -p "$out/logs"
corpus="$(cd "$corpus" && pwd)"; text="$(cd "$text" && pwd)"; out="$(cd "$out" && pwd)"
$no_paired || units="$(cd "$units" && pwd)"  # --no-paired reads nothing of UNITS_DIR
logs="$out/logs"
[ -n "$jobs" ] || jobs=$(( ncpu >= 2 ? 2 : 1 ))
[ -n "$threads" ] || threads=$(( ncpu / jobs > 0 ? ncpu / jobs : 1 ))
splits=(train train_paired valid)
feat="$out/feat"; km="$out/km"; data="$out/data"; align="$out/align"; t2u_data="$out/t2u_data"
# nproc/J threads for every step: a small model gains little from a second thread, and on a loaded machine
# (run.sh's parallel runs) an OpenMP thread waiting for a descheduled sibling makes it many times slower
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

src=(); what="MFCC"
[ -n "$checkpoint" ] && { src=(--checkpoint "$checkpoint" --layer "$layer"); what="layer $layer of $checkpoint"; }
say "hidden units 1: $what, features of ${splits[*]} -> $feat"
# features already there must be the ones asked for (their sidecars fingerprint the checkpoint and layer)
speechlm features check "$feat" "${src[@]}"
for split in "${splits[@]}"; do
  if [ -f "$feat/${split}_0_1.len" ]; then say "  $split: exists, skipped"; continue; fi
  timed "$logs/features_$split" speechlm features dump "$corpus" "$split" "$feat" "${src[@]}"
done

say "hidden units 2: k-means, K=$k, learned on train -> $out/km.npy, $km"
if [ -f "$out/km.npy" ]; then say "  km.npy exists, skipped"; else
  timed "$logs/kmeans_learn" speechlm kmeans learn "$feat" train --km-path "$out/km.npy" -k "$k" --percent "$km_percent"
fi
for split in train_paired valid train; do  # train last: dict.km.txt holds train's counts
  if [ -f "$km/$split.km" ]; then say "  $split.km exists, skipped"; continue; fi
  timed "$logs/kmeans_apply_$split" speechlm kmeans apply "$feat" "$split" --km-path "$out/km.npy" --lab-dir "$km"
done
[ -f "$km/score.valid.json" ] || speechlm kmeans score --units "$km/valid.km" --phones "$corpus/valid.phn" \
  > "$km/score.valid.json"
if [ ! -f "$data/valid.km" ]; then
  mkdir -p "$data"
  for split in train valid; do cp "$corpus/$split.tsv" "$km/$split.km" "$data/"; done
  cp "$km/dict.km.txt" "$corpus/dict.ltr.txt" "$data/"
fi

if $no_paired; then
  np="$out/nopaired"
  say "no paired data: one vocabulary of k-means units (speech) and phonemes (text) -> $np"
  mkdir -p "$np/data" "$np/text"
  # k-means symbols are numbers, phonemes letters: the two sets never share a symbol
  cat "$km/dict.km.txt" "$corpus/dict.phn.txt" > "$np/data/dict.kmphn.txt"
  cp "$corpus/dict.ltr.txt" "$np/data/"
  for split in train valid; do
    cp "$corpus/$split.tsv" "$np/data/"; cp "$km/$split.km" "$np/data/$split.kmphn"
    cp "$text/$split.phn" "$np/text/$split.kmphn"; cp "$text/$split.ltr" "$np/text/$split.ltr"
    if [ -f "$np/text_bin/$split.kmphn-ltr.kmphn.idx" ]; then say "  $split: binarized, skipped"; continue; fi
    timed "$logs/binarize_nopaired_$split" speechlm binarize --units "$np/text/$split.kmphn" \
      --letters "$np/text/$split.ltr" --unit-dict "$np/data/dict.kmphn.txt" --letter-dict "$corpus/dict.ltr.txt" \
      --dest "$np/text_bin" --split "$split"
  done
  # for `speechlm analyze shared-space --units-dir $np/phones --label kmphn`: valid's true phones in this vocabulary
  mkdir -p "$np/phones"; cp "$np/data/dict.kmphn.txt" "$np/phones/"; cp "$corpus/valid.phn" "$np/phones/valid.kmphn"
  say "no paired data done: data $np/data, text $np/text_bin"
  exit 0
fi

say "hidden units 3: phone units of train_paired and valid (forced alignment of their transcripts) -> $align"
# an utterance whose transcript has a word outside the lexicon is decoded instead: with stage 3's phone LM
# and its settings when UNITS_DIR has one (as the LibriSpeech recipe), else from the posteriors
lm=(); [ -f "$units/phone_lm.arpa" ] && lm=(--phone-lm "$units/phone_lm.arpa" --lm-weight 0.5 --insertion 1)
for split in train_paired valid; do
  if [ -f "$align/$split.phn" ]; then say "  $split.phn exists, skipped"; continue; fi
  timed "$logs/align_$split" speechlm phone-units label "$corpus" "$split" --model "$units/phone_ctc.pt" \
    --out-dir "$align" --transcripts "${lm[@]}"
done

say "hidden units 4: text-to-unit model (t2u_tiny, $t2u_updates updates) on train_paired -> $out/t2u"
mkdir -p "$t2u_data"
cp "$align/train_paired.phn" "$t2u_data/train.phn"; cp "$km/train_paired.km" "$t2u_data/train.km"
cp "$align/valid.phn" "$t2u_data/valid.phn"; cp "$km/valid.km" "$t2u_data/valid.km"
cp "$corpus/dict.phn.txt" "$km/dict.km.txt" "$t2u_data/"
if [ -f "$out/t2u/done" ]; then say "  t2u model trained, skipped"; else
  (cd "$REPO" && timed "$logs/t2u_train" fairseq-hydra-train --config-dir examples/tokenizers/config --config-name t2u_tiny \
    common.user_dir="$REPO/speechlm" task.data="$t2u_data" checkpoint.save_dir="$out/t2u" \
    hydra.run.dir="$out/t2u/hydra" optimization.max_update="$t2u_updates" \
    dataset.validate_interval=1000000 checkpoint.save_interval=1000000)  # 64 utterances = 3 updates an epoch:
    # validate and save every 100 updates (the config's *_interval_updates), not at every epoch's end
  touch "$out/t2u/done"  # (checkpoint_best.pt appears at the first validation, long before the end)
fi

say "hidden units 5: unpaired text -> hidden units (t2u generate, $jobs shard(s)) -> binarized $out/text_bin"
mkdir -p "$out/text"
src="$text/train"
if [ -n "$max_text_lines" ]; then  # the first N sentences only (--max-text-lines)
  src="$out/text/train_first$max_text_lines"
  if [ ! -f "$src.ltr" ]; then
    head -n "$max_text_lines" "$text/train.phn" > "$src.phn"; head -n "$max_text_lines" "$text/train.ltr" > "$src.ltr"
  fi
fi
for split in train valid; do
  in=$([ $split = train ] && echo "$src" || echo "$text/valid")
  prefix="$out/text/${split}_km"
  if [ -f "$prefix.km" ]; then say "  $split: $(basename "$prefix").km exists, skipped"; else
    gen=(speechlm t2u generate --checkpoint "$out/t2u/checkpoint_best.pt" --data "$t2u_data" --units "$in.phn" \
      --letters "$in.ltr" --out-prefix "$prefix")
    if [ "$split" = train ] && [ "$jobs" -gt 1 ]; then
      timed "$logs/t2u_generate_$split" run_shards "$jobs" "${gen[@]}"
      speechlm t2u merge --out-prefix "$prefix" --nshard "$jobs"
      rm -f "${prefix}_"*"_$jobs".{km,ltr,shard.json}
    else
      timed "$logs/t2u_generate_$split" "${gen[@]}"
    fi
  fi
  if [ -f "$out/text_bin/$split.km-ltr.km.idx" ]; then say "  $split: binarized, skipped"; else
    timed "$logs/binarize_$split" speechlm binarize --units "$prefix.km" --letters "$prefix.ltr" \
      --unit-dict "$km/dict.km.txt" --letter-dict "$corpus/dict.ltr.txt" --dest "$out/text_bin" --split "$split"
  fi
done

"$PY" "$REPO/scripts/mini_summary.py" hidden-units "$out"
say "hidden units done: data $data, text $out/text_bin"
