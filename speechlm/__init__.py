"""speechlm: a fairseq plugin for speech-text joint pre-training (SpeechLM and SPLAT).

``import speechlm`` (or ``common.user_dir=speechlm``) calls ``register()``: every task, model and
criterion is registered with fairseq and fairseq checkpoints load safely under torch >= 2.6 (see
``speechlm.checkpoint``). The one exception is the ``speechlm`` console script: its verbs import only
what they need (``speechlm --help`` must not pay for torch and fairseq), and ``speechlm.cli.main``
calls ``register()`` for the verbs that load fairseq models.
"""
import os
import sys

__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Register every task, model and criterion with fairseq and make its checkpoints load safely.
    Idempotent."""
    global _registered
    if _registered:
        return
    _registered = True
    from speechlm import checkpoint, logs

    logs.quiet_known_warnings()
    if os.environ.get(logs.LOG_FILE_ENV):
        logs.route()  # inside fairseq-hydra-train: chatter to the file, progress to the console
    checkpoint.install()  # allow-listed loading, atomic saves, resume, safe config strings
    from speechlm import errors

    errors.install()  # user errors print without a traceback (SPEECHLM_DEBUG=1 shows it)
    from speechlm import preemption

    preemption.install()  # inside fairseq-hydra-train: SIGTERM/SIGUSR1 save checkpoint_last.pt; clean disk errors
    from speechlm import resume

    resume.install()  # a resume with another config or dictionary names what differs
    from speechlm import criterions, models, tasks  # noqa: F401  (registration side effects)


def _in_console_script() -> bool:
    """True while the ``speechlm`` console script or ``python -m speechlm`` imports this package
    (``-m`` is ``sys.argv[0]`` while Python looks the module up)."""
    main = sys.modules.get("__main__")
    return os.path.basename(getattr(main, "__file__", None) or "") == "speechlm" or sys.argv[:1] == ["-m"]


if not _in_console_script():
    register()
