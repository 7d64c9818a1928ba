"""`speechlm phone-units train|label|merge|score`: speech -> frame-level phone units, without Kaldi.

    speechlm phone-units train CORPUS --split train_paired --save phone_ctc.pt [--epochs 30]
    speechlm phone-units label CORPUS train --model phone_ctc.pt --out-dir LAB [--transcripts] \\
        [--phone-lm phones.arpa] [--nshard N --rank R]
    speechlm phone-units merge LAB train --nshard N
    speechlm phone-units score --hyp LAB/valid.phn --ref CORPUS/valid.phn

``label`` writes ``LAB/{split}.phn`` (``LAB/{split}_{rank}_{nshard}.phn`` when sharded): one line per
manifest row, one phone per 50 Hz frame. ``--transcripts`` force-aligns ``CORPUS/{split}.wrd``;
``--phone-lm`` decodes the rest with a phone n-gram LM (``speechlm ngram TEXT --phones``); otherwise the
per-frame argmax of the CTC posteriors decides. See ``speechlm.tokenizers.phone_labelling``.
"""
import json
import logging
import os
import sys

from speechlm.tokenizers.shards import concat_shards


def add_args(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("train", help="train the CTC phone recognizer on transcribed speech")
    p.add_argument("corpus", help="directory with SPLIT.tsv and SPLIT.wrd")
    p.add_argument("--split", default="train_paired")
    p.add_argument("--save", required=True, help="output model (.pt)")
    p.add_argument("--lexicon", help="'WORD PH1 PH2 ...' lexicon (default: CMU dict)")
    p.add_argument("--inventory", choices=("arpabet", "kaldi"), default="arpabet",
                   help="kaldi: read the lexicon with stress; `label --transcripts` then writes Kaldi "
                        "position-dependent phones (and OUT_DIR/dict.phn.txt); the recognizer itself stays "
                        "position-independent")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-updates", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dim", type=int, default=192, help="channels of the conv blocks")
    p.add_argument("--layers", type=int, default=6, help="residual conv blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="", help="input = a layer of this hubert/speechlm checkpoint (default: MFCC)")
    p.add_argument("--layer", type=int, default=0, help="the layer (1-based), with --checkpoint")

    p = sub.add_parser("label", help="frame-level phone units of a manifest (one shard)")
    p.add_argument("corpus", help="directory with SPLIT.tsv (and SPLIT.wrd with --transcripts)")
    p.add_argument("split")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--transcripts", action="store_true", help="force-align SPLIT.wrd")
    p.add_argument("--strict", action="store_true",
                   help="with --transcripts: a word missing from the lexicon is an error (default: that "
                        "utterance is labelled from the posteriors, and counted)")
    p.add_argument("--lexicon", help="'WORD PH1 PH2 ...' lexicon (default: CMU dict)")
    p.add_argument("--inventory", choices=("arpabet", "kaldi"), default="arpabet",
                   help="kaldi: read the lexicon with stress; `label --transcripts` then writes Kaldi "
                        "position-dependent phones (and OUT_DIR/dict.phn.txt); the recognizer itself stays "
                        "position-independent")
    p.add_argument("--phone-lm", help="phone n-gram ARPA (`speechlm ngram TEXT --phones`): utterances without "
                                      "a usable transcript are decoded by beam search with it")
    p.add_argument("--lm-weight", type=float, default=1.0, help="phone LM weight (default: 1.0)")
    p.add_argument("--insertion", type=float, default=2.0,
                   help="phone insertion bonus per phone, natural log (default: 2.0, best on the mini corpus)")
    p.add_argument("--beam", type=int, default=16, help="beam width with --phone-lm (default: 16)")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)

    p = sub.add_parser("merge", help="concatenate label shards into OUT_DIR/SPLIT.phn")
    p.add_argument("out_dir")
    p.add_argument("split")
    p.add_argument("--nshard", type=int, required=True)

    p = sub.add_parser("score", help="frame accuracy and PER against true frame-level phones")
    p.add_argument("--hyp", required=True)
    p.add_argument("--ref", required=True)


def _load_split(corpus, split, need_words, lexicon=None):
    from speechlm.data.readers import load_labels, load_manifest
    from speechlm.tokenizers.phone_recognizer import transcript_phones

    tsv = os.path.join(corpus, f"{split}.tsv")
    root, rows = load_manifest(tsv)
    words = None
    if need_words:
        wrd = os.path.join(corpus, f"{split}.wrd")
        lines = load_labels(wrd, len(rows), tsv)
        words = []
        for i, line in enumerate(lines):
            wp = transcript_phones(line.split(), lexicon)
            if wp is None:
                missing = [w for w in line.split() if lexicon.get(w) is None]
                words.append((i + 1, missing))
            else:
                words.append(wp)
    return root, rows, words


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f.read().splitlines()]


def run(args):
    logging.basicConfig(level=logging.INFO, format="[phone-units] %(message)s")
    import numpy as np
    import torch

    from speechlm.data.readers import read_audio
    from speechlm.tokenizers import phone_recognizer as R
    from speechlm.tokenizers.lexicon import Lexicon

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.action == "train":
        lexicon = Lexicon.load(args.lexicon, args.inventory)
        root, rows, words = _load_split(args.corpus, args.split, True, lexicon)
        if args.checkpoint and args.layer < 1:
            sys.exit("speechlm phone-units train: --checkpoint needs --layer N (1-based Transformer layer)")
        featurize = R.make_featurizer(args.checkpoint, args.layer)
        feats, targets, skipped = [], [], []
        for (rel, n), wp in zip(rows, words):
            if isinstance(wp, tuple):
                skipped.append(wp)
                continue
            feats.append(featurize(read_audio(os.path.join(root, rel))))
            targets.append(R.ctc_targets(wp))
        if skipped:
            print(f"[phone-units] skipped {len(skipped)} utterances with words missing from the lexicon, "
                  f"e.g. {args.split}.wrd line {skipped[0][0]}: {skipped[0][1]}", file=sys.stderr)
        if not feats:
            sys.exit(f"speechlm phone-units train: no usable utterance in {args.corpus}/{args.split}")
        cfg = R.PhoneRecognizerConfig(dim=args.dim, layers=args.layers, input_dim=feats[0].shape[1],
                                      input_rate=50 if args.checkpoint else 100,
                                      feature_checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
                                      feature_layer=args.layer)
        model, losses = R.train_recognizer(feats, targets, cfg, args.epochs, args.batch_size, args.lr,
                                           args.seed, args.max_updates)
        R.save_recognizer(model, args.save)
        k = max(1, len(losses) // 10)
        print(f"[phone-units] {len(losses)} updates on {len(feats)} utterances; CTC loss "
              f"{np.mean(losses[:k]):.3f} (first 10%) -> {np.mean(losses[-k:]):.3f} (last 10%); -> {args.save}",
              file=sys.stderr)
    elif args.action == "label":
        from speechlm.tokenizers.phone_labelling import LabellingError, label_split

        lexicon = Lexicon.load(args.lexicon, args.inventory) if args.transcripts else None
        if args.inventory == "kaldi" and not args.transcripts:
            sys.exit("speechlm phone-units label: --inventory kaldi needs --transcripts (word boundaries)")
        try:
            rep = label_split(args.corpus, args.split, args.model, args.out_dir, args.transcripts, lexicon,
                              args.strict, args.phone_lm, args.lm_weight, args.insertion, args.beam,
                              args.nshard, args.rank)
        except LabellingError as e:
            sys.exit(f"speechlm phone-units label: {e}")
        if args.nshard > 1:
            from speechlm.tokenizers.shards import write_sidecar

            write_sidecar(rep.out[: -len(".phn")], "phone-units label", args.rank, args.nshard,
                          {"manifest": os.path.join(args.corpus, f"{args.split}.tsv"), "model": args.model,
                           "lexicon": args.lexicon, "phone_lm": args.phone_lm},
                          {"inventory": args.inventory, "transcripts": args.transcripts, "strict": args.strict, "lm_weight": args.lm_weight,
                           "insertion": args.insertion, "beam": args.beam})
        print(f"[phone-units] {rep.utterances} utterances -> {rep.out} (forced alignment {rep.aligned}, "
              f"phone LM {rep.phone_lm}, posteriors only {rep.posteriors})", file=sys.stderr)
        if rep.too_short:
            print(f"[phone-units] {rep.too_short} utterances too short for their transcript: labelled without "
                  "it", file=sys.stderr)
        if rep.oov_lines:
            eg = "; ".join(f"line {n}: {' '.join(w)}" for n, w in rep.oov_lines[:5])
            print(f"[phone-units] {len(rep.oov_lines)} transcripts with words missing from the lexicon, labelled "
                  f"without them ({args.split}.wrd {eg})", file=sys.stderr)
    elif args.action == "merge":
        out = os.path.join(args.out_dir, f"{args.split}.phn")
        try:
            concat_shards(out[: -len(".phn")], args.nshard, ("phn",),
                          "run `speechlm phone-units label` for those ranks")
        except FileNotFoundError as e:
            sys.exit(f"speechlm phone-units merge: {e}")
        print(f"[phone-units] merged {args.nshard} shards -> {out}", file=sys.stderr)
    elif args.action == "score":
        hyp, ref = _read_lines(args.hyp), _read_lines(args.ref)
        if len(hyp) != len(ref):
            sys.exit(f"speechlm phone-units score: {args.hyp} has {len(hyp)} lines, {args.ref} has {len(ref)}")
        try:
            print(json.dumps(R.score_labels(hyp, ref)))
        except ValueError as e:
            sys.exit(f"speechlm phone-units score: {args.hyp} vs {args.ref}: {e}")
    return 0
