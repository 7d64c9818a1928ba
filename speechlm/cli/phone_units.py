"""`speechlm phone-units train|label|merge|score`: speech -> frame-level phone units, without Kaldi.

    speechlm phone-units train CORPUS --split train_paired --save phone_ctc.pt [--epochs 30] \\
        [--pseudo train LAB0/train.phn]   # self-training: + unpaired speech labelled by a first model
    speechlm phone-units label CORPUS train --model phone_ctc.pt --out-dir LAB [--transcripts] \\
        [--phone-lm phones.arpa] [--blank-penalty 2] [--nshard N --rank R]
    speechlm phone-units merge LAB train --nshard N
    speechlm phone-units score --hyp LAB/valid.phn --ref CORPUS/valid.phn [--spk CORPUS/valid.spk]

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
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--time-masks", type=int, default=0,
                   help="SpecAugment: time masks (up to 10 input frames each) per utterance (default: 0)")
    p.add_argument("--channel-masks", type=int, default=0,
                   help="SpecAugment: channel masks (up to 6 channels each) per utterance (default: 0)")
    p.add_argument("--pseudo", nargs=2, metavar=("SPLIT", "PHN"), action="append", default=[],
                   help="self-training: also train on CORPUS/SPLIT.tsv with targets from the frame-level labels "
                        "PHN (`phone-units label` output, e.g. of the unpaired speech decoded with --phone-lm); "
                        "repeatable")
    p.add_argument("--valid-split", default="valid",
                   help="transcribed split scored after every epoch (CTC loss, greedy PER), if CORPUS has "
                        "its .tsv and .wrd (default: valid; '' for none)")
    p.add_argument("--train-dir", help="where checkpoint_last.pt is kept after every epoch; a run that finds "
                                       "one resumes from it (default: SAVE without .pt + '.train')")
    p.add_argument("--checkpoint", default="", help="input = a layer of this hubert/speechlm checkpoint (default: MFCC)")
    p.add_argument("--layer", type=int, default=0, help="the layer (1-based), with --checkpoint; its features "
                                                        "are computed once into TRAIN_DIR/features/")

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
    p.add_argument("--blank-penalty", type=float, default=0.0,
                   help="subtracted from the CTC blank's log posterior before the argmax or the phone-LM search "
                        "(not before forced alignment); 2.0 was best on the mini corpus (default: 0)")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)

    p = sub.add_parser("merge", help="concatenate label shards into OUT_DIR/SPLIT.phn")
    p.add_argument("out_dir")
    p.add_argument("split")
    p.add_argument("--nshard", type=int, required=True)

    p = sub.add_parser("score", help="frame accuracy and PER against true frame-level phones")
    p.add_argument("--hyp", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--spk", help="one speaker name per utterance (the corpus's SPLIT.spk): adds the figures "
                                 "per speaker (by_speaker)")


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f.read().splitlines()]


def run(args):
    logging.basicConfig(level=logging.INFO, format="[phone-units] %(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return {"train": _train, "label": _label, "merge": _merge, "score": _score}[args.action](args)


def _train(args):
    import numpy as np

    from speechlm.tokenizers import phone_recognizer, phone_training
    from speechlm.tokenizers.lexicon import Lexicon

    if args.checkpoint and args.layer < 1:
        sys.exit("speechlm phone-units train: --checkpoint needs --layer N (1-based Transformer layer)")
    lexicon = Lexicon.load(args.lexicon, args.inventory)
    train_dir = args.train_dir or (args.save[:-3] if args.save.endswith(".pt") else args.save) + ".train"
    featurize = phone_recognizer.make_featurizer(args.checkpoint, args.layer)
    try:
        data = phone_training.recognizer_training_data(
            args.corpus, args.split, lexicon, featurize, args.pseudo, args.valid_split,
            os.path.join(train_dir, "features") if args.checkpoint else None)
    except ValueError as e:
        sys.exit(f"speechlm phone-units train: {e}")
    for pseudo_split, phn, n in data.pseudo:
        print(f"[phone-units] + {n} utterances of {pseudo_split} with targets from {phn}", file=sys.stderr)
    if data.skipped:
        print(f"[phone-units] skipped {len(data.skipped)} utterances with words missing from the lexicon, "
              f"e.g. {args.split}.wrd line {data.skipped[0][0]}: {data.skipped[0][1]}", file=sys.stderr)
    cfg = phone_recognizer.PhoneRecognizerConfig(
        dim=args.dim, layers=args.layers, input_dim=data.input_dim, input_rate=50 if args.checkpoint else 100,
        dropout=args.dropout, feature_checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
        feature_layer=args.layer)
    tcfg = phone_training.TrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, max_updates=args.max_updates,
        time_masks=args.time_masks, channel_masks=args.channel_masks)
    try:
        model, history = phone_training.train_recognizer(data.train, cfg, tcfg, data.valid, train_dir)
    except ValueError as e:
        sys.exit(f"speechlm phone-units train: {e}")
    phone_recognizer.save_recognizer(model, args.save)
    losses = history["losses"]
    k = max(1, len(losses) // 10)
    last = history["epochs"][-1] if history["epochs"] else {}
    scored = (f"; {args.valid_split}: CTC loss {last['valid_loss']:.3f}, greedy PER {100 * last['valid_per']:.1f} %"
              if "valid_loss" in last else "")
    pseudo = f" ({data.transcribed} transcribed)" if args.pseudo else ""
    print(f"[phone-units] {len(losses)} updates on {len(data.train)} utterances{pseudo}; CTC loss "
          f"{np.mean(losses[:k]):.3f} (first 10%) -> {np.mean(losses[-k:]):.3f} (last 10%){scored}; "
          f"-> {args.save}", file=sys.stderr)
    return 0


def _label(args):
    from speechlm.tokenizers.lexicon import Lexicon
    from speechlm.tokenizers.phone_labelling import LabellingError, label_split
    from speechlm.tokenizers.shards import shard_lock, write_sidecar

    lexicon = Lexicon.load(args.lexicon, args.inventory) if args.transcripts else None
    if args.inventory == "kaldi" and not args.transcripts:
        sys.exit("speechlm phone-units label: --inventory kaldi needs --transcripts (word boundaries)")
    name = args.split if args.nshard == 1 else f"{args.split}_{args.rank}_{args.nshard}"
    with shard_lock(os.path.join(args.out_dir, name)):
        try:
            rep = label_split(args.corpus, args.split, args.model, args.out_dir, args.transcripts, lexicon,
                              args.strict, args.phone_lm, args.lm_weight, args.insertion, args.beam,
                              args.nshard, args.rank, args.blank_penalty)
        except LabellingError as e:
            sys.exit(f"speechlm phone-units label: {e}")
        if args.nshard > 1:
            write_sidecar(rep.out[: -len(".phn")], "phone-units label", args.rank, args.nshard,
                          {"manifest": os.path.join(args.corpus, f"{args.split}.tsv"), "model": args.model,
                           "lexicon": args.lexicon, "phone_lm": args.phone_lm},
                          {"inventory": args.inventory, "transcripts": args.transcripts, "strict": args.strict,
                           "lm_weight": args.lm_weight, "insertion": args.insertion, "beam": args.beam,
                           "blank_penalty": args.blank_penalty})
    print(f"[phone-units] {rep.utterances} utterances -> {rep.out} (forced alignment {rep.aligned}, "
          f"phone LM {rep.phone_lm}, posteriors only {rep.posteriors})", file=sys.stderr)
    if rep.too_short:
        print(f"[phone-units] {rep.too_short} utterances too short for their transcript: labelled without "
              "it", file=sys.stderr)
    if rep.oov_lines:
        eg = "; ".join(f"line {n}: {' '.join(w)}" for n, w in rep.oov_lines[:5])
        print(f"[phone-units] {len(rep.oov_lines)} transcripts with words missing from the lexicon, labelled "
              f"without them ({args.split}.wrd {eg})", file=sys.stderr)
    return 0


def _merge(args):
    out = os.path.join(args.out_dir, f"{args.split}.phn")
    try:
        concat_shards(out[: -len(".phn")], args.nshard, ("phn",), "run `speechlm phone-units label` for those ranks")
    except FileNotFoundError as e:
        sys.exit(f"speechlm phone-units merge: {e}")
    print(f"[phone-units] merged {args.nshard} shards -> {out}", file=sys.stderr)
    return 0


def _score(args):
    from speechlm.tokenizers.phone_scoring import score_labels

    hyp, ref = _read_lines(args.hyp), _read_lines(args.ref)
    if len(hyp) != len(ref):
        sys.exit(f"speechlm phone-units score: {args.hyp} has {len(hyp)} lines, {args.ref} has {len(ref)}")
    spk = None
    if args.spk:
        spk = [" ".join(x) for x in _read_lines(args.spk)]
        if len(spk) != len(ref):
            sys.exit(f"speechlm phone-units score: {args.spk} has {len(spk)} lines, {args.ref} has {len(ref)}")
    try:
        print(json.dumps(score_labels(hyp, ref, spk)))
    except ValueError as e:
        sys.exit(f"speechlm phone-units score: {args.hyp} vs {args.ref}: {e}")
    return 0
