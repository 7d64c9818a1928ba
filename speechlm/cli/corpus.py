"""`speechlm corpus mini OUT_DIR` builds the embedded synthesized corpus; `speechlm corpus check DIR`
validates a corpus directory (manifests, audio, label files, alignments, held-out splits)."""
import os
import sys
import time


def add_args(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    mini = sub.add_parser(
        "mini",
        help="synthesize the embedded English mini corpus with true phone alignments",
        description="Speak KJV bible sentences with espeak-ng and flite voices into fairseq-style "
        "splits (train, train_paired, valid, test, test_other) plus unpaired text. "
        "Idempotent: re-running with the same arguments does nothing.",
    )
    mini.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the corpus into")
    mini.add_argument("--hours", type=float, default=1.0,
                      help="hours of audio over all splits (default: 1.0; 0.05 for a quick test)")
    mini.add_argument("--seed", type=int, default=1, help="selects sentences and voices (default: 1)")
    mini.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                      help="synthesis worker processes (default: CPU count); results do not depend on it")
    mini.add_argument("--layout", choices=("fairseq", "librispeech"), default="fairseq",
                      help="fairseq: manifests and label files in OUT_DIR (default); librispeech: a miniature "
                           "LibriSpeech download, OUT_DIR/LibriSpeech/{train-clean-100,...}/SPK/CHAPTER/*.flac + "
                           "*.trans.txt, librispeech-lm-norm.txt and librispeech-lexicon.txt (the fairseq "
                           "corpus it is made from, with true alignments, stays in OUT_DIR/mini)")
    check = sub.add_parser("check", help="validate a corpus directory",
                           description="Check every manifest row, label file, alignment and the "
                           "held-out splits; print every error with its file and line.")
    check.add_argument("dir", metavar="DIR", help="corpus directory (with {split}.tsv manifests)")
    check.add_argument("--no-audio", action="store_true",
                       help="skip opening the audio files (only labels and splits are checked)")


def run(args):
    from speechlm.corpora.mini import build_mini_corpus, check_corpus

    if args.action == "mini":
        if args.hours <= 0:
            print("speechlm corpus mini: --hours must be > 0", file=sys.stderr)
            return 2
        try:
            if args.layout == "librispeech":
                from speechlm.corpora.librispeech import write_librispeech_tree

                src = os.path.join(args.out_dir, "mini")
                build_mini_corpus(src, hours=args.hours, seed=args.seed, jobs=args.jobs)
                write_librispeech_tree(src, args.out_dir)
            else:
                build_mini_corpus(args.out_dir, hours=args.hours, seed=args.seed, jobs=args.jobs)
        except (ValueError, RuntimeError) as e:  # OSErrors (disk full, read-only) go to speechlm.cli.main
            print(f"speechlm corpus mini: error: {e}", file=sys.stderr)
            return 1
        return 0
    t0 = time.time()
    errors, summary = check_corpus(args.dir, check_audio=not args.no_audio)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"speechlm corpus check: {len(errors)} error(s) in {os.path.abspath(args.dir)}",
              file=sys.stderr)
        return 1
    print(f"{summary} ({time.time() - t0:.1f} s)")
    return 0
