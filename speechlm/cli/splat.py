"""`speechlm splat SUBCOMMAND`: SPLAT data preparation, BERT adaptation and analysis.

    speechlm splat features DIR --splits train valid        # fbank + per-speaker cmvn.npz
    speechlm splat slu-corpus OUT                           # synthesized intent corpus (+ features)
    speechlm splat qa-corpus OUT                            # synthesized spoken-QA corpus (+ features)
    speechlm splat adapt-bert BERT DIR --split train_paired --out OUT   # MLM on paired transcripts
    speechlm splat geometry CKPT SPLIT --data DIR --bert BERT            # S_avg and S_closest
"""
import os
import sys


def add_args(parser):
    sub = parser.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("features", help="80-d log-Mel fbank and per-speaker CMVN statistics")
    p.add_argument("data", help="directory with {split}.tsv and {split}.spk")
    p.add_argument("--splits", nargs="+", required=True,
                   help="splits to extract; speaker statistics are computed over all of them")

    for name, what in (("slu-corpus", "intent"), ("qa-corpus", "spoken-QA")):
        p = sub.add_parser(name, help=f"synthesize the mini {what} corpus")
        p.add_argument("out", help="output directory (created)")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--force", action="store_true", help="rebuild even if OUT/done exists")

    p = sub.add_parser("adapt-bert", help="MLM adaptation of a BERT on the paired transcripts")
    p.add_argument("bert", help="local BERT directory or packaged:all-minilm-l6-v2")
    p.add_argument("data", help="corpus directory")
    p.add_argument("--split", default="train_paired", help="split whose transcripts to adapt on")
    p.add_argument("--ext", default="wrd", help="transcript extension")
    p.add_argument("--out", required=True, help="output directory (save_pretrained format)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=1)

    p = sub.add_parser("geometry", help="S_avg and S_closest of s1 (SPLAT Table 4)")
    p.add_argument("ckpt", help="checkpoint holding a SPLAT speech module")
    p.add_argument("split", help="split (needs features and transcripts)")
    p.add_argument("--data", help="corpus directory (default: the checkpoint's task.data)")
    p.add_argument("--bert", help="language module for the text [CLS] (default: the checkpoint's "
                                  "task.bert_path)")
    p.add_argument("--ext", default="wrd", help="transcript extension")
    p.add_argument("--text-pooling", choices=("cls", "mean"),
                   help="text sentence vector that picks the neighbours (default: the checkpoint's "
                        "task.text_pooling, else cls)")


def _from_checkpoint_task(ckpt: str, key: str):
    from speechlm.checkpoint import read_checkpoint

    task = read_checkpoint(ckpt)["cfg"]["task"]
    return task.get(key) if key in task else None


def run(args):
    if args.cmd == "features":
        from speechlm.data.fbank import extract_features

        stats = extract_features(args.data, args.splits)
        print(f"features for {' '.join(args.splits)}; statistics of {len(stats['speakers'])} speakers "
              f"in {os.path.join(args.data, 'cmvn.npz')}")
    elif args.cmd in ("slu-corpus", "qa-corpus"):
        from speechlm.corpora import slu

        done = os.path.join(args.out, "done")
        if os.path.exists(done) and not args.force:
            print(f"{args.out}: already built ({done} exists); --force rebuilds")
            return 0
        os.makedirs(args.out, exist_ok=True)
        build = slu.build_intent_corpus if args.cmd == "slu-corpus" else slu.build_qa_corpus
        counts = build(args.out, seed=args.seed)
        open(done, "w").close()
        print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    elif args.cmd == "adapt-bert":
        from speechlm.data.splat_text import read_transcripts
        from speechlm.splat.bert import adapt_mlm

        texts = read_transcripts(args.data, args.split, args.ext)
        losses = adapt_mlm(args.bert, texts, args.out, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed)
        k = max(1, len(losses) // 10)
        print(f"MLM loss {sum(losses[:k]) / k:.3f} (first {k} steps) -> {sum(losses[-k:]) / k:.3f} "
              f"(last {k}); saved to {args.out}")
    elif args.cmd == "geometry":
        from speechlm.splat.geometry import checkpoint_geometry

        data = args.data or _from_checkpoint_task(args.ckpt, "data")
        bert = args.bert or _from_checkpoint_task(args.ckpt, "bert_path")
        if not data or not bert:
            sys.exit(f"speechlm splat geometry: {args.ckpt} does not name "
                     f"{'task.data' if not data else 'task.bert_path'}; pass --data / --bert")
        pooling = args.text_pooling or _from_checkpoint_task(args.ckpt, "text_pooling") or "cls"
        g = checkpoint_geometry(args.ckpt, data, args.split, bert, args.ext, pooling)
        print(f"text t1 ({pooling}) on {args.split}: S_avg {g['T_avg']:.3f} S_closest {g['T_closest']:.3f} "
              f"(gap {g['T_closest'] - g['T_avg']:+.3f}: what an exact copy of t1 as s1 would show)")
        print(f"{'checkpoint':<40} {'split':<12} {'S_avg':>7} {'S_closest':>9}")
        print(f"{os.path.basename(os.path.dirname(args.ckpt)) + '/' + os.path.basename(args.ckpt):<40} "
              f"{args.split:<12} {g['S_avg']:7.3f} {g['S_closest']:9.3f}")
    return 0
