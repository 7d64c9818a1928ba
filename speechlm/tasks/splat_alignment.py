"""Task ``splat_alignment``: align the SPLAT speech module with a frozen BERT on paired speech/text.

Data: ``{split}.tsv .spk`` + fbank features (``speechlm splat features``) + ``{split}.wrd`` transcripts.
The language module is loaded here from ``bert_path`` (a local directory, or ``packaged:all-minilm-l6-v2``)
and kept OUT of the model: it is frozen (eval mode, no gradient), never saved in checkpoints and never
seen by the optimizer. The model (``splat_speech``) gets ``text_embed_dim`` = BERT's width, so it adds a
learned projection only when the widths differ. idf weights for ``alignment=tok`` are computed once from
the ``idf_split`` transcripts.
"""
import logging
from dataclasses import dataclass, field

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from omegaconf import MISSING, open_dict

from speechlm.data.splat_text import read_transcripts
from speechlm.modules.frozen import FrozenOutputCache
from speechlm.splat.bert import TEXT_POOLING_CHOICES, BertBundle, pool_sentence, tokenize
from speechlm.splat.idf import compute_idf
from speechlm.splat.targets import SentenceTarget
from speechlm.tasks.splat_pretraining import SplatFbankTask, SplatFbankTaskConfig

logger = logging.getLogger(__name__)


@dataclass
class SplatAlignmentConfig(SplatFbankTaskConfig):
    bert_path: str = field(
        default=MISSING,
        metadata={"help": "local Hugging Face BERT directory (optionally MLM-adapted by `speechlm splat "
                          "adapt-bert`), or packaged:all-minilm-l6-v2"},
    )
    transcript_ext: str = field(default="wrd", metadata={"help": "transcript file extension ({split}.EXT)"})
    idf_split: str = field(default="train_paired", metadata={"help": "split whose transcripts give the idf"})
    max_text_tokens: int = field(default=128, metadata={"help": "WordPiece tokens kept per transcript"})
    center_text: bool = field(
        default=False,
        metadata={"help": "L_seq aligns s1 with t1 minus the mean t1 of the idf_split transcripts: the "
                          "component every sentence shares is not a target (regressing onto it pulls every "
                          "s1 to one point)"},
    )
    text_whiten: int = field(
        default=0,
        metadata={"help": "k > 0: L_seq's target keeps the top k principal directions of the centred t1 of the "
                          "idf_split transcripts, each scaled to unit variance (PCA whitening); 0: off"},
    )
    text_pooling: ChoiceEnum(TEXT_POOLING_CHOICES) = field(
        default="cls",
        metadata={"help": "the sentence vector t1 that L_seq aligns s1 with: cls = BERT's [CLS] output (the "
                          "paper); mean = the average token output, the trained output of a "
                          "sentence-embedding model (all-MiniLM-L6-v2), whose [CLS] is nearly constant"},
    )


@register_task("splat_alignment", dataclass=SplatAlignmentConfig)
class SplatAlignmentTask(SplatFbankTask):
    def __init__(self, cfg: SplatAlignmentConfig):
        super().__init__(cfg)
        bundle = BertBundle(cfg.bert_path)
        self.tokenizer = bundle.get_tokenizer()
        # a plain attribute of the task, not a submodule of the model or criterion: frozen, unsaved
        self.language_module = bundle.get_model(frozen=True)
        self.text_cache = FrozenOutputCache()  # the transcripts repeat every epoch
        self.text_embed_dim = self.language_module.config.hidden_size
        tok = self.tokenizer
        ids = tokenize(tok, read_transcripts(cfg.data, cfg.idf_split, cfg.transcript_ext), cfg.max_text_tokens)
        self.idf = compute_idf(ids, len(tok), [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
        self.target = SentenceTarget()
        if cfg.center_text or cfg.text_whiten:
            self.target = SentenceTarget.fit(self.pooled_sentence_vectors(ids), cfg.center_text, cfg.text_whiten)
        logger.info(f"language module {cfg.bert_path}: width {self.text_embed_dim}, frozen; "
                    f"idf over {len(ids)} transcripts of {cfg.idf_split}")

    def extras(self, split, num_rows):
        texts = read_transcripts(self.cfg.data, split, self.cfg.transcript_ext)
        ids = tokenize(self.tokenizer, texts, self.cfg.max_text_tokens)
        return {"text_tokens": (ids, self.tokenizer.pad_token_id)}

    def build_model(self, cfg, from_checkpoint=False):
        with open_dict(cfg):
            cfg.text_embed_dim = self.text_embed_dim
        return super().build_model(cfg, from_checkpoint)

    def text_representations(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """BERT outputs (B, L, H) for padded token ids, without gradient."""
        lm = self.language_module
        if next(lm.parameters()).device != text_tokens.device:
            lm.to(text_tokens.device)
        lm.eval()
        return self.text_cache(lm, text_tokens, self.tokenizer.pad_token_id)

    def sentence_vectors(self, text_tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """t1 (B, H) of ``text_representations`` outputs ``hidden`` (B, L, H), by ``text_pooling``; minus
        the mean t1 of the ``idf_split`` transcripts with ``center_text``, PCA-whitened with ``text_whiten``."""
        t1 = pool_sentence(hidden, text_tokens.ne(self.tokenizer.pad_token_id), self.cfg.text_pooling)
        return self.target(t1)

    def pooled_sentence_vectors(self, ids, batch_size: int = 64) -> torch.Tensor:
        """t1 (N, H), pooled by ``text_pooling``, of token-id lists ``ids``."""
        from fairseq.data import data_utils

        pad = self.tokenizer.pad_token_id
        out = []
        for b in range(0, len(ids), batch_size):
            tokens = data_utils.collate_tokens([torch.tensor(x) for x in ids[b: b + batch_size]], pad)
            out.append(pool_sentence(self.text_representations(tokens), tokens.ne(pad), self.cfg.text_pooling))
        return torch.cat(out)
