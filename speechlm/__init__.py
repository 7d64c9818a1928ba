"""speechlm: a fairseq plugin for speech-text joint pre-training (SpeechLM and SPLAT).

``import speechlm`` (or ``common.user_dir=speechlm``) registers every task, model and criterion with
fairseq and makes fairseq checkpoints load safely under torch >= 2.6 (see ``speechlm.checkpoint``).
"""
__version__ = "0.1.0"

from speechlm import checkpoint as _checkpoint

_checkpoint.install()

from speechlm import criterions, models, tasks  # noqa: E402,F401  (registration side effects)
from speechlm import distributed as _distributed  # noqa: E402,F401  (CPU/gloo shims, see module)
