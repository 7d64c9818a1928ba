#!/usr/bin/env python
"""CPU throughput of the data stages of examples/librispeech/run.sh, for its cost table at full scale.

    python scripts/bench_librispeech.py --tree LS_TREE --corpus CORPUS --recognizer phone_ctc.pt \\
        --phone-lm phones.arpa [--utts 40] [--steps data,phone,kmeans,t2u,kenlm] \\
        [--t2u-data T2U_DATA --t2u-text lm.phn]

``LS_TREE``: a LibriSpeech-layout folder (``speechlm corpus mini OUT --layout librispeech``); ``CORPUS``: a
fairseq-layout corpus with ``valid.tsv``/``valid.wrd`` (the recognizer's test set). Each step is timed in
CPU seconds of this process (``time.process_time``, one thread) and printed per second of audio (or per
sentence), then scaled to LibriSpeech 960 h (3,456,000 s of audio, 281,241 utterances) and the 40M-sentence
LM corpus. Other jobs on a shared machine do not inflate CPU time much, but memory-bound steps still slow down.

``--steps`` picks the groups: ``data`` (manifests, labels, FLAC, MFCC), ``phone`` (recognizer posteriors,
alignment, phone-LM search, training; needs ``--recognizer``/``--phone-lm``), ``kmeans`` (MiniBatchKMeans
K=500 as ``speechlm kmeans learn`` on the MFCC frames of ``CORPUS/train``), ``t2u`` (the ``t2u_base``
text-to-unit model, random weights: training updates on ``T2U_DATA/train.{phn,km}`` and generation of
``--t2u-text``, an upsampled phone file), ``kenlm`` (CTC beam search with pyctcdecode + KenLM, beam 500 and
50, on ``CORPUS/test``: a 4-gram from ``CORPUS/unpaired.wrd`` and emissions built from the reference letters
at 50 Hz with a 10 % letter substitution rate, so the cost is that of a fairly peaked real model's).
"""
import argparse
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_AUDIO_S = 960 * 3600
FULL_UTTS = 281_241
FULL_SENTENCES = 40_418_260
FULL_LM_WORDS = 803_000_000  # librispeech-lm-norm.txt, about 800M words (OpenSLR 11)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--recognizer")
    p.add_argument("--phone-lm")
    p.add_argument("--utts", type=int, default=40, help="utterances of CORPUS/valid to time (default: 40)")
    p.add_argument("--steps", default="data,phone", help="comma list of data, phone, kmeans, t2u, kenlm")
    p.add_argument("--t2u-data", help="train.phn, train.km, dict.phn.txt, dict.km.txt (run.sh's t2u_data)")
    p.add_argument("--t2u-text", help="upsampled phone lines to generate units for (run.sh's text/lm.phn)")
    p.add_argument("--t2u-updates", type=int, default=4)
    p.add_argument("--t2u-lines", type=int, default=1000)
    args = p.parse_args(argv)
    steps = set(args.steps.split(","))
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from speechlm.corpora.librispeech import write_labels
    from speechlm.data.manifest import SAMPLE_RATE
    from speechlm.data.readers import load_labels, load_manifest, read_audio
    from speechlm.data.scan import write_manifests
    from speechlm.tokenizers import phone_recognizer
    from speechlm.tokenizers.features import mfcc_39
    from speechlm.tokenizers.lexicon import Lexicon
    from speechlm.tokenizers.phone_alignment import label_with_transcript
    from speechlm.tokenizers.phone_lm import ArpaLM, label_with_phone_lm

    rows_out = []

    def report(step, cpu, amount, unit, full):
        per = cpu / amount
        rows_out.append((step, per, unit, per * full / 3600))

    tree = os.path.join(args.tree, "LibriSpeech", "train-other-500")
    if "kmeans" in steps:
        bench_kmeans(args.corpus, report)
    if "t2u" in steps:
        bench_t2u(args.t2u_data, args.t2u_text, args.t2u_updates, args.t2u_lines, report)
    if "kenlm" in steps:
        bench_kenlm(args.corpus, report)
    if "data" not in steps and "phone" not in steps:
        return print_table(rows_out)
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
    audio_s = sum(n for _, n in rows) / SAMPLE_RATE
    c = time.process_time()
    wavs = [read_audio(os.path.join(root, rel)) for rel, _ in rows]
    report("   FLAC/WAV decoding", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    c = time.process_time()
    for w in wavs:
        mfcc_39(w, rate=50)
    report("5 MFCC features (39-d, 50 Hz)", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    if "phone" not in steps:
        return print_table(rows_out)
    model = phone_recognizer.load_recognizer(args.recognizer)
    c = time.process_time()
    lps = [phone_recognizer.posteriors(model, w) for w in wavs]
    report("4 recognizer posteriors", time.process_time() - c, audio_s, "audio s", FULL_AUDIO_S)
    lex = Lexicon.cmudict()
    c = time.process_time()
    for lp, wd in zip(lps, words):
        wp = phone_recognizer.transcript_phones(wd.split(), lex)
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

    targets = [phone_recognizer.ctc_targets(phone_recognizer.transcript_phones(["A"], lex)) for _ in rows]
    data = PhoneCtcDataset(Manifest.load(os.path.join(args.corpus, "valid.tsv")), range(len(rows)), targets,
                           phone_recognizer.utterance_features)
    c = time.process_time()
    train_recognizer(data, phone_recognizer.PhoneRecognizerConfig(), TrainingConfig(epochs=1, batch_size=8))
    report("4 recognizer training, per epoch (100 h)", time.process_time() - c, audio_s, "audio s", 100 * 3600)
    print(f"CPU time of one thread, {len(rows)} utterances ({audio_s:.0f} s of audio)")
    print_table(rows_out)


def print_table(rows_out):
    print(f"full scale: 960 h / 281,241 utterances (unpaired speech 860 h, paired 100 h), 40.4M LM sentences "
          f"(~{FULL_LM_WORDS / 1e6:.0f}M words); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'step':<50}{'CPU s per unit':>16}  {'unit':<14}{'CPU-h at full scale':>20}")
    for step, per, unit, full_h in rows_out:
        print(f"{step:<50}{per:>16.6f}  {unit:<14}{full_h:>20.2f}")


def bench_kmeans(corpus, report):
    """MiniBatchKMeans with ``speechlm kmeans learn``'s settings (K=500, batch 10,000, k-means++ x 20 inits of
    30,000 frames, early stop after 100 steps without improvement) on the 39-d MFCC frames of CORPUS/train.
    Its cost is the 20 initialisations plus a fixed cost per mini-batch step, neither of which grows with
    the sample; the full-scale row uses the steps measured here (early stopping) and a second row the bound
    of ``max_iter`` (100) passes over a 10 % sample of 960 h (17.3M frames)."""
    import numpy as np
    from sklearn.cluster import MiniBatchKMeans

    from speechlm.data.readers import load_manifest, read_audio
    from speechlm.tokenizers.features import mfcc_39
    from speechlm.tokenizers.kmeans import learn_kmeans

    root, rows = load_manifest(os.path.join(corpus, "train.tsv"))
    feats = np.concatenate([mfcc_39(read_audio(os.path.join(root, rel)), rate=50) for rel, _ in rows])
    kw = {k: v.default for k, v in inspect.signature(learn_kmeans).parameters.items()
          if k not in ("feats", "n_clusters", "seed")}
    km = MiniBatchKMeans(n_clusters=500, init="k-means++", tol=0.0, reassignment_ratio=0.0, compute_labels=False,
                         random_state=0, **kw)
    c = time.process_time()
    km.fit(feats)
    cpu = time.process_time() - c
    c = time.process_time()
    MiniBatchKMeans(n_clusters=500, init="k-means++", tol=0.0, reassignment_ratio=0.0, compute_labels=False,
                    random_state=0, **{**kw, "max_iter": 1, "max_no_improvement": 1}).fit(feats[: kw["batch_size"] * 3])
    init = time.process_time() - c  # the 20 k-means++ initialisations and one step
    per_step = max(cpu - init, 0.0) / max(km.n_steps_, 1)
    full_frames = FULL_AUDIO_S * 50 // 10
    print(f"k-means learn: {len(feats)} frames, {km.n_steps_} mini-batch steps (early stop), {cpu:.1f} CPU s; "
          f"initialisations {init:.1f} s, {per_step * 1000:.1f} ms per step")
    report("5 k-means learn K=500 (steps as measured)", init + per_step * km.n_steps_, 1, "run", 1)
    max_steps = kw["max_iter"] * full_frames // kw["batch_size"]
    report(f"5 k-means learn K=500 ({max_steps} steps bound)", init + per_step * max_steps, 1, "run", 1)


def bench_t2u(data, text, updates, lines, report):
    """The ``t2u_base`` text-to-unit model (random weights: speed does not depend on them): Adam updates on
    batches of DATA/train (CPU s per 1000 unit frames; full scale = run.sh's 100,000 updates of <= 20,000
    frames), and greedy generation of the first ``lines`` lines of TEXT (per LM word)."""
    import torch
    from fairseq import tasks
    from omegaconf import OmegaConf

    import speechlm
    from speechlm.tokenizers.text_to_unit import generate

    speechlm.register()
    cfg = OmegaConf.load(REPO / "examples/tokenizers/config/t2u_base.yaml")
    cfg.task.data = os.path.abspath(data)
    task = tasks.setup_task(cfg.task)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    ds = task.dataset("train")
    itr = task.get_batch_iterator(ds, max_tokens=cfg.dataset.max_tokens, required_batch_size_multiple=1,
                                  disable_iterator_cache=True).next_epoch_itr(shuffle=False)
    batches = list(itr)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    frames, c = 0, time.process_time()
    for u in range(updates):
        sample = batches[u % len(batches)]
        loss, _, _ = criterion(model, sample)
        opt.zero_grad()
        loss.backward()
        opt.step()
        frames += int(sample["ntokens"])
    cpu = time.process_time() - c
    report("5 t2u training (t2u_base), 100k updates x 20k frames", cpu, frames / 1000, "1k frames",
           100_000 * 20_000 / 1000)
    ltr = os.path.splitext(text)[0] + ".ltr"
    with open(text, encoding="utf-8") as f, open(ltr, encoding="utf-8") as g:
        pairs = [(next(f).rstrip("\n"), next(g)) for _ in range(lines)]
    phone_lines = [p for p, _ in pairs]
    n_words = sum(len(x.strip().rstrip("|").split("|")) for _, x in pairs)
    model.eval()
    c = time.process_time()
    with torch.inference_mode():
        out = generate(model, task, phone_lines)
    cpu = time.process_time() - c
    n_frames = sum(len(u.split()) for u in out)
    print(f"t2u generate: {lines} lines, {n_words} words, {n_frames / n_words:.1f} frames per word, {cpu:.1f} CPU s")
    report("5 t2u generation (40.4M sentences, ~803M words)", cpu, n_words, "LM word", FULL_LM_WORDS)


def bench_kenlm(corpus, report):
    """pyctcdecode + KenLM beam search (beam 500, as infer_kenlm.yaml, and 50, as run.sh) on CORPUS/test
    with a 4-gram of CORPUS/unpaired.wrd; emissions (T=50 Hz frames of each utterance's audio) put the
    reference's letters and word boundaries evenly among blanks, peaked (+8 over N(0, 1.5) logits), with 10 %
    of the letters replaced by another letter. Full scale: dev/test clean/other, 21.5 h."""
    import numpy as np
    import torch
    from fairseq.data import Dictionary

    from speechlm.data.manifest import SAMPLE_RATE
    from speechlm.data.readers import load_labels, load_manifest
    from speechlm.decoding.ctc import KenLMDecoder, ViterbiDecoder, error_rates, load_kenlm
    from speechlm.decoding.ngram import write_arpa

    root, rows = load_manifest(os.path.join(corpus, "test.tsv"))
    ltrs = load_labels(os.path.join(corpus, "test.ltr"), len(rows))
    tgt = Dictionary.load(os.path.join(corpus, "dict.ltr.txt"))
    blank = tgt.bos()
    rng = np.random.default_rng(0)
    letters = [i for i, s in enumerate(tgt.symbols) if len(s) == 1 and s.isalpha()]
    emis, refs = [], []
    for (_, n), ltr in zip(rows, ltrs):
        toks = [tgt.index(x) for x in ltr.split()]
        T = max(n // 320, 2 * len(toks) + 1)
        logits = rng.normal(0.0, 1.5, (T, len(tgt))).astype(np.float32)
        target = np.full(T, blank)
        pos = ((np.arange(len(toks)) + 0.5) * T / len(toks)).astype(int)
        for p, t in zip(pos, toks):
            if t in letters and rng.random() < 0.1:
                t = int(rng.choice([x for x in letters if x != t]))
            target[p] = t
        logits[np.arange(T), target] += 8.0
        emis.append(torch.from_numpy(logits).log_softmax(-1))
        refs.append(" ".join(ltr.replace(" ", "").replace("|", " ").split()))
    audio_s = sum(n for _, n in rows) / SAMPLE_RATE
    with tempfile.TemporaryDirectory() as tmp:
        arpa = os.path.join(tmp, "lm4.arpa")
        with open(os.path.join(corpus, "unpaired.wrd"), encoding="utf-8") as f:
            info = write_arpa((ln.split() for ln in f), arpa, order=4)
        lm = load_kenlm(arpa)
        vit = ViterbiDecoder(tgt, blank)
        res = {i: (vit.decode_words(e), r) for i, (e, r) in enumerate(zip(emis, refs))}
        print(f"KenLM: 4-gram of {sum(info['ngrams'])} n-grams; emissions: {len(rows)} utterances, "
              f"{audio_s:.0f} s; Viterbi WER {error_rates(res)['wer']:.1f} CER {error_rates(res)['cer']:.1f}")
        for beam in (500, 50):
            dec = KenLMDecoder(tgt, blank, arpa, beam=beam, language_model=lm)
            c = time.process_time()
            res = {i: (dec.decode_words(e), r) for i, (e, r) in enumerate(zip(emis, refs))}
            cpu = time.process_time() - c
            print(f"KenLM beam {beam}: WER {error_rates(res)['wer']:.1f} CER {error_rates(res)['cer']:.1f}")
            report(f"8 KenLM beam search, beam {beam} (21.5 h)", cpu, audio_s, "audio s", 21.5 * 3600)


if __name__ == "__main__":
    main()
