"""`speechlm labels SPLIT.tsv --transcripts DIR_OR_FILE [--dict dict.ltr.txt]`: transcripts -> label files.

Writes ``SPLIT.wrd``, ``SPLIT.ltr`` and ``dict.ltr.txt`` beside the manifest, one line per manifest row, from
the LibriSpeech ``*.trans.txt`` files under DIR or from an ``utt-id text`` file (id, then a space or a tab,
then the text; fairseq's ``libri_labels.py``, with checks). An existing ``dict.ltr.txt`` beside the manifest
is reused, never rewritten (a model trained with it decodes with it): a transcript it cannot spell is
refused, a ``--dict`` that differs from it too; ``--dict-out PATH`` writes the dictionary elsewhere. See
``speechlm.corpora.librispeech.write_labels``.
"""
import sys


def add_args(parser):
    parser.add_argument("tsv", metavar="SPLIT.tsv", help="fairseq audio manifest")
    parser.add_argument("--transcripts", required=True, metavar="DIR_OR_FILE",
                        help="LibriSpeech folder searched for *.trans.txt, or one 'utt-id text' file")
    parser.add_argument("--dict", dest="letter_dict", metavar="F",
                        help="letter dictionary to reuse (e.g. train's dict.ltr.txt); every transcript "
                             "character must be in it (default: the dict.ltr.txt beside the manifest if there is "
                             "one, else A-Z and apostrophe, and dict.ltr.txt written)")
    parser.add_argument("--dict-out", metavar="F",
                        help="write the letter dictionary here instead of beside the manifest (the one there, "
                             "if any, is left alone)")


def run(args):
    from speechlm.corpora.librispeech import TranscriptError, write_labels

    try:
        info = write_labels(args.tsv, args.transcripts, args.letter_dict, args.dict_out)
    except (TranscriptError, ValueError, FileNotFoundError) as e:
        print(f"speechlm labels: error: {e}", file=sys.stderr)
        return 1
    print(f"speechlm labels: {info['utterances']} utterances, {info['words']} words -> {info['wrd']}, "
          f"{info['ltr']}, {info['dict']}")
    return 0
