"""The UCTC head of the published SpeechLM, also the CTC head of its ASR fine-tuning.

    h (B,T,D) -> Conv1d(D, D, kernel 2, stride 1, padding 1, no bias) -> Dropout(0.1) -> LayerNorm
              -> GELU -> Linear(D, letters) -> logits (B,T,letters)   (50 Hz, one output per frame)

With padding 1 the conv makes T + 1 outputs, output t mixing frames t - 1 and t; the published model
keeps the input padding mask, so only the first T are ever scored: those are the ones returned.

Initialisation: the blank logit starts at ``log((V - 1) * BLANK_PRIOR / (1 - BLANK_PRIOR))``, i.e. blank
probability ``BLANK_PRIOR`` against uniform letters. From a zero bias the first CTC gradients (about
11 nats per letter on upsampled text) all say "more blank, everywhere"; the fastest way there is to
make the Shared Transformer's output the same at every frame, and the tiny model did exactly that
within 25 updates and never left the unigram plateau (measured: frame-to-frame spread of its output
fell from 0.96 to 0.03 of its total spread; text letter error 100 % after 600 updates). Starting at
the blank level it keeps its input (0.80 after 200 updates). Loaded weights replace this, so released
checkpoints are unaffected.
"""
import math

import torch
import torch.nn as nn
from fairseq.modules import LayerNorm

UCTC_CONV_KERNEL = 2  # the published models' text_ctc_conv_kernel (stride kernel // 2 = 1)
UCTC_DROPOUT = 0.1  # fixed in the published head
BLANK = 0  # fairseq dictionaries put <s> first; the CTC criteria use it as the blank
BLANK_PRIOR = 0.8  # initial blank probability: upsampled text has ~4.5 unit frames per letter


class UCTCHead(nn.Module):
    """``forward(h (B,T,D)) -> logits (B,T,V)``; padding frames of ``h`` should be zero."""

    def __init__(self, embed_dim: int, num_letters: int):
        super().__init__()
        k = UCTC_CONV_KERNEL
        self.conv = nn.Conv1d(embed_dim, embed_dim, k, stride=k // 2, padding=k // 2, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.dropout = nn.Dropout(UCTC_DROPOUT)
        self.layer_norm = LayerNorm(embed_dim)
        self.activation = nn.GELU()
        self.proj = nn.Linear(embed_dim, num_letters)
        with torch.no_grad():
            self.proj.bias.zero_()
            if num_letters > 1:
                self.proj.bias[BLANK] = math.log((num_letters - 1) * BLANK_PRIOR / (1 - BLANK_PRIOR))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        T = h.size(1)
        y = self.dropout(self.conv(h.transpose(1, 2)))[:, :, :T].transpose(1, 2)
        return self.proj(self.activation(self.layer_norm(y)))
