"""`speechlm ngram TEXT --out LM.arpa [--order 4] [--phones --lexicon L]`: an n-gram LM as an ARPA file.

Words (default): a word LM for ``speechlm infer decoding.type=kenlm`` (at LibriSpeech scale use KenLM's
``lmplz`` or the official 4-gram ARPA instead: this estimator keeps every count in memory). ``--phones``:
the phone LM of ``speechlm phone-units label --phone-lm`` (each sentence through the lexicon; sentences with
a word missing from it are skipped). See ``speechlm.decoding.ngram`` and ``speechlm.tokenizers.phone_lm``.
"""
import sys


def add_args(parser):
    parser.add_argument("text", metavar="TEXT", help="normalized text, one sentence per line")
    parser.add_argument("--out", required=True, help="ARPA file to write")
    parser.add_argument("--order", type=int, default=4, help="n-gram order (default: 4)")
    parser.add_argument("--phones", action="store_true", help="a phone LM through the lexicon (no SIL)")
    parser.add_argument("--lexicon", help="with --phones: 'WORD PH1 PH2 ...' lexicon (default: CMU dict)")
    parser.add_argument("--max-lines", type=int, default=None, help="use only the first N lines")


def run(args):
    import itertools
    import os

    from speechlm.decoding.ngram import write_arpa
    from speechlm.tokenizers.lexicon import Lexicon, LexiconError, normalize_text
    from speechlm.tokenizers.phone_lm import lm_sentences

    if not os.path.isfile(args.text):
        print(f"speechlm ngram: {args.text}: no such file", file=sys.stderr)
        return 1
    with open(args.text, encoding="utf-8", errors="replace") as f:
        lines = itertools.islice(f, args.max_lines)
        stats = {}
        try:
            if args.phones:
                sents = lm_sentences(lines, Lexicon.load(args.lexicon), stats)
            else:
                sents = (w for w in (normalize_text(line)[0] for line in lines) if w)
            info = write_arpa(sents, args.out, args.order)
        except (LexiconError, ValueError) as e:
            print(f"speechlm ngram: error: {e}", file=sys.stderr)
            return 1
    extra = f"; {stats.get('sentences', 0)} sentences, {stats.get('skipped_oov', 0)} skipped (words not in the lexicon)" if args.phones else ""
    print(f"speechlm ngram: {args.out}: order {info['order']}, n-grams {info['ngrams']}{extra}")
    return 0
