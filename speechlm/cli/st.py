"""`speechlm st prepare|baseline`: speech-translation data for fairseq's ``speech_to_text`` task.

    speechlm st prepare CORPUS OUT --target-ext de            # real translations {split}.de
    speechlm st prepare CORPUS OUT --synthetic cipherese      # mini recipe (synthetic language)
    speechlm st baseline OUT --split test                     # BLEU of copying the source
    speechlm st compare OUT EXP --row NAME=CKPT ... [--seeds 1 2 3]  # fine-tune + decode each encoder

then train ``speechlm_st`` (``examples/mini/config/st``, ``examples/covost2/config``) and decode with
``fairseq-generate OUT --user-dir speechlm --task speech_to_text --path CKPT --beam 5
--scoring sacrebleu --config-yaml config.yaml --gen-subset test``.
"""


def add_args(parser):
    from speechlm.cli import st_compare
    from speechlm.corpora.st_synthetic import TARGET_LANGUAGES

    sub = parser.add_subparsers(dest="st_verb", metavar="{prepare,baseline,compare}", required=True)
    p = sub.add_parser("prepare", help="manifests + targets -> speech_to_text TSV, char spm, config")
    p.add_argument("data", help="directory with {split}.tsv manifests and their label files")
    p.add_argument("out", help="output directory (the DATA argument of fairseq's speech_to_text)")
    p.add_argument("--splits", default="train,valid,test",
                   help="comma-separated splits to convert (default: %(default)s)")
    p.add_argument("--train-split", default=None,
                   help="split whose targets train the SentencePiece model (default: first split)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-ext",
                   help="real translations: read targets from {split}.EXT, one line per row")
    g.add_argument("--synthetic", choices=sorted(TARGET_LANGUAGES),
                   help="derive a SYNTHETIC target language from the transcripts (offline demo; "
                        "cipherese-monotonic: without the word swaps; see speechlm/corpora/st_synthetic.py)")
    p.add_argument("--source-ext", default="wrd",
                   help="transcripts, kept as src_text (default: %(default)s)")
    b = sub.add_parser("baseline", help="sacrebleu BLEU of copying the source as the translation")
    b.add_argument("data", help="directory written by `speechlm st prepare`")
    b.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    c = sub.add_parser("compare", help="ST fine-tuning from each encoder (rows x seeds), decoded and scored: "
                                       "results.json, a table, a PNG")
    st_compare.add_args(c)


def run(args):
    import os

    from speechlm.corpora.st import copy_source_bleu, prepare_st_data

    if args.st_verb == "compare":
        from speechlm.cli import st_compare

        return st_compare.run(args)
    if args.st_verb == "prepare":
        splits = [s for s in args.splits.split(",") if s]
        counts = prepare_st_data(
            args.data, args.out, splits, args.train_split or splits[0],
            target_ext=args.target_ext, synthetic=args.synthetic, source_ext=args.source_ext,
        )
        for split, n in counts.items():
            print(f"{split}\t{n} utterances\t{os.path.join(args.out, split + '.tsv')}")
        print(f"config\t{os.path.join(args.out, 'config.yaml')}")
        return 0
    tsv = os.path.join(args.data, f"{args.split}.tsv")
    if not os.path.isfile(tsv):
        raise SystemExit(f"{tsv}: not found; run `speechlm st prepare` first")
    bleu = copy_source_bleu(tsv)
    print(f"copy-the-source baseline on {args.split}: {bleu}")
    return 0
