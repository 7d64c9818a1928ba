"""fairseq's wav2vec2/HuBERT conv front end, made exact under padding.

``ConvFeatureExtractionModel`` in ``extractor_mode="default"`` (the Base models) normalises its first
conv layer with a ``GroupNorm(512, 512)``: every channel is normalised over *time*. In a padded batch
the padded zeros then enter every real frame's statistics, so an utterance gives a different output
alone than in a batch. ``MaskedConvFeatureExtractor`` subclasses fairseq's module (same parameters,
same state-dict keys, so HuBERT/SpeechLM checkpoints load unchanged) and computes that first norm
over the real samples only. Without padding it is numerically the same as fairseq's forward.
"""
import ast
from typing import List, Optional, Tuple

import torch
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel


def conv_output_lengths(lengths: torch.Tensor, conv_layers: List[Tuple[int, int, int]]) -> torch.Tensor:
    """Frames each conv layer stack produces for ``lengths`` input samples (no padding, floor)."""
    out = lengths.clone()
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


class MaskedConvFeatureExtractor(ConvFeatureExtractionModel):
    """``forward(wav (B, S), lengths (B,) or None) -> features (B, C, T)``."""

    def __init__(self, conv_layers, dropout=0.0, mode="default", conv_bias=False):
        super().__init__(conv_layers, dropout=dropout, mode=mode, conv_bias=conv_bias)
        self.conv_spec = list(conv_layers)
        self.mode = mode

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if lengths is None or self.mode != "default":
            return super().forward(x)
        x = x.unsqueeze(1)
        first = self.conv_layers[0]  # Sequential(conv, dropout, Fp32GroupNorm, GELU)
        conv, dropout, norm, act = first[0], first[1], first[2], first[3]
        x = dropout(conv(x))
        n_valid = conv_output_lengths(lengths, self.conv_spec[:1])  # (B,)
        valid = (torch.arange(x.size(-1), device=x.device)[None, :] < n_valid[:, None]).unsqueeze(1)
        xf = x.float()
        count = n_valid.clamp(min=1).to(xf.dtype).view(-1, 1, 1)
        mean = (xf * valid).sum(-1, keepdim=True) / count
        var = (((xf - mean) * valid) ** 2).sum(-1, keepdim=True) / count
        xf = (xf - mean) / torch.sqrt(var + norm.eps)
        if norm.affine:
            xf = xf * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)
        x = act(xf.type_as(x))
        for layer in self.conv_layers[1:]:
            x = layer(x)
        return x


def _eval_spec(node, spec: str):
    """Evaluate one node of a conv spec: list/tuple displays, ints, ``a + b``, ``a * n``; nothing else."""
    if isinstance(node, ast.Expression):
        return _eval_spec(node.body, spec)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_spec(e, spec) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _eval_spec(node.left, spec), _eval_spec(node.right, spec)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int and 0 <= right <= 1000:
            return left * right
        if isinstance(node.op, ast.Mult) and type(left) is int and isinstance(right, list) and 0 <= left <= 1000:
            return right * left
    raise ValueError(
        f"conv_feature_layers={spec!r}: only lists of (dim, kernel, stride) int tuples joined by + and "
        f"repeated by * n are allowed (got {ast.dump(node)[:60]}...)"
    )


def parse_conv_layers(spec: str) -> List[Tuple[int, int, int]]:
    """``"[(512,10,5)] + [(512,3,2)] * 4"`` -> list of (dim, kernel, stride); the fairseq notation.

    Parsed by a tiny grammar over Python's ``ast`` (lists, tuples, ints, ``+``, ``*``), never ``eval``.
    """
    if not isinstance(spec, str) or len(spec) > 2000:
        raise ValueError(f"conv_feature_layers={spec!r}: expected a string like \"[(512,10,5)] + [(512,3,2)] * 4\"")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"conv_feature_layers={spec!r} is not a list of (dim, kernel, stride): {e.msg}") from None
    layers = _eval_spec(tree, spec)
    if not isinstance(layers, list) or not layers or not all(
        isinstance(t, tuple) and len(t) == 3 and all(type(v) is int and v > 0 for v in t) for t in layers
    ):
        raise ValueError(f"conv_feature_layers={spec!r}: need a non-empty list of (dim, kernel, stride), all > 0")
    return layers
