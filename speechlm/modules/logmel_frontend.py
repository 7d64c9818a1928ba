"""A cheap speech front end: Kaldi log-Mel filterbank computed in torch, then one strided convolution.

    waveform (B, S) -> 80 log-Mel at 100 Hz (25 ms povey windows, Kaldi conventions, as
    ``speechlm.data.fbank.compute_fbank``) -> per-utterance mean/variance normalisation over the real
    frames -> Conv1d(80, C, kernel 3, stride 2, padding 1) + GELU -> (B, C, T) at 50 Hz

The output has exactly fairseq's conv front end's frames, ``num_frames_50hz(n) = floor((n - 400) / 320) + 1``
(100 Hz frames ``x + 1`` with ``x = floor((n - 400) / 160)``; the conv gives ``floor(x / 2) + 1``), and its
frame ``i`` is centred on the 100 Hz frame ``2 i``, i.e. on sample ``320 i + 200`` as the conv front end's.
So the same ``.phn``/``.km`` labels, masks and CTC targets work with either front end.

Not the published SpeechLM front end (that is ``MaskedConvFeatureExtractor`` on the raw waveform); this one
is for small models on a CPU, where the raw-waveform convolutions at 3.2 kHz cost most of an update
(README, "Where a CPU update goes"). It has no normalisation statistics over the batch: an utterance gives
the same features alone as in a padded batch.
"""
from typing import Optional

import torch
import torch.nn as nn

from speechlm.data.fbank import NUM_MEL_BINS
from speechlm.data.manifest import FRAME_SHIFT_SAMPLES_100HZ as SHIFT, FRAME_WINDOW_SAMPLES_100HZ as WINDOW, SAMPLE_RATE
from speechlm.modules.conv_frontend import conv_output_lengths

N_FFT = 512
PREEMPH = 0.97
LOW_FREQ = 20.0
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi's log floor


def _mel(f):
    return 1127.0 * torch.log1p(f / 700.0)


def kaldi_mel_banks(num_bins: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                    low_freq: float = LOW_FREQ) -> torch.Tensor:
    """(n_fft // 2 + 1, num_bins) triangular Mel weights as Kaldi's ``MelBanks`` (the Nyquist bin weighs 0)."""
    nyquist = sample_rate / 2.0
    mel_low, mel_high = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(torch.tensor(nyquist, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    m = torch.arange(num_bins, dtype=torch.float64)
    left, centre, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    bins = _mel(torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft)[:, None]  # (n_fft/2, 1)
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    w = torch.clamp(torch.minimum(up, down), min=0.0)
    w = torch.where((bins > left) & (bins < right), w, torch.zeros_like(w))
    return torch.cat([w, torch.zeros(1, num_bins, dtype=torch.float64)]).float()


def frames_100hz(lengths: torch.Tensor) -> torch.Tensor:
    """25 ms / 10 ms frames of ``lengths`` samples (Kaldi ``snip_edges``)."""
    return conv_output_lengths(lengths, [(NUM_MEL_BINS, WINDOW, SHIFT)])


class LogMelFrontEnd(nn.Module):
    """``forward(wav (B, S), lengths (B,) or None) -> features (B, dim, T)``; ``output_lengths(lengths)``."""

    def __init__(self, dim: int, num_mel_bins: int = NUM_MEL_BINS):
        super().__init__()
        self.num_mel_bins = num_mel_bins
        window = torch.hann_window(WINDOW, periodic=False, dtype=torch.float64).pow(0.85).float()  # povey
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(num_mel_bins), persistent=False)
        self.conv = nn.Conv1d(num_mel_bins, dim, kernel_size=3, stride=2, padding=1)
        self.act = nn.GELU()

    def _apply(self, fn, recurse=True):
        # ``model.half()`` / ``.bfloat16()`` cast every buffer; the window and Mel banks stay float32
        # (their device follows the model's)
        window, banks = self.window, self.mel_banks
        super()._apply(fn, recurse)
        self.window, self.mel_banks = window.to(self.window.device), banks.to(self.mel_banks.device)
        return self

    def logmel(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` float waveform in [-1, 1] -> ``(B, T100, bins)`` float32 Kaldi log-Mel fbank (no dither).

        Always float32, whatever the model's dtype: the power spectrum of 16-bit audio spans ~1e10, beyond
        bf16's 8-bit mantissa and fp16's range, so the window and Mel banks are used in float32 too (``_apply``
        keeps them float32 when the model is cast).
        """
        if wav.size(1) < WINDOW:
            return wav.new_zeros(wav.size(0), 0, self.num_mel_bins, dtype=torch.float32)
        x = wav.float() * 32768.0
        frames = x.unfold(1, WINDOW, SHIFT)  # (B, T, 400)
        frames = frames - frames.mean(-1, keepdim=True)  # remove_dc_offset
        prev = torch.cat([frames[..., :1], frames[..., :-1]], -1)
        frames = (frames - PREEMPH * prev) * self.window
        power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)  # (B, T, 257)
        return torch.clamp(power @ self.mel_banks, min=LOG_FLOOR).log()

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        # the stride-2 conv of kernel 3 padded by 1 counts frames as a kernel-1 conv: floor((n - 1) / 2) + 1
        return conv_output_lengths(frames_100hz(lengths), [(NUM_MEL_BINS, 1, 2)])

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = self.logmel(wav)  # (B, T100, bins)
        B, T, _ = feats.shape
        if lengths is None:
            valid = feats.new_ones(B, T, 1)
        else:
            valid = (torch.arange(T, device=feats.device)[None, :] < frames_100hz(lengths)[:, None]).unsqueeze(-1)
            valid = valid.to(feats.dtype)
        count = valid.sum(1, keepdim=True).clamp(min=1.0)
        mean = (feats * valid).sum(1, keepdim=True) / count
        var = (((feats - mean) * valid) ** 2).sum(1, keepdim=True) / count
        feats = (feats - mean) / torch.sqrt(var + 1e-5) * valid  # padded frames are zero, as the conv's padding
        # normalised in float32, then into the conv's dtype (bf16/fp16 when the model is half precision)
        return self.act(self.conv(feats.transpose(1, 2).to(self.conv.weight.dtype)))

