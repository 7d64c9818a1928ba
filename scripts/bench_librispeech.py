#!/usr/bin/env python
"""CPU throughput of the data stages of examples/librispeech/run.sh, for its cost table at full scale.

    python scripts/bench_librispeech.py --tree LS_TREE --corpus CORPUS --recognizer phone_ctc.pt \\
        --phone-lm phones.arpa [--utts 40]

``LS_TREE``: a LibriSpeech-layout folder (``speechlm corpus mini OUT --layout librispeech``); ``CORPUS``: a
fairseq-layout corpus with ``valid.tsv``/``valid.wrd`` (the recognizer's test set). Each step is timed in
CPU seconds of this process (``time.process_time``, one thread) and printed per second of audio (or per
sentence), then scaled to LibriSpeech 960 h (3,456,000 s of audio, 281,241 utterances) and the 40M-sentence
LM corpus. Other jobs on a shared machine do not inflate CPU time much, but memory-bound steps still slow down.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_AUDIO_S = 960 * 3600
FULL_UTTS = 281_241
FULL_SENTENCES = 40_418_260


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--recognizer", required=True)
    p.add_argument("--phone-lm", required=True)
    p.add_argument("--utts", type=int, default=40, help="utterances of CORPUS/valid to time (default: 40)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from speechlm.corpora.librispeech import write_labels
    from speechlm.data.manifest import write_manifests
    from speechlm.data.readers import load_labels, load_manifest, read_audio
    from speechlm.tokenizers import phone_recognizer as R
    from speechlm.tokenizers.features import mfcc_39
    from speechlm.tokenizers.lexicon import Lexicon
    from speechlm.tokenizers.phone_alignment import label_with_transcript
    from speechlm.tokenizers.phone_lm import ArpaLM, label_with_phone_lm

    rows_out = []

    def report(step, cpu, amount, unit, full):
        per = cpu / amount
        rows_out.append((step, per, unit, per * full / 3600))

    tree = os.path.join(args.tree, "LibriSpeech", "train-other-500")
    with tempfile.TemporaryDirectory() as tmp:
        c = time.process_time()
        write_manifests(tree, tmp, ext="flac", valid_percent=0)
        n_files = len(load_manifest(os.path.join(tmp, "train.tsv"))[1])
        report("1 manifests (FLAC headers)", time.process_time() - c, n_files, "utterance", FULL_UTTS)
        c = time.process_time()
        write_labels(os.path.join(tmp, "train.tsv"), tree)
        report("2 transcripts (labels)", time.process_time() - c, n_files, "utterance", FULL_UTTS)
    root, rows = load_manifest(os.path.join(args.corpus, "valid.tsv"))
    rows = rows[: args.utts]
    words = load_labels(os.path.join(args.corpus, "valid.wrd"), len(load_manifest(os.path.join(args.corpus, "valid.tsv"))[1]))
    audio_s = sum(n for _, n in rows) / 16000
    c = time.process_time()
    wavs = [read_audio(os.path.join(root, rel)) for rel, _ in rows]
    report("   FLAC/WAV decoding", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    c = time.process_time()
    for w in wavs:
        mfcc_39(w, rate=50)
    report("5 MFCC features (39-d, 50 Hz)", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    model = R.load_recognizer(args.recognizer)
    c = time.process_time()
    lps = [R.posteriors(model, w) for w in wavs]
    report("4 recognizer posteriors", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    lex = Lexicon.cmudict()
    c = time.process_time()
    for lp, wd in zip(lps, words):
        wp = R.transcript_phones(wd.split(), lex)
        if wp is not None:
            try:
                label_with_transcript(lp, wp)
            except ValueError:
                pass
    report("4 forced alignment (100 h)", time.process_time() - c, audio_s, "audio s", 100 * 3600)
    lm = ArpaLM.load(args.phone_lm)
    c = time.process_time()
    for lp in lps:
        label_with_phone_lm(lp, lm, 1.0, 2.0, 16)
    report("4 phone-LM beam search (860 h)", time.process_time() - c, audio_s, "audio s", 860 * 3600)
    # recognizer training: one epoch over these utterances (reading, MFCC, forward + backward), per audio second
    from speechlm.data.readers import Manifest
    from speechlm.tokenizers.phone_training import PhoneCtcDataset, TrainingConfig, train_recognizer

    targets = [R.ctc_targets(R.transcript_phones(["A"], lex)) for _ in rows]
    data = PhoneCtcDataset(Manifest.load(os.path.join(args.corpus, "valid.tsv")), range(len(rows)), targets,
                           R.utterance_features)
    c = time.process_time()
    train_recognizer(data, R.PhoneRecognizerConfig(), TrainingConfig(epochs=1, batch_size=8))
    report("4 recognizer training, per epoch (100 h)", time.process_time() - c, audio_s, "audio s", 100 * 3600)
    print(f"CPU time of one thread, {len(rows)} utterances ({audio_s:.0f} s of audio); full scale: "
          "960 h / 281,241 utterances (unpaired speech 860 h, paired 100 h)")
    print(f"{'step':<42}{'CPU s per unit':>16}  {'unit':<10}{'CPU-h at full scale':>20}")
    for step, per, unit, full_h in rows_out:
        print(f"{step:<42}{per:>16.5f}  {unit:<10}{full_h:>20.1f}")


if __name__ == "__main__":
    main()
