"""`speechlm infer`: CTC decoding of a fine-tuned checkpoint (Viterbi or KenLM), hypotheses, WER, sweeps.

    speechlm infer --config-dir examples/librispeech/config/decode --config-name infer_viterbi \\
        common_eval.path=exp/ft/checkpoint_best.pt task.data=DATA dataset.gen_subset=test,test_other \\
        common_eval.results_path=exp/ft/decode
    speechlm infer --config-dir examples/librispeech/config/decode --config-name infer_kenlm \\
        common_eval.path=CKPT decoding.lm_path=4-gram.arpa dataset.gen_subset=dev_clean \\
        decoding.lm_weight=0,0.5,1,2 decoding.word_score=-1,0,1          # a 4 x 3 sweep, one forward pass
    speechlm infer --config-dir ... --config-name infer_kenlm --tune-on valid common_eval.path=CKPT \\
        decoding.lm_path=LM.arpa decoding.lm_weight=0.5,1,2 decoding.word_score=0,1,2 \\
        dataset.gen_subset=test,test_other     # the best setting on valid, then test and test_other with it

Arguments after the options are hydra overrides of the decode config (``InferConfig`` below), in hydra's
override grammar: a comma list (or ``range(a,b,step)``) is a sweep. ``dataset.gen_subset`` and
``decoding.*`` may sweep: the model runs once per subset and every combination of the ``decoding.*``
values decodes its log-probabilities (a table, best setting marked). The task (``speechlm_pretraining``
with ``fine_tuning: true``) and the model come from the checkpoint; ``task.*`` overrides change the saved
task config. Batching and decoders: ``speechlm.decoding.ctc``. For each subset it writes
``{subset}.hypo.wrd`` and ``{subset}.ref.wrd`` (``WORDS (utterance-id)`` per line, sclite trn format,
manifest order; with a sweep, the best setting's) under ``common_eval.results_path``, plus
``{subset}.sweep.tsv`` for a sweep. ``--tune-on SUBSET`` chooses the setting (lowest WER on SUBSET) in the
same run and writes it to ``setting`` there, as overrides (``decoding.lm_weight=1.0 decoding.word_score=0.0``).
``common.bf16=true`` (or ``common.fp16=true``, fairseq's names) runs the model in half precision; the
log-probabilities the decoders read stay float32.
"""
import ast
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.configs import CommonConfig, CommonEvalConfig, DatasetConfig

DECODER_CHOICES = ChoiceEnum(["viterbi", "kenlm"])


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
    unk_score_offset: float = field(
        default=-10.0,
        metadata={"help": "log score added to a word (or a word's prefix) outside decoding.unigrams; "
                          "-10 (pyctcdecode's default) allows new words, a large penalty such as -100 "
                          "keeps the output to the word list (a lexicon-constrained search)"},
    )
    beam: int = field(default=50, metadata={"help": "beam width for type=kenlm"})
    beam_prune_logp: float = field(
        default=-10.0, metadata={"help": "prune beams this far (log prob) below the best"}
    )
    max_samples: int = field(
        default=200_000,
        metadata={"help": "audio samples per batch, padding included (12.5 s at 16 kHz); small batches "
                          "keep the conv front end's activations in cache (see speechlm.decoding.ctc)"},
    )
    max_pad_ratio: float = field(
        default=0.1, metadata={"help": "an utterance joins a batch only if it is at most this much "
                                       "shorter than the batch's longest"},
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

    from speechlm.checkpoint import read_checkpoint

    if not os.path.isfile(path):
        raise SystemExit(f"common_eval.path={path!r}: checkpoint not found")
    state = read_checkpoint(path, arg_overrides=model_overrides)
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
    from speechlm.dictionaries import dictionary_path, require_same_symbols

    stored = (cfg.get("model") or {}).get("target_symbols")
    if stored is None:
        logging.getLogger(__name__).warning(
            "%s was written before models saved their dictionary: cannot check that %s is the one it was "
            "trained with", path, dictionary_path(task))
    require_same_symbols(stored, task.target_dictionary, dictionary_path(task), path)
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
    parser.add_argument("--tune-on", metavar="SUBSET",
                        help="(before the overrides) with a decoding.* sweep: decode SUBSET with every setting, keep the one with the "
                             "lowest WER, then decode dataset.gen_subset with it alone; writes "
                             "RESULTS/SUBSET.sweep.tsv and RESULTS/setting (the chosen decoding.* overrides)")


def expand_overrides(overrides: List[str]):
    """Split hydra overrides into ``(fixed, subsets, grid)``: ``fixed`` the single-valued ones,
    ``subsets`` the values of a ``dataset.gen_subset`` sweep (or None), ``grid`` one override list per
    combination of the ``decoding.*`` sweeps (``[[]]`` without any). Raises SystemExit for bad syntax or
    a sweep over another key (the model and data are loaded once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise SystemExit(f"speechlm infer: bad override: {e}") from None
    fixed, subsets, sweeps = [], None, []
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        values = list(o.sweep_string_iterator())
        if key == "dataset.gen_subset":
            subsets = values
        elif key.startswith("decoding."):
            sweeps.append([f"{key}={v}" for v in values])
        else:
            raise SystemExit(f"speechlm infer: {o.input_line}: only dataset.gen_subset and decoding.* may "
                             "take several values (one model and task per run)")
    return fixed, subsets, [list(c) for c in itertools.product(*sweeps)]


def compose_configs(config_dir: str, config_name: str, overrides: List[str]):
    """Hydra-compose the decode yaml once per combination of the swept ``decoding.*`` values and
    type-check each against InferConfig. Returns the list of configs (one without a sweep); their
    ``dataset.gen_subset`` is the comma-joined list of subsets."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = os.path.abspath(config_dir)
    if not os.path.isfile(os.path.join(config_dir, config_name + ".yaml")):
        raise SystemExit(f"{config_dir}/{config_name}.yaml: decode config not found")
    fixed, subsets, grid = expand_overrides(overrides)
    logging.getLogger("hydra").setLevel(logging.WARNING)
    cfgs = []
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        for combo in grid:
            try:
                raw = compose(config_name=config_name, overrides=fixed + combo)
                cfg = OmegaConf.merge(OmegaConf.structured(InferConfig), raw)
            except OmegaConfBaseException as e:
                raise SystemExit(f"{config_dir}/{config_name}.yaml (+ overrides): {e}") from None
            if subsets:
                cfg.dataset.gen_subset = ",".join(subsets)
            if cfg.common_eval.path is None:
                raise SystemExit("give the fine-tuned checkpoint: common_eval.path=CKPT")
            cfgs.append(cfg)
    return cfgs


def compose_config(config_dir: str, config_name: str, overrides: List[str]):
    """The config of a run without a ``decoding.*`` sweep (SystemExit if there is one)."""
    cfgs = compose_configs(config_dir, config_name, overrides)
    if len(cfgs) != 1:
        raise SystemExit("compose_config: the overrides sweep decoding.*; use compose_configs")
    return cfgs[0]


def build_decoders(cfgs, tgt_dict, blank: int, post_process: str):
    """One decoder per config (a KenLM model is loaded once and re-weighted)."""
    from speechlm.decoding.ctc import KenLMDecoder, ViterbiDecoder, load_kenlm

    decoders, lms = [], {}
    for cfg in cfgs:
        d = cfg.decoding
        if d.type == "viterbi":
            decoders.append(ViterbiDecoder(tgt_dict, blank, post_process))
            continue
        key = (d.lm_path, d.unigrams)
        if key not in lms:
            lms[key] = load_kenlm(d.lm_path, d.unigrams, d.lm_weight, d.word_score)
        decoders.append(KenLMDecoder(tgt_dict, blank, d.lm_path, d.lm_weight, d.word_score, d.beam,
                                     d.beam_prune_logp, language_model=lms[key],
                                     unk_score_offset=d.unk_score_offset))
    return decoders


def _setting(cfg, swept_keys) -> str:
    from omegaconf import OmegaConf

    return " ".join(f"{k}={OmegaConf.select(cfg, 'decoding.' + k)}" for k in swept_keys) or str(cfg.decoding.type)


def _decode_subset(subset, cfgs, decoders, *, model, task, saved, swept, post, use_cuda, out_dir, decoding,
                   batch_size, chunk_samples):
    """Decode ``subset`` once with every decoder (one forward pass): ``(table rows, index of the best)``.
    Writes the best setting's ``{subset}.{hypo,ref}.wrd`` and, for several settings, ``{subset}.sweep.tsv``
    under ``out_dir`` (when given)."""
    from omegaconf import OmegaConf

    from speechlm.atomic import atomic_write
    from speechlm.decoding.ctc import decode_dataset, error_rates

    task.load_dataset(subset, task_cfg=saved.task)
    ds = task.dataset(subset)
    results, audio_s, fwd_s, dec_s = decode_dataset(
        model, ds, decoders, task.target_dictionary, post, max_samples=decoding.max_samples,
        max_pad_ratio=decoding.max_pad_ratio, batch_size=batch_size, use_cuda=use_cuda,
        chunk_samples=chunk_samples,
    )
    names = getattr(ds, "names", None)  # SpeechLabelDataset: manifest paths of its rows
    ids = ([os.path.splitext(n)[0] for n in names] if names is not None
           else utterance_ids(saved.task.get("data"), subset, len(ds)))
    rates = [error_rates(r) for r in results]
    best = min(range(len(cfgs)), key=lambda k: rates[k]["wer"])
    rows = [(subset, _setting(c, swept), len(results[k]), rates[k]["words"], rates[k]["wer"], rates[k]["cer"],
             (fwd_s + dec_s[k]) / max(audio_s, 1e-9), len(cfgs) > 1 and k == best) for k, c in enumerate(cfgs)]
    if out_dir:
        for kind, j in (("hypo", 0), ("ref", 1)):
            with atomic_write(os.path.join(out_dir, f"{subset}.{kind}.wrd"), what="decoding output") as f:
                for sid in sorted(results[best]):
                    f.write(f"{results[best][sid][j] or ''} ({ids[sid]})\n")
        if len(cfgs) > 1:
            with atomic_write(os.path.join(out_dir, f"{subset}.sweep.tsv"), what="sweep table") as f:
                f.write("\t".join(swept + ["wer", "cer"]) + "\n")
                for c, r in zip(cfgs, rates):
                    vals = [str(OmegaConf.select(c, "decoding." + k)) for k in swept]
                    f.write("\t".join(vals + [f"{r['wer']:.2f}", f"{r['cer']:.2f}"]) + "\n")
    return rows, best


def run(args):
    from omegaconf import OmegaConf

    import speechlm  # noqa: F401  (registers models/tasks, safe checkpoint loading)
    from speechlm.atomic import atomic_write, ensure_dir
    from speechlm.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    cfgs = compose_configs(args.config_dir, args.config_name, args.overrides)
    cfg = cfgs[0]
    if args.tune_on and len(cfgs) == 1:
        raise UserError(f"--tune-on {args.tune_on}: give a decoding.* sweep to choose from, e.g. "
                        "decoding.lm_weight=0.5,1,2 decoding.word_score=0,1,2")
    swept = [k for k in ("type", "lm_weight", "word_score", "unk_score_offset", "beam", "beam_prune_logp", "lm_path")
             if len({str(OmegaConf.select(c, "decoding." + k)) for c in cfgs}) > 1]
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    task_overrides = OmegaConf.to_container(cfg.task) if cfg.task else {}
    if task_overrides.get("data") is None:  # null: keep the data dir saved in the checkpoint
        task_overrides.pop("data", None)
    model_overrides = ast.literal_eval(cfg.common_eval.model_overrides)  # a dict literal, as in fairseq
    model, task, saved = load_model_and_task(
        cfg.common_eval.path, task_overrides, model_overrides, use_cuda
    )
    if cfg.common.fp16 or cfg.common.bf16:  # fairseq's names; the CTC log-probabilities stay float32
        model = model.half() if cfg.common.fp16 else model.bfloat16()
    tgt_dict = task.target_dictionary
    blank = tgt_dict.index(task.blank_symbol) if hasattr(task, "blank_symbol") else tgt_dict.bos()
    post = cfg.common_eval.post_process or "letter"
    decoders = build_decoders(cfgs, tgt_dict, blank, post)
    out_dir = cfg.common_eval.results_path
    if out_dir:
        ensure_dir(out_dir, "common_eval.results_path")
    context = dict(model=model, task=task, saved=saved, swept=swept, post=post, use_cuda=use_cuda,
                   out_dir=out_dir, decoding=cfg.decoding, batch_size=cfg.dataset.batch_size,
                   chunk_samples=cfg.dataset.max_tokens)
    table, sweep = [], len(cfgs) > 1
    if args.tune_on:
        rows, best = _decode_subset(args.tune_on, cfgs, decoders, **context)
        table += rows
        chosen = " ".join(f"decoding.{k}={OmegaConf.select(cfgs[best], 'decoding.' + k)}" for k in swept)
        if out_dir:
            with atomic_write(os.path.join(out_dir, "setting"), what="chosen decoding setting") as f:
                f.write(chosen + "\n")
        print(f"best on {args.tune_on}: {chosen}")
        cfgs, decoders = [cfgs[best]], [decoders[best]]
    for subset in cfg.dataset.gen_subset.split(","):
        table += _decode_subset(subset, cfgs, decoders, **context)[0]
    # the decoding column only for a sweep: one setting keeps fairseq-like "subset utts words WER CER RTF"
    width = max(8, max(len(row[1]) for row in table) + 2) if sweep else 0
    print(f"{'subset':<14}" + (f"{'decoding':<{width}}" if width else "")
          + f"{'utts':>7}{'words':>8}{'WER%':>8}{'CER%':>8}{'RTF':>9}")
    for subset, setting, n, nw, wer, cer, rtf, is_best in table:
        print(f"{subset:<14}" + (f"{setting:<{width}}" if width else "")
              + f"{n:>7}{nw:>8}{wer:>8.2f}{cer:>8.2f}{rtf:>9.4f}" + ("  <- best" if is_best else ""))
    if out_dir:
        print(f"hypotheses and references: {out_dir}/{{subset}}.{{hypo,ref}}.wrd")
    return 0
