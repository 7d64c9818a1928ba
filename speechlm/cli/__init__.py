"""``speechlm VERB``: argument parsing and messages; the work is in the library modules.

``main.VERBS`` maps each verb to its module (``add_args(parser)``, ``run(args)``); a verb's module is
imported only when it is called, so ``speechlm --help`` imports neither torch nor fairseq.
"""
