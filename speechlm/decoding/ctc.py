"""CTC decoding of a fine-tuned model: batching, emissions, Viterbi and KenLM decoders, WER.

``decode_dataset(model, dataset, decoders)`` runs the model once over every utterance and decodes its
log-probabilities with each decoder (a list, so an LM-weight sweep costs one forward pass). Utterances are
batched by :func:`plan_batches`: sorted by length, a batch holds at most ``max_samples`` samples *including
padding* and only utterances within ``max_pad_ratio`` of its longest one, so little compute goes to padding
and the activations of a batch stay small (a batch of 100 s of audio through the conv front end is 800 MB of
float32 per conv layer, which made batched decoding slower than one at a time on CPU). Nothing is cropped:
each utterance is decoded over its own frames only, so a batch and one-at-a-time decoding give the same
hypotheses.
"""
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from speechlm.data.manifest import SAMPLE_RATE

KENLM_MISSING = (
    "decoding.type=kenlm needs a CTC beam-search decoder with KenLM support, and none is installed: "
    "`pip install pyctcdecode kenlm` (scripts/setup.sh does). Without them use --config-name infer_viterbi."
)


# ----------------------------------------------------------------------------------------------
# decoders: (T, V) log-probs of ONE utterance (its real frames only) -> words


def greedy_ctc(scores: torch.Tensor, lengths: Sequence[int], blank: int) -> List[List[int]]:
    """Greedy (best-path) CTC decoding, the one implementation: argmax per frame, repeats merged, blanks
    dropped. ``scores`` (B,T,V) logits or log-probs, ``lengths`` (B,) real frames -> one id list per row."""
    best = scores.argmax(-1).cpu()
    out = []
    for b in range(best.size(0)):
        ids = torch.unique_consecutive(best[b, : int(lengths[b])])
        out.append(ids[ids != blank].tolist())
    return out


class ViterbiDecoder:
    """Best path (:func:`greedy_ctc`); ``decode`` gives token ids."""

    def __init__(self, tgt_dict, blank: int, post_process: str = "letter"):
        self.tgt_dict, self.blank, self.post_process = tgt_dict, blank, post_process

    def decode(self, lprobs: torch.Tensor) -> List[int]:
        return greedy_ctc(lprobs[None], [lprobs.size(0)], self.blank)[0]

    def decode_words(self, lprobs: torch.Tensor) -> str:
        from fairseq.data.data_utils import post_process

        return post_process(self.tgt_dict.string(self.decode(lprobs)), self.post_process)


def ctc_labels(tgt_dict, blank: int) -> List[str]:
    """pyctcdecode's label list for a fairseq letter dictionary: blank -> '', '|' -> ' '; special symbols
    (<s> <pad> </s> <unk> other than the blank) map to strings the decoder never emits as text."""
    labels = []
    for i, sym in enumerate(tgt_dict.symbols):
        if i == blank:
            labels.append("")
        elif sym == "|":
            labels.append(" ")
        else:
            labels.append(sym if len(sym) == 1 else f"\u2047{i}")
    return labels


class KenLMDecoder:
    """CTC prefix beam search with a KenLM word LM (pyctcdecode); ``decode_words`` gives the words.

    ``lm_weight`` (alpha) scales the LM log-probability (natural log, as pyctcdecode), ``word_score`` (beta)
    is added per word. ``unigrams``: the words the beam may complete (default: the LM's vocabulary);
    ``unk_score_offset`` is added to a word, or a word's prefix, that is not among them (pyctcdecode's
    -10 lets the search spell new words; -100 keeps it to the list).
    """

    def __init__(self, tgt_dict, blank: int, lm_path: str, lm_weight: float = 2.0, word_score: float = -1.0,
                 beam: int = 50, beam_prune_logp: float = -10.0, unigrams: Optional[str] = None,
                 language_model=None, unk_score_offset: float = -10.0):
        try:
            import pyctcdecode
        except ImportError:
            raise SystemExit(KENLM_MISSING) from None
        if language_model is None:
            language_model = load_kenlm(lm_path, unigrams, lm_weight, word_score, unk_score_offset)
        else:
            language_model = language_model.with_weights(lm_weight, word_score, unk_score_offset)
        self.lm = language_model
        self.decoder = pyctcdecode.BeamSearchDecoderCTC(
            pyctcdecode.Alphabet.build_alphabet(ctc_labels(tgt_dict, blank)), language_model.model)
        self.beam, self.beam_prune_logp = beam, beam_prune_logp

    def decode_words(self, lprobs: torch.Tensor) -> str:
        return self.decoder.decode(
            lprobs.float().cpu().numpy(), beam_width=self.beam, beam_prune_logp=self.beam_prune_logp,
        ).strip()


class LoadedLM:
    """A KenLM model loaded once, re-weighted cheaply for a sweep (pyctcdecode's LanguageModel)."""

    def __init__(self, kenlm_model, unigrams, alpha, beta, unk_score_offset=-10.0):
        from pyctcdecode.language_model import LanguageModel

        self.kenlm_model, self.unigrams = kenlm_model, unigrams
        self.model = LanguageModel(kenlm_model, unigrams, alpha=alpha, beta=beta,
                                   unk_score_offset=float(unk_score_offset))

    def with_weights(self, alpha, beta, unk_score_offset=-10.0) -> "LoadedLM":
        return LoadedLM(self.kenlm_model, self.unigrams, alpha, beta, unk_score_offset)


def arpa_unigrams(path: str) -> List[str]:
    """The words of an ARPA file's 1-gram section (without <s> </s> <unk>)."""
    words, section = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                section = line
                if line.startswith("\\2-grams") or line == "\\end\\":
                    break
                continue
            if section == "\\1-grams:" and line:
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) >= 2 and parts[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(parts[1])
    return words


def load_kenlm(lm_path: str, unigrams: Optional[str] = None, lm_weight: float = 2.0,
               word_score: float = -1.0, unk_score_offset: float = -10.0) -> LoadedLM:
    """Load a KenLM model (.arpa or .bin) once. ``unigrams``: a word list file (first field per line);
    default: the 1-grams of an ARPA file (a binary model needs the list)."""
    try:
        import kenlm
    except ImportError:
        raise SystemExit(KENLM_MISSING) from None
    if not lm_path or not os.path.isfile(lm_path):
        raise SystemExit(
            f"decoding.lm_path={lm_path!r}: KenLM model not found; give the official LibriSpeech "
            "4-gram.arpa, or build one (speechlm.decoding.ngram.write_arpa, or KenLM's lmplz), or use "
            "--config-name infer_viterbi")
    if unigrams:
        with open(unigrams, encoding="utf-8") as f:
            words = [ln.split()[0] for ln in f if ln.strip()]
    elif lm_path.endswith(".arpa"):
        words = arpa_unigrams(lm_path)
    else:
        raise SystemExit(f"decoding.lm_path={lm_path}: a binary KenLM model needs decoding.unigrams=WORDLIST")
    return LoadedLM(kenlm.Model(lm_path), words, lm_weight, word_score, unk_score_offset)


# ----------------------------------------------------------------------------------------------


def word_errors(hyp: str, ref: str):
    """(edit distance in words, reference words, edit distance in chars, reference chars)."""
    import editdistance

    hw, rw = hyp.split(), ref.split()
    hc, rc = list(hyp.replace(" ", "")), list(ref.replace(" ", ""))
    return editdistance.eval(hw, rw), len(rw), editdistance.eval(hc, rc), len(rc)


def emissions(model, sample):
    """Run a CTC model on a padded batch -> (lprobs (B, T, V), lengths (B,)) over real frames."""
    net_output = model(**sample["net_input"])
    lprobs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1).float()
    pad = net_output.get("padding_mask")
    if pad is None:
        pad = net_output.get("encoder_padding_mask")
    if pad is not None and pad.any():
        lengths = (~pad).long().sum(-1)
    else:
        lengths = torch.full((lprobs.size(0),), lprobs.size(1), dtype=torch.long)
    return lprobs, lengths


# chunks of a long utterance start on multiples of this (two 320-sample frames: the 25 Hz CTC head's frames)
CHUNK_ALIGN_SAMPLES = 640


def chunked_emissions(model, sample, chunk_samples: int):
    """``emissions`` of ONE utterance (batch of 1) longer than ``chunk_samples``, in consecutive chunks.

    Each chunk starts on a multiple of 640 samples and carries the 80 samples that complete its last
    25 ms window, so the conv frames of the chunks are exactly the utterance's frames; the Transformer
    sees each chunk alone. Returns ``(lprobs (1, T, V), lengths (1,))``.
    """
    from speechlm.data.manifest import FRAME_SHIFT_SAMPLES, FRAME_WINDOW_SAMPLES

    src = sample["net_input"]["source"]
    step = max(CHUNK_ALIGN_SAMPLES, chunk_samples // CHUNK_ALIGN_SAMPLES * CHUNK_ALIGN_SAMPLES)
    pieces = []
    for start in range(0, src.size(1), step):
        piece = src[:, start:start + step + FRAME_WINDOW_SAMPLES - FRAME_SHIFT_SAMPLES]
        if piece.size(1) < FRAME_WINDOW_SAMPLES:
            break
        mask = torch.zeros(piece.shape, dtype=torch.bool, device=piece.device)
        lp, n = emissions(model, {"net_input": {"source": piece, "padding_mask": mask}})
        pieces.append(lp[0, : int(n[0])])
    lprobs = torch.cat(pieces)[None]
    return lprobs, torch.tensor([lprobs.size(1)])


def plan_batches(sizes: Sequence[int], max_samples: int, max_pad_ratio: float = 0.1,
                 max_batch: Optional[int] = None) -> List[List[int]]:
    """Length-sorted batches of dataset indices (longest first).

    A batch's cost is (its size) x (its longest utterance); a new batch starts when adding the next
    utterance would exceed ``max_samples`` or when it is shorter than the batch's longest by more than
    ``max_pad_ratio`` (so padding stays under that fraction), or at ``max_batch`` utterances.
    """
    order = np.argsort(-np.asarray(sizes, dtype=np.int64), kind="stable")
    batches, cur, longest = [], [], 0
    for i in order.tolist():
        n = int(sizes[i])
        if cur and ((len(cur) + 1) * longest > max_samples or n < longest * (1 - max_pad_ratio)
                    or (max_batch and len(cur) >= max_batch)):
            batches.append(cur)
            cur = []
        if not cur:
            longest = n
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def decode_dataset(model, dataset, decoders, tgt_dict, post_process: str = "letter",
                   max_samples: int = 200_000, max_pad_ratio: float = 0.1, batch_size: Optional[int] = None,
                   use_cuda: bool = False, chunk_samples: Optional[int] = None):
    """Decode every utterance of ``dataset`` (a SpeechLabelDataset-like: ``__getitem__``, ``collater``,
    ``size``) with each of ``decoders`` (objects with ``decode_words(lprobs (T, V)) -> str``).

    Returns ``(results, audio_seconds, forward_seconds, decode_seconds)``: ``results[k][index] =
    (hyp, ref)`` for decoder k (``ref`` None without targets); ``decode_seconds[k]`` per decoder.
    ``batch_size=1`` decodes one utterance at a time. An utterance longer than ``chunk_samples`` (None: no
    limit) is decoded alone in chunks (:func:`chunked_emissions`). Raises ``UserError`` if any utterance
    was left undecoded (a WER over a subset would mislead).
    """
    from fairseq import utils
    from fairseq.data.data_utils import post_process as post_process_fn

    sizes = [dataset.size(i) for i in range(len(dataset))]
    if batch_size == 1:
        batches = [[i] for i in range(len(dataset))]
    else:
        # an utterance longer than chunk_samples is alone in its batch (then decoded in chunks)
        limit = min(max_samples, chunk_samples) if chunk_samples else max_samples
        batches = plan_batches(sizes, limit, max_pad_ratio, batch_size)
    results: List[Dict[int, Tuple[str, Optional[str]]]] = [{} for _ in decoders]
    fwd_s, dec_s = 0.0, [0.0] * len(decoders)
    with torch.inference_mode():
        for idx in batches:
            sample = dataset.collater([dataset[i] for i in idx])
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            t0 = time.perf_counter()
            if chunk_samples and len(idx) == 1 and sample["net_input"]["source"].size(1) > chunk_samples:
                lprobs, lengths = chunked_emissions(model, sample, chunk_samples)
            else:
                lprobs, lengths = emissions(model, sample)
            lprobs = lprobs.cpu()
            fwd_s += time.perf_counter() - t0
            for b, sid in enumerate(sample["id"].tolist()):
                lp = lprobs[b, : int(lengths[b])]
                ref = None
                if sample.get("target") is not None:
                    t = sample["target"][b]
                    t = t[(t != tgt_dict.pad()) & (t != tgt_dict.eos())]
                    ref = " ".join(post_process_fn(tgt_dict.string(t), post_process).split())
                for k, dec in enumerate(decoders):
                    t1 = time.perf_counter()
                    hyp = dec.decode_words(lp)
                    dec_s[k] += time.perf_counter() - t1
                    results[k][sid] = (" ".join(hyp.split()), ref)
    if len(results[0]) != len(dataset):  # never score a subset silently
        from speechlm.errors import UserError

        missing = sorted(set(range(len(dataset))) - set(results[0]))
        raise UserError(f"{len(missing)} of {len(dataset)} utterances were not decoded (dataset ids "
                        f"{missing[:5]}); the WER would leave them out")
    return results, sum(sizes) / SAMPLE_RATE, fwd_s, dec_s


def error_rates(results: Dict[int, Tuple[str, Optional[str]]]) -> dict:
    """``{"wer", "cer", "words"}`` (percent) over the utterances with a reference."""
    errs = [word_errors(h, r) for h, r in results.values() if r is not None]
    we, nw, ce, nc = (sum(x) for x in zip(*errs)) if errs else (0, 0, 0, 0)
    return {"wer": 100.0 * we / max(nw, 1), "cer": 100.0 * ce / max(nc, 1), "words": nw}
