"""A frozen module and the cache of its outputs (SPLAT's language module in alignment and spoken QA)."""
import torch


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients for every parameter of ``model`` (returned)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenOutputCache:
    """Outputs of a FROZEN language module, computed once per distinct token sequence.

    Alignment and spoken QA read the same transcripts / questions every epoch; a frozen BERT gives the
    same outputs each time, so only sequences not seen before are run. ``__call__(lm, tokens, pad)``:
    tokens (B, L) padded with ``pad`` -> (B, L, H) ``last_hidden_state`` (zeros at padding).
    """

    def __init__(self):
        self.store = {}

    @torch.no_grad()
    def __call__(self, lm: torch.nn.Module, tokens: torch.Tensor, pad: int) -> torch.Tensor:
        lengths = tokens.ne(pad).sum(1).tolist()
        keys = [tuple(row[:n]) for row, n in zip(tokens.tolist(), lengths)]
        new = sorted({k for k in keys if k not in self.store})
        if new:
            L = max(len(k) for k in new)
            ids = torch.full((len(new), L), pad, dtype=torch.long)
            for i, k in enumerate(new):
                ids[i, : len(k)] = torch.tensor(k)
            ids = ids.to(tokens.device)
            hidden = lm(input_ids=ids, attention_mask=ids.ne(pad).long()).last_hidden_state
            for i, k in enumerate(new):
                self.store[k] = hidden[i, : len(k)]
        H = self.store[keys[0]].shape[-1]
        out = self.store[keys[0]].new_zeros(tokens.shape[0], tokens.shape[1], H)
        for i, k in enumerate(keys):
            out[i, : len(k)] = self.store[k]
        return out
