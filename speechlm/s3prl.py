"""An s3prl upstream for SpeechLM checkpoints: ``UpstreamExpert(ckpt)``.

s3prl's interface (its ``UpstreamBase``, as its ``hubert_local`` / ``wav2vec2_local`` upstreams): a list
of 1-D 16 kHz waveforms in, ``{"hidden_states": [L + 1 tensors (B, T, D)]}`` out -- the input of the first
Speech Transformer layer, then the output of each of the L layers (the entries of
``extract_features(..., output_layer=L, ret_layer_results=True)``, as s3prl's HuBERT upstream lists a
model's layers) -- and ``get_downsample_rates() == 320`` (50 Hz frames). The checkpoint's
``task.normalize`` is applied here: waveforms are layer-normed one by one (the released Large models),
as the published README does before ``extract_features``.

``ckpt``: a ``speechlm`` checkpoint of this plugin (pre-trained here, or a released one after
``speechlm convert``). With s3prl installed, the expert is an ``s3prl.upstream.interfaces.UpstreamBase``
(its ``Featurizer`` takes it); without s3prl it is a plain ``nn.Module`` with the same calls.
"""
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from speechlm.data.manifest import SAMPLE_RATE

try:  # s3prl installs without torchaudio (--no-deps); its interfaces module needs only torch
    from s3prl.upstream.interfaces import UpstreamBase
except ImportError:  # pragma: no cover - s3prl is optional
    UpstreamBase = nn.Module

# The conv front end's stride (and the log-Mel front end's 10 ms x 2): one frame per 20 ms
DOWNSAMPLE_RATE = 320


def checkpoint_normalize(path: str) -> bool:
    """``cfg.task.normalize`` of a ``speechlm`` checkpoint (False when absent)."""
    from speechlm.checkpoint import read_checkpoint

    task = read_checkpoint(path)["cfg"].get("task") or {}
    return bool(task.get("normalize", False) or False)


class UpstreamExpert(UpstreamBase):
    """``UpstreamExpert(ckpt)``: every layer of a SpeechLM checkpoint for s3prl, frozen in eval mode."""

    def __init__(self, ckpt, normalize: bool = False, **kwargs):
        """``ckpt``: a ``speechlm`` checkpoint path (its ``task.normalize`` is used), or a ``SpeechLMModel``
        already built (e.g. random weights; ``normalize`` then says whether waveforms are layer-normed)."""
        super().__init__(**kwargs)
        from speechlm.models.speechlm import SpeechLMModel

        if isinstance(ckpt, SpeechLMModel):
            self.model, self.normalize = ckpt, bool(normalize)
        else:
            self.model = SpeechLMModel.from_checkpoint(ckpt)
            self.normalize = checkpoint_normalize(ckpt)
        self.model.eval()
        self.num_layers = len(self.model.speech_encoder.layers) + len(self.model.shared_encoder.layers)

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """``wavs``: 1-D float tensors at 16 kHz -> ``{"hidden_states": [L + 1 of (B, T, D)], "last_hidden_state"}``.

        Frames beyond an utterance's own length are padding (s3prl's ``Featurizer`` trims them by
        ``len(wav) / 320``).
        """
        if not wavs or any(w.dim() != 1 for w in wavs):
            raise ValueError(f"UpstreamExpert: expected a list of 1-D {SAMPLE_RATE} Hz waveforms")
        if self.normalize:
            wavs = [F.layer_norm(w, w.shape) for w in wavs]
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = pad_sequence(wavs, batch_first=True)
        padding = torch.arange(padded.size(1), device=padded.device)[None, :] >= lengths[:, None]
        states, _ = self.model.layer_states(padded, padding if padding.any() else None)
        return {"hidden_states": states, "last_hidden_state": states[-1]}
