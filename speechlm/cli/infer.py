"""`speechlm infer`: batched CTC decoding of a fine-tuned checkpoint, hypothesis/reference files, WER.

    speechlm infer --config-dir examples/librispeech/config/decode --config-name infer_viterbi \\
        common_eval.path=exp/ft/checkpoint_best.pt task.data=DATA dataset.gen_subset=test,test_other \\
        common_eval.results_path=exp/ft/decode

Arguments after the options are hydra overrides of the decode config (``InferConfig`` below). The
task (``speechlm_pretraining`` with ``fine_tuning: true``) and the model come from the checkpoint;
``task.*`` overrides change the saved task config (``task.data`` points at another data directory).
Utterances are batched by length and padded, never cropped: each one is decoded over its own frames
only, so a batch and one-at-a-time decoding give the same hypotheses. For each subset it writes
``{subset}.hypo.wrd`` and ``{subset}.ref.wrd`` (``WORDS (utterance-id)`` per line, sclite trn format,
manifest order) under ``common_eval.results_path`` and prints WER/CER (editdistance) and the
real-time factor.
"""
import ast
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.configs import CommonConfig, CommonEvalConfig, DatasetConfig

from speechlm.data.manifest import SAMPLE_RATE

logger = logging.getLogger("speechlm.infer")

DECODER_CHOICES = ChoiceEnum(["viterbi", "kenlm"])
KENLM_MISSING = (
    "decoding.type=kenlm needs a CTC beam-search decoder with KenLM support, and none is installed: "
    "`pip install pyctcdecode kenlm` (or flashlight-text). Without them use "
    "--config-name infer_viterbi."
)


@dataclass
class DecodingConfig(FairseqDataclass):
    type: DECODER_CHOICES = field(
        default="viterbi", metadata={"help": "viterbi (greedy best path) or kenlm (beam search + LM)"}
    )
    lm_path: Optional[str] = field(
        default=None, metadata={"help": "KenLM language model (.arpa or .bin) for type=kenlm"}
    )
    unigrams: Optional[str] = field(
        default=None,
        metadata={"help": "word list (one word, or 'word count', per line) that the KenLM beam "
                          "search may emit; default: the words of the LM"},
    )
    lm_weight: float = field(default=2.0, metadata={"help": "LM weight (alpha) for type=kenlm"})
    word_score: float = field(
        default=-1.0, metadata={"help": "word insertion bonus (beta) for type=kenlm"}
    )
    beam: int = field(default=50, metadata={"help": "beam width for type=kenlm"})
    beam_prune_logp: float = field(
        default=-10.0, metadata={"help": "prune beams this far (log prob) below the best"}
    )


@dataclass
class InferConfig(FairseqDataclass):
    common: CommonConfig = field(default_factory=CommonConfig)
    common_eval: CommonEvalConfig = field(default_factory=CommonEvalConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    task: Any = field(
        default=None,
        metadata={"help": "overrides of the task config saved in the checkpoint (e.g. data)"},
    )


# ----------------------------------------------------------------------------------------------
# decoders: (T, V) log-probs of ONE utterance (its real frames only) -> token ids


class ViterbiDecoder:
    """Best path: argmax per frame, merge repeats, drop blanks."""

    def __init__(self, tgt_dict, blank: int):
        self.blank = blank

    def decode(self, lprobs: torch.Tensor) -> List[int]:
        toks = lprobs.argmax(dim=-1).unique_consecutive()
        return toks[toks != self.blank].tolist()


class KenLMDecoder:
    """CTC beam search with a KenLM word LM through pyctcdecode; returns word strings directly."""

    def __init__(self, tgt_dict, blank: int, cfg: DecodingConfig):
        try:
            import pyctcdecode
        except ImportError:
            raise SystemExit(KENLM_MISSING) from None
        if not cfg.lm_path or not os.path.isfile(cfg.lm_path):
            raise SystemExit(
                f"decoding.lm_path={cfg.lm_path!r}: KenLM model not found; train one on the "
                "normalized text with KenLM's lmplz, or use --config-name infer_viterbi"
            )
        labels = []
        for i, sym in enumerate(tgt_dict.symbols):
            if i == blank:
                labels.append("")
            elif sym == "|":
                labels.append(" ")
            else:
                labels.append(sym if len(sym) == 1 else f"\u2047{i}")  # never emitted as text
        unigrams = None
        if cfg.unigrams:
            with open(cfg.unigrams, encoding="utf-8") as f:
                unigrams = [ln.split()[0] for ln in f if ln.strip()]
        self.decoder = pyctcdecode.build_ctcdecoder(
            labels, kenlm_model_path=cfg.lm_path, unigrams=unigrams, alpha=cfg.lm_weight,
            beta=cfg.word_score,
        )
        self.cfg = cfg

    def decode_words(self, lprobs: torch.Tensor) -> str:
        return self.decoder.decode(
            lprobs.float().cpu().numpy(), beam_width=self.cfg.beam,
            beam_prune_logp=self.cfg.beam_prune_logp,
        ).strip()


def build_decoder(cfg: DecodingConfig, tgt_dict, blank: int):
    if cfg.type == "viterbi":
        return ViterbiDecoder(tgt_dict, blank)
    return KenLMDecoder(tgt_dict, blank, cfg)


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


def decode_dataset(model, task, dataset, decoder, post_process: str, max_tokens=None,
                   batch_size=None, use_cuda=False, num_workers=0):
    """Decode every utterance of ``dataset``.

    Returns ``(results, audio_seconds, decode_seconds)`` with ``results[id] = (hyp, ref)`` (word
    strings; ``ref`` is None without targets), in dataset-index order.
    """
    from fairseq import utils
    from fairseq.data.data_utils import post_process as post_process_fn

    tgt_dict = task.target_dictionary
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=None, ignore_invalid_inputs=False, required_batch_size_multiple=1,
        num_workers=num_workers, disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)
    results, audio_s, t0 = {}, 0.0, time.perf_counter()
    with torch.inference_mode():
        for sample in itr:
            if not sample:
                continue
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            if max_tokens and sample["net_input"]["source"].size(1) > max_tokens:  # alone in its batch
                lprobs, lengths = chunked_emissions(model, sample, max_tokens)
            else:
                lprobs, lengths = emissions(model, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                audio_s += dataset.size(sid) / SAMPLE_RATE if hasattr(dataset, "size") else 0.0
                lp = lprobs[i, : int(lengths[i])]
                if hasattr(decoder, "decode_words"):
                    hyp = decoder.decode_words(lp)
                else:
                    hyp = post_process_fn(tgt_dict.string(decoder.decode(lp)), post_process)
                ref = None
                if sample.get("target") is not None:
                    t = sample["target"][i]
                    t = t[(t != tgt_dict.pad()) & (t != tgt_dict.eos())]
                    ref = post_process_fn(tgt_dict.string(t), post_process)
                results[sid] = (" ".join(hyp.split()), " ".join(ref.split()) if ref is not None else None)
    if len(results) != len(dataset):  # never score a subset silently
        from speechlm.errors import UserError

        missing = sorted(set(range(len(dataset))) - set(results))
        raise UserError(f"{len(missing)} of {len(dataset)} utterances were not decoded (dataset ids "
                        f"{missing[:5]}); the WER would leave them out")
    return results, audio_s, time.perf_counter() - t0


def utterance_ids(data_dir: str, subset: str, n: int) -> List[str]:
    """Manifest stems (``wav/utt1.wav`` -> ``wav/utt1``), or ``subset-i`` without a manifest."""
    from speechlm.data.readers import load_manifest

    tsv = os.path.join(data_dir or "", f"{subset}.tsv")
    if os.path.isfile(tsv):
        _, rows = load_manifest(tsv)
        if len(rows) == n:
            return [os.path.splitext(rel)[0] for rel, _ in rows]
    return [f"{subset}-{i}" for i in range(n)]


def load_model_and_task(path: str, task_overrides=None, model_overrides=None, use_cuda=False):
    """A fine-tuned checkpoint -> (model in eval mode, task, saved cfg). No pre-trained model is
    needed: ``speechlm_ctc`` keeps the pre-training config in the fine-tuned checkpoint."""
    from fairseq import checkpoint_utils, tasks
    from omegaconf import OmegaConf, open_dict

    if not os.path.isfile(path):
        raise SystemExit(f"common_eval.path={path!r}: checkpoint not found")
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides=model_overrides)
    cfg = state["cfg"]
    name = (cfg.get("model") or {}).get("_name") if cfg is not None else None
    if not str(name).endswith("_ctc"):
        from speechlm.errors import UserError

        kind = "a pre-trained" if name in ("speechlm", "hubert", "wav2vec2") else "a"
        raise UserError(
            f"{path}: is {kind} {name!r} checkpoint; speechlm infer decodes a CTC fine-tuned one "
            "(model speechlm_ctc): fine-tune it first (model.w2v_path=THIS_FILE, see "
            "examples/mini/config/finetune) and give that checkpoint as common_eval.path"
        )
    if task_overrides:
        with open_dict(cfg):
            cfg.task = OmegaConf.merge(cfg.task, task_overrides)
    task = tasks.setup_task(cfg.task)
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], task=task, state=state
        )
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        from speechlm.errors import UserError

        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln and "copying" in ln), "")
        raise UserError(
            f"{path}: its weights do not fit the model built from the dictionaries in "
            f"{cfg.task.get('data')} ({detail}); decode with the dict.ltr.txt the model was fine-tuned with"
        ) from None
    model = models[0].eval()
    if use_cuda:
        model = model.cuda()
    return model, task, cfg


def add_args(parser):
    parser.add_argument("--config-dir", required=True,
                        help="folder of decode configs, e.g. examples/librispeech/config/decode")
    parser.add_argument("--config-name", default="infer_viterbi",
                        help="config in that folder (default: %(default)s)")
    parser.add_argument("overrides", nargs="*",
                        help="hydra overrides, e.g. common_eval.path=CKPT dataset.gen_subset=test")


def compose_config(config_dir: str, config_name: str, overrides: List[str]):
    """Hydra-compose the decode yaml with ``overrides`` and type-check it against InferConfig."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = os.path.abspath(config_dir)
    if not os.path.isfile(os.path.join(config_dir, config_name + ".yaml")):
        raise SystemExit(f"{config_dir}/{config_name}.yaml: decode config not found")
    # `dataset.gen_subset=test,test_other` means one string here (no sweeps), not a hydra sweep
    overrides = [
        f"{o.split('=', 1)[0]}='{o.split('=', 1)[1]}'"
        if "=" in o and "," in o.split("=", 1)[1] and o.split("=", 1)[1][:1] not in "[{'\""
        else o
        for o in overrides
    ]
    logging.getLogger("hydra").setLevel(logging.WARNING)
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        raw = compose(config_name=config_name, overrides=list(overrides))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(InferConfig), raw)
    except OmegaConfBaseException as e:
        raise SystemExit(f"{config_dir}/{config_name}.yaml (+ overrides): {e}") from None
    if cfg.common_eval.path is None:
        raise SystemExit("give the fine-tuned checkpoint: common_eval.path=CKPT")
    return cfg


def run(args):
    from omegaconf import OmegaConf

    import speechlm  # noqa: F401  (registers models/tasks, safe checkpoint loading)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    cfg = compose_config(args.config_dir, args.config_name, args.overrides)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    task_overrides = OmegaConf.to_container(cfg.task) if cfg.task else {}
    if task_overrides.get("data") is None:  # null: keep the data dir saved in the checkpoint
        task_overrides.pop("data", None)
    model_overrides = ast.literal_eval(cfg.common_eval.model_overrides)  # a dict literal, as in fairseq
    model, task, saved = load_model_and_task(
        cfg.common_eval.path, task_overrides, model_overrides, use_cuda
    )
    tgt_dict = task.target_dictionary
    blank = tgt_dict.index(task.blank_symbol) if hasattr(task, "blank_symbol") else tgt_dict.bos()
    decoder = build_decoder(cfg.decoding, tgt_dict, blank)
    post = cfg.common_eval.post_process or "letter"
    out_dir = cfg.common_eval.results_path
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    table = []
    for subset in cfg.dataset.gen_subset.split(","):
        task.load_dataset(subset, task_cfg=saved.task)
        ds = task.dataset(subset)
        results, audio_s, secs = decode_dataset(
            model, task, ds, decoder, post, cfg.dataset.max_tokens, cfg.dataset.batch_size,
            use_cuda, cfg.dataset.num_workers,
        )
        names = getattr(ds, "names", None)  # SpeechLabelDataset: manifest paths of its rows
        ids = ([os.path.splitext(n)[0] for n in names] if names is not None
               else utterance_ids(saved.task.get("data"), subset, len(ds)))
        errs = [word_errors(h, r) for h, r in results.values() if r is not None]
        we, nw, ce, nc = (sum(x) for x in zip(*errs)) if errs else (0, 0, 0, 0)
        if out_dir:
            for kind, k in (("hypo", 0), ("ref", 1)):
                with open(os.path.join(out_dir, f"{subset}.{kind}.wrd"), "w", encoding="utf-8") as f:
                    for sid in sorted(results):
                        f.write(f"{results[sid][k] or ''} ({ids[sid]})\n")
        table.append((subset, len(results), nw, 100.0 * we / max(nw, 1), 100.0 * ce / max(nc, 1),
                      secs / max(audio_s, 1e-9)))
    print(f"{'subset':<14}{'utts':>7}{'words':>8}{'WER%':>8}{'CER%':>8}{'RTF':>9}")
    for subset, n, nw, wer, cer, rtf in table:
        print(f"{subset:<14}{n:>7}{nw:>8}{wer:>8.2f}{cer:>8.2f}{rtf:>9.4f}")
    if out_dir:
        print(f"hypotheses and references: {out_dir}/{{subset}}.{{hypo,ref}}.wrd")
    return 0
