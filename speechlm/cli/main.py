"""`speechlm <verb>`: every step that is not training.

Each verb lives in its own module under ``speechlm.cli`` and exposes ``add_args(parser)`` and
``run(args) -> int | None``. Modules are imported only when their verb is called, so a verb's heavy
dependencies (torch, fairseq, transformers) cost nothing to the others; ``--help`` imports no torch.
The verbs in ``FAIRSEQ_VERBS`` load fairseq models: the plugin is registered (``speechlm.register()``)
after their arguments are parsed.
"""
import argparse
import importlib
import sys

# verb -> (module, one-line help)
VERBS = {
    "corpus": ("speechlm.cli.corpus", "build (mini) or validate (check) a corpus directory"),
    "manifest": ("speechlm.cli.manifest", "write fairseq audio manifests for a folder of audio"),
    "labels": ("speechlm.cli.labels", "transcripts (LibriSpeech *.trans.txt) -> SPLIT.wrd, SPLIT.ltr, dict.ltr.txt"),
    "ngram": ("speechlm.cli.ngram", "n-gram LM (words, or phones through a lexicon) as an ARPA file"),
    "phonemize": ("speechlm.cli.phonemize", "text -> upsampled phoneme units (+ letters)"),
    "binarize": ("speechlm.cli.binarize", "units + letters -> fairseq indexed datasets"),
    "features": ("speechlm.cli.features", "dump MFCC / checkpoint-layer features for k-means"),
    "kmeans": ("speechlm.cli.kmeans", "learn / apply k-means hidden units"),
    "phone-units": ("speechlm.cli.phone_units", "speech -> frame-level phone units"),
    "t2u": ("speechlm.cli.t2u", "text -> hidden units with a trained text_to_unit model"),
    "infer": ("speechlm.cli.infer", "batched CTC decoding of a fine-tuned model, with WER"),
    "analyze": ("speechlm.cli.analyze", "analyses of a pre-trained model (shared-space: speech vs text per layer)"),
    "st": ("speechlm.cli.st", "speech-translation data preparation"),
    "splat": ("speechlm.cli.splat", "SPLAT data, BERT adaptation and analysis"),
    "convert": ("speechlm.cli.convert", "convert a released SpeechLM checkpoint to this plugin's layout"),
    "userdir": ("speechlm.cli.userdir", "print the path to pass as common.user_dir / --user-dir"),
}
FAIRSEQ_VERBS = {"phone-units", "t2u", "infer", "splat", "convert", "analyze"}


def build_parser():
    parser = argparse.ArgumentParser(prog="speechlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    verb, rest = argv[0], argv[1:]
    module_name, help_ = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            sys.exit(f"speechlm {verb}: not available in this version ({module_name} is missing)")
        raise
    parser = argparse.ArgumentParser(prog=f"speechlm {verb}", description=help_)
    module.add_args(parser)
    args = parser.parse_args(rest)
    from speechlm import logs
    from speechlm.errors import debug, format_error, message, user_facing

    logs.route(console_format=f"[{verb}] %(message)s")  # $SPEECHLM_LOG_FILE: chatter to that file
    try:
        if verb in FAIRSEQ_VERBS:
            import speechlm

            speechlm.register()
        return module.run(args) or 0
    except (ValueError, OSError) as e:
        # bad input (UserError) or a disk the user must fix (read-only, full, a file in the way: OSError):
        # the message says where and what to do; no traceback. Other errors are bugs: traceback.
        if debug() or not user_facing(e):
            raise
        print(format_error(message(e), f"speechlm {verb}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
