"""Convert a checkpoint of the published SpeechLM code (microsoft/unilm ``speechlm/``) to this plugin.

Layouts (detected from the file):

- ``pretrained``: SpeechLM-P / SpeechLM-H Base or Large (model ``speechlm``, task
  ``joint_sc2t_pretraining``) -> a ``speechlm`` checkpoint (``SpeechLMModel.from_checkpoint``,
  ``model.w2v_path``, ``speechlm features dump --checkpoint``). Needs ``--dict-ltr`` and the unit
  dictionary (``--dict-phn`` for SpeechLM-P, ``--dict-km`` for SpeechLM-H).
- ``asr``: a LibriSpeech CTC fine-tune (model ``speechlm_ctc``) -> a ``speechlm_ctc`` checkpoint
  (``speechlm infer``). Needs ``--dict-ltr``.
- ``cleaned``: the released feature-extraction checkpoints (the published README's "Extract features
  using pre-trained models": SpeechLM-P Base, SpeechLM-H Base, SpeechLM-P Large; ``{"cfg": {"model",
  "task": {"normalize"}}, "model"}`` with the keys of the published ``SpeechLM.py``: no label embeddings,
  unit embedding or UCTC head) -> a ``speechlm`` checkpoint of the encoder alone
  (``model.pretraining_heads: false``, ``task.normalize`` kept) that extracts features (every layer, the
  s3prl upstream, ``features dump``) and fine-tunes (ASR and ST through ``model.w2v_path``); continued
  pre-training from it is refused. Needs no dictionary.
- ``st``: a CoVoST-2 fine-tune (model ``speechlm_st_legacy``) -> a ``speechlm_st`` checkpoint
  (``fairseq-generate --task speech_to_text``). Needs the target vocabulary (``--dict-st``, the
  ``spm_char_st_en_*.txt`` of the release).

One explicit key map (``pretrained_key``, ``ctc_key``, ``st_key``): every key of the source is mapped
or listed as dropped with the reason; an unknown key is an error. Published-config values that this
plugin's model does not implement (e.g. ``use_rel_pos_enc: false``) are errors too, naming the key.
"""
import logging
import os
import re
from typing import Dict, Optional, Tuple

import torch

from speechlm.checkpoint import atomic_torch_save, checkpoint_model_name, config_value, read_checkpoint
from speechlm.data.manifest import SAMPLE_RATE
from speechlm.errors import UserError
from speechlm.models.pretrained import PretrainedSpec
from speechlm.models.speechlm import SpeechLMModel
from speechlm.modules.relpos_transformer import MAX_SHARED_POSITIONS, POSITION_PAD, REL_POS_CLIP

logger = logging.getLogger(__name__)

LAYOUTS = ("pretrained", "cleaned", "asr", "st")


class ConvertError(UserError):
    """The source cannot be converted; the message names the file and what to do."""


# ----------------------------------------------------------------------------------- key maps
_LAYER = r"layers\.(\d+)\."
_LAYER_PARTS = r"(self_attn\.(?:q|k|v|out)_proj\.(?:weight|bias)|self_attn_layer_norm\.(?:weight|bias)|" \
               r"fc[12]\.(?:weight|bias)|final_layer_norm\.(?:weight|bias))"


def pretrained_key(key: str, pre_ln: bool) -> Tuple[Optional[str], str]:
    """Official pre-trained key -> (our key or None when dropped, reason). Unknown key: ConvertError."""
    rules = [
        (r"feature_extractor\.(.+)", r"feature_extractor.\1"),
        (r"layer_norm\.(weight|bias)", r"layer_norm.\1"),
        (r"post_extract_proj\.(weight|bias)", r"post_extract_proj.\1"),
        (r"mask_emb", r"mask_emb"),
        (r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias|parametrizations\.weight\.original[01])",
         r"speech_encoder.pos_conv.0.\1"),
        (r"encoder\." + _LAYER + _LAYER_PARTS, r"speech_encoder.layers.\1.\2"),
        (r"encoder\.layer_norm\.(weight|bias)", r"speech_encoder.layer_norm.\1"),
        (r"encoder\.pos_emb\.pe_k\.weight", r"speech_encoder.relative_keys.weight"),
        (r"unit_embed_tokens\.weight", r"unit_embed.weight"),
        (r"unit_encoder\.embed_positions\.weight", r"shared_encoder.embed_positions.weight"),
        (r"unit_encoder\.layernorm_embedding\.(weight|bias)", r"shared_encoder.layernorm_embedding.\1"),
        (r"unit_encoder\." + _LAYER + _LAYER_PARTS, r"shared_encoder.layers.\1.\2"),
        (r"unit_encoder\.layer_norm\.(weight|bias)", r"shared_encoder.layer_norm.\1"),
        (r"unit_encoder\.pos_emb\.pe_k\.weight", r"shared_encoder.relative_keys.weight"),
        (r"final_proj_list\.([01])\.(weight|bias)", r"umlm_proj.\1.\2"),
        (r"label_embs_list\.([01])", r"umlm_label_embs.\1"),
        (r"unit_encoder_ctc_head\.1\.weight", r"uctc_head.conv.weight"),
        (r"unit_encoder_ctc_head\.3\.2\.(weight|bias)", r"uctc_head.layer_norm.\1"),
        (r"unit_encoder_ctc_head\.5\.(weight|bias)", r"uctc_head.proj.\1"),
    ]
    m = re.fullmatch(r"(unit_encoder\.|encoder\.)" + _LAYER + r"norm_k\.(weight|bias)", key)
    if m:
        stack = "shared_encoder" if m.group(1) == "unit_encoder." else "speech_encoder"
        if pre_ln:
            return f"{stack}.layers.{m.group(2)}.norm_k.{m.group(3)}", "relative-key norm (pre-LN)"
        return None, "norm_k of a post-LN layer: the published forward never uses it"
    if key == "unit_encoder.version":
        return None, "fairseq version buffer, no weights"
    if key == "unit_encoder.embed_tokens.weight":
        return None, "the same tensor as unit_embed_tokens.weight (shared module)"
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub("^" + pattern + "$", repl, key), "mapped"
    raise KeyError(key)


FINETUNE_UNUSED = ("final_proj_list.", "label_embs_list.", "unit_embed_tokens.", "unit_encoder.embed_tokens.")


def ctc_key(key: str, pre_ln: bool) -> Tuple[Optional[str], str]:
    """Official ``speechlm_ctc`` key -> (our ``speechlm_ctc`` key or None, reason)."""
    if key.startswith("w2v_encoder.proj."):
        inner, _ = pretrained_key("unit_encoder_ctc_head." + key[len("w2v_encoder.proj."):], pre_ln)
        return "ctc_head." + inner[len("uctc_head."):], "the CTC head (the pre-trained UCTC head, fine-tuned)"
    if not key.startswith("w2v_encoder.w2v_model."):
        raise KeyError(key)
    inner = key[len("w2v_encoder.w2v_model."):]
    if inner.startswith("unit_encoder_ctc_head."):
        return None, "the same tensors as w2v_encoder.proj (shared module)"
    if inner.startswith(FINETUNE_UNUSED):
        return None, "pre-training head, unused by the fine-tuned model"
    ours, why = pretrained_key(inner, pre_ln)
    return (None if ours is None else "w2v_encoder.w2v_model." + ours), why


def st_key(key: str, pre_ln: bool, decoder_pre_ln: bool) -> Tuple[Optional[str], str]:
    """Official ``speechlm_st_legacy`` key -> (our ``speechlm_st`` key or None, reason)."""
    if key.startswith("encoder.w2v_model."):
        inner = key[len("encoder.w2v_model."):]
        if inner.startswith(FINETUNE_UNUSED + ("unit_encoder_ctc_head.",)):
            return None, "pre-training head, unused by the fine-tuned model"
        ours, why = pretrained_key(inner, pre_ln)
        return (None if ours is None else "encoder.speech.w2v_model." + ours), why
    if key in ("decoder.version", "decoder.embed_positions._float_tensor"):
        return None, "fairseq buffer, no weights"
    m = re.fullmatch(r"decoder\.layers\.(\d+)\.norm_k\.(weight|bias)", key)
    if m:
        if decoder_pre_ln:
            return key, "relative-key norm (pre-LN decoder)"
        return None, "norm_k of a post-LN decoder layer: the published forward never uses it"
    rules = [
        r"decoder\.embed_tokens\.weight", r"decoder\.output_projection\.weight", r"decoder\.embed_positions\.weight",
        r"decoder\.layernorm_embedding\.(weight|bias)", r"decoder\.layer_norm\.(weight|bias)",
        r"decoder\.pos_emb\.pe_k\.weight",
        r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(weight|bias)",
        r"decoder\.layers\.\d+\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)\.(weight|bias)",
        r"decoder\.layers\.\d+\.fc[12]\.(weight|bias)",
    ]
    for pattern in rules:
        if re.fullmatch(pattern, key):
            return key.replace("decoder.pos_emb.pe_k.weight", "decoder.relative_keys.weight"), "mapped"
    raise KeyError(key)


def map_state(src: str, sd: Dict[str, torch.Tensor], key_fn) -> Dict[str, torch.Tensor]:
    out, unknown, dropped = {}, [], {}
    for k, v in sd.items():
        try:
            ours, why = key_fn(k)
        except KeyError:
            unknown.append(k)
            continue
        if ours is None:
            dropped[k] = why
        else:
            out[ours] = v
    if unknown:
        raise ConvertError(f"{src}: {len(unknown)} key(s) this converter does not know: {unknown[:8]}; "
                           "is it a checkpoint of the published SpeechLM code?")
    if dropped:
        reasons = sorted(set(dropped.values()))
        logger.info("%s: dropped %d key(s) the converted model has no use for (%s)", src, len(dropped), "; ".join(reasons))
    return out


# ----------------------------------------------------------------------------------- configs
def _require(src: str, cfg, key: str, want, what: str):
    got = config_value(cfg, key)
    if got != want:
        raise ConvertError(f"{src}: model.{key}={got!r}, but this plugin's SpeechLM implements {what} "
                           f"({key}={want!r}); cannot convert")


def speechlm_config(src: str, m) -> dict:
    """Official ``speechlm`` model config -> this plugin's ``SpeechLMConfig`` fields (checked)."""
    tt = config_value(m, "text_transformer", {})
    enc = config_value(tt, "encoder", {})
    _require(src, m, "use_rel_pos_enc", True, "relative position keys")
    _require(src, m, "add_unit_encoder", True, "the Shared Transformer")
    _require(src, m, "use_pred_unit", False, "swapping with the frame's own unit")
    _require(src, m, "target_glu", False, "no target GLU")
    if config_value(m, "text_ctc_conv_kernel", 2) != 2:
        raise ConvertError(f"{src}: model.text_ctc_conv_kernel={config_value(m, 'text_ctc_conv_kernel')}: "
                           "the UCTC head here has the published kernel 2")
    D = int(config_value(m, "encoder_embed_dim", 768))
    for key, want in (("embed_dim", D), ("ffn_embed_dim", int(config_value(m, "encoder_ffn_embed_dim", 3072))),
                      ("attention_heads", int(config_value(m, "encoder_attention_heads", 12))),
                      ("normalize_before", bool(config_value(m, "layer_norm_first", False))), ("learned_pos", True)):
        if config_value(enc, key) != want:
            raise ConvertError(f"{src}: model.text_transformer.encoder.{key}={config_value(enc, key)!r} differs from the "
                               f"speech side ({want!r}); this plugin's Shared Transformer matches it")
    for key, want in (("max_source_positions", MAX_SHARED_POSITIONS), ("no_scale_embedding", True),
                      ("layernorm_embedding", True), ("no_token_positional_embeddings", False)):
        if config_value(tt, key) != want:
            raise ConvertError(f"{src}: model.text_transformer.{key}={config_value(tt, key)!r}; this plugin implements "
                               f"{key}={want!r} (the released models' value)")
    mix = bool(config_value(m, "mix_with_unit", True))
    mask_prob, mask_length = float(config_value(m, "mask_prob", 0.8)), int(config_value(m, "mask_length", 10))
    return {
        "extractor_mode": str(config_value(m, "extractor_mode", "default")),
        "conv_feature_layers": str(config_value(m, "conv_feature_layers")),
        "conv_bias": bool(config_value(m, "conv_bias", False)),
        "encoder_embed_dim": D,
        "encoder_ffn_embed_dim": int(config_value(m, "encoder_ffn_embed_dim", 3072)),
        "encoder_attention_heads": int(config_value(m, "encoder_attention_heads", 12)),
        "speech_encoder_layers": int(config_value(m, "encoder_layers", 12)),
        "shared_encoder_layers": int(config_value(enc, "layers", 6)),
        "activation_fn": str(config_value(m, "activation_fn", "gelu")),
        "layer_norm_first": bool(config_value(m, "layer_norm_first", False)),
        "dropout": float(config_value(m, "dropout", 0.1)),
        "attention_dropout": float(config_value(m, "attention_dropout", 0.1)),
        "activation_dropout": float(config_value(m, "activation_dropout", 0.0)),
        "encoder_layerdrop": float(config_value(m, "encoder_layerdrop", 0.0)),
        "dropout_input": float(config_value(m, "dropout_input", 0.0)),
        "feature_grad_mult": float(config_value(m, "feature_grad_mult", 1.0)),
        "conv_pos": int(config_value(m, "conv_pos", 128)),
        "conv_pos_groups": int(config_value(m, "conv_pos_groups", 16)),
        "final_dim": int(config_value(m, "final_dim", 256)) or D,
        "mask_prob": mask_prob,
        "mask_length": mask_length,
        "mask_selection": str(config_value(m, "mask_selection", "static")),
        "mask_other": float(config_value(m, "mask_other", 0.0)),
        "no_mask_overlap": bool(config_value(m, "no_mask_overlap", False)),
        "mask_min_space": int(config_value(m, "mask_min_space", 1)),
        "logit_temp": float(config_value(m, "logit_temp", 0.1)),
        "l2_embedding": bool(config_value(m, "l2_embedding", False)),
        "random_swap_prob": mask_prob / 2 if mix else 0.0,  # the published swap spans
        "random_swap_length": max(1, mask_length // 2),
        # the fp16 guard of the Shared Transformer's attention (Large: 32); no effect in float32
        "scaling_for_att": float(config_value(m, "scaling_for_att", 1.0)),
    }


def read_dictionary(path: Optional[str], flag: str, what: str, expected: int, src: str, weights: str):
    """``fairseq Dictionary`` from ``path`` whose size must equal ``expected`` (rows of ``weights``)."""
    from fairseq.data import Dictionary

    if not path:
        raise ConvertError(f"{src}: converting this checkpoint needs {what}: give it with {flag} FILE")
    if not os.path.isfile(path):
        raise ConvertError(f"{flag} {path}: file not found")
    try:
        d = Dictionary.load(path)
    except Exception as e:
        raise ConvertError(f"{flag} {path}: not a fairseq dictionary ('symbol count' per line): {e}") from None
    if len(d) != expected:
        raise ConvertError(
            f"{flag} {path}: {len(d)} symbols with fairseq's 4 specials, but {src} was trained with {expected} "
            f"({weights}); give the dictionary the model was trained with"
        )
    return d


# ----------------------------------------------------------------------------------- detection
def detect_layout(src: str, state: dict) -> str:
    keys = state["model"].keys()
    name = checkpoint_model_name(state)
    if any(k.startswith("w2v_encoder.w2v_model.unit_encoder.") for k in keys):
        return "asr"
    if any(k.startswith("encoder.w2v_model.unit_encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return "st"
    if any(k.startswith("unit_encoder.") for k in keys) and "label_embs_list.0" in keys:
        return "pretrained"
    if any(k.startswith("unit_encoder.layers.") for k in keys) and any(k.startswith("encoder.layers.") for k in keys) \
            and not any(k.startswith(CLEANED_REMOVED) for k in keys):
        return "cleaned"
    raise ConvertError(
        f"{src}: not a checkpoint of the published SpeechLM code (model {name!r}; expected the keys of a "
        "pre-trained model (unit_encoder.*, label_embs_list.*), a released cleaned one (encoder.*, "
        "unit_encoder.*, no label embeddings), an ASR fine-tune (w2v_encoder.w2v_model.*) or an ST fine-tune "
        "(encoder.w2v_model.*, decoder.*))"
    )


def _model_cfg_of_finetune(src, state):
    m = config_value(state["cfg"], "model")
    w2v = config_value(m, "w2v_args")
    if w2v is None or config_value(w2v, "model") is None:
        raise ConvertError(f"{src}: the fine-tuned checkpoint holds no model.w2v_args (the pre-trained config)")
    return m, config_value(w2v, "model"), config_value(w2v, "task", {})


def _checkpoint(cfg: dict, sd: dict, src: str, criterion: str) -> dict:
    return {
        "args": None,
        "cfg": cfg,
        "model": sd,
        "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "converted",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"converted_from": os.path.basename(src)},
        "last_optimizer_state": None,
    }


def _common():
    """The run-config sections a fairseq checkpoint carries that task configs interpolate from."""
    return {"_name": None, "common": {"seed": 1},
            "dataset": {"train_subset": "train", "valid_subset": "valid", "gen_subset": "test"}}


def convert_pretrained(src, state, dict_ltr, dict_units):
    m = config_value(state["cfg"], "model")
    task = config_value(state["cfg"], "task", {})
    pre_ln = bool(config_value(m, "layer_norm_first", False))
    cfg = speechlm_config(src, m)
    sd = map_state(src, state["model"], lambda k: pretrained_key(k, pre_ln))
    labels = list(config_value(task, "labels", ["phn"]))
    flag = "--dict-km" if labels and labels[0] == "km" else "--dict-phn"
    num_units = int(sd["unit_embed.weight"].shape[0])
    units = read_dictionary(dict_units, flag, "the unit dictionary (dict.phn.txt / dict.km.txt)", num_units, src,
                            "unit_embed_tokens.weight")
    letters = read_dictionary(dict_ltr, "--dict-ltr", "the letter dictionary (dict.ltr.txt)",
                              int(sd["uctc_head.proj.weight"].shape[0]), src, "the UCTC head's output layer")
    cfg["uctc_letters"] = list(letters.symbols)
    cfg["_name"] = "speechlm"
    _check_shapes(src, sd)
    task_cfg = {"_name": "speechlm_pretraining", "data": str(config_value(task, "data", "???")), "labels": labels[:1],
                "label_rate": int(config_value(task, "label_rate", config_value(m, "label_rate", 50))),
                "normalize": bool(config_value(task, "normalize", False)), "sample_rate": SAMPLE_RATE,
                "text_data": config_value(config_value(task, "text_cfg", {}), "text_data")}
    if task_cfg["label_rate"] != 50:
        raise ConvertError(f"{src}: label_rate={task_cfg['label_rate']}; this plugin's units are 50 Hz")
    out = _checkpoint({**_common(), "task": task_cfg, "model": cfg, "criterion": {"_name": "speechlm"}},
                      sd, src, "SpeechLMCriterion")
    return out, {"units": units, "letters": letters}


# the published modules the cleaned release removed (pre-training only); with any of them the file is a
# full pre-trained checkpoint
CLEANED_REMOVED = ("label_embs_list.", "unit_embed_tokens.", "unit_encoder_ctc_head.", "unit_encoder.embed_tokens.")
CLEANED_LACKS = ("the unit embedding (unit_embed_tokens)", "the UMLM label embeddings (label_embs_list)",
                 "the UCTC head (unit_encoder_ctc_head)")


def cleaned_key(key: str, pre_ln: bool) -> Tuple[Optional[str], str]:
    """Released cleaned key -> (our key or None, reason): the pre-trained map, without the UMLM projections."""
    if key.startswith("final_proj_list."):
        return None, "UMLM projection (final_proj_list): of no use without the label embeddings the release removed"
    return pretrained_key(key, pre_ln)


def convert_cleaned(src, state):
    """A released cleaned checkpoint -> the ``speechlm`` encoder alone (``pretraining_heads: false``).

    Returns ``(checkpoint, report)``; ``report["lacks"]`` names what the release removed and
    ``report["normalize"]`` the task's input normalisation (missing: False, said in ``report["notes"]``).
    """
    m = config_value(state["cfg"], "model")
    if m is None:
        raise ConvertError(f"{src}: no cfg.model (the published model config); is it a released SpeechLM checkpoint?")
    task = config_value(state["cfg"], "task", {})
    pre_ln = bool(config_value(m, "layer_norm_first", False))
    cfg = speechlm_config(src, m)
    sd = map_state(src, state["model"], lambda k: cleaned_key(k, pre_ln))
    cfg["pretraining_heads"] = False
    cfg["_name"] = "speechlm"
    _check_shapes(src, sd)
    notes = []
    normalize = config_value(task, "normalize")
    if normalize is None:
        notes.append("cfg.task.normalize is missing: taken as false (the released Base models' value; Large "
                     "models need true)")
    normalize = bool(normalize)
    task_cfg = {"_name": "speechlm_pretraining", "data": "???", "labels": ["phn"], "label_rate": 50,
                "normalize": normalize, "sample_rate": SAMPLE_RATE}
    out = _checkpoint({**_common(), "task": task_cfg, "model": cfg, "criterion": {"_name": "speechlm"}},
                      sd, src, "none (released cleaned checkpoint)")
    return out, {"lacks": list(CLEANED_LACKS), "normalize": normalize, "notes": notes}


def _finetune_spec(cfg: dict, num_units: int, num_letters: int, letters=None) -> dict:
    """The pre-trained model's spec that the fine-tuned model's config keeps (``model.pretrained_spec``)."""
    model_cfg = {**cfg, "_name": "speechlm"}
    if letters is not None:
        model_cfg["uctc_letters"] = list(letters.symbols)
    return PretrainedSpec(model_cfg, num_units, num_letters,
                          None if letters is None else tuple(letters.symbols)).to_dict()


def convert_asr(src, state, dict_ltr):
    ft, pre, pre_task = _model_cfg_of_finetune(src, state)
    pre_ln = bool(config_value(pre, "layer_norm_first", False))
    cfg = speechlm_config(src, pre)
    sd = map_state(src, state["model"], lambda k: ctc_key(k, pre_ln))
    letters = read_dictionary(dict_ltr, "--dict-ltr", "the letter dictionary (dict.ltr.txt)",
                              int(sd["ctc_head.proj.weight"].shape[0]), src, "the CTC head's output layer")
    spec = _finetune_spec(cfg, int(state["model"]["w2v_encoder.w2v_model.label_embs_list.0"].shape[0]),
                          len(letters), letters)
    model_cfg = {
        "_name": "speechlm_ctc", "w2v_path": str(config_value(ft, "w2v_path", src)), "pretrained_spec": spec,
        "no_pretrained_weights": False, "init_head_from_uctc": True,
        "dropout": float(config_value(ft, "dropout", 0.0)), "attention_dropout": float(config_value(ft, "attention_dropout", 0.0)),
        "activation_dropout": float(config_value(ft, "activation_dropout", 0.1)),
        "encoder_layerdrop": float(config_value(ft, "layerdrop", 0.1)),
        "dropout_input": float(config_value(ft, "dropout_input", 0.0)),
        "feature_grad_mult": float(config_value(ft, "feature_grad_mult", 0.0)),
        "final_dropout": float(config_value(ft, "final_dropout", 0.0)),
        "freeze_finetune_updates": int(config_value(ft, "freeze_finetune_updates", 0)),
        "apply_mask": bool(config_value(ft, "apply_mask", True)), "mask_prob": float(config_value(ft, "mask_prob", 0.65)),
        "mask_length": int(config_value(ft, "mask_length", 10)),
        "mask_channel_prob": float(config_value(ft, "mask_channel_prob", 0.0)),
        "mask_channel_length": int(config_value(ft, "mask_channel_length", 64)),
    }
    task = config_value(state["cfg"], "task", {})
    task_cfg = {"_name": "speechlm_pretraining", "data": str(config_value(task, "data", "???")), "fine_tuning": True,
                "labels": ["ltr"], "normalize": bool(config_value(task, "normalize", False)), "sample_rate": SAMPLE_RATE}
    out = _checkpoint({**_common(), "task": task_cfg, "model": model_cfg,
                       "criterion": {"_name": "ctc", "zero_infinity": True}}, sd, src, "CtcCriterion")
    return out, {"letters": letters}


def convert_st(src, state, dict_st):
    ft, pre, pre_task = _model_cfg_of_finetune(src, state)
    pre_ln = bool(config_value(pre, "layer_norm_first", False))
    dec_pre_ln = bool(config_value(ft, "decoder_normalize_before", False))
    if not config_value(ft, "use_rel_pos_enc", True):
        raise ConvertError(f"{src}: model.use_rel_pos_enc=false: this plugin's ST decoder has relative keys")
    cfg = speechlm_config(src, pre)
    sd = map_state(src, state["model"], lambda k: st_key(k, pre_ln, dec_pre_ln))
    vocab = int(sd["decoder.embed_tokens.weight"].shape[0])
    tgt = read_dictionary(dict_st, "--dict-st", "the ST target vocabulary (the release's spm_char_st_en_*.txt)",
                          vocab, src, "decoder.embed_tokens.weight")
    letters_rows = int(state["model"]["encoder.w2v_model.unit_encoder_ctc_head.5.weight"].shape[0]) \
        if "encoder.w2v_model.unit_encoder_ctc_head.5.weight" in state["model"] else 0
    spec = _finetune_spec(cfg, int(state["model"]["encoder.w2v_model.label_embs_list.0"].shape[0]), letters_rows)
    shared = bool(config_value(ft, "share_decoder_input_output_embed", False))
    if shared:
        sd.pop("decoder.output_projection.weight", None)
    model_cfg = {
        "_name": "speechlm_st", "w2v_path": str(config_value(ft, "w2v_path", src)), "pretrained_spec": spec,
        "dropout": float(config_value(ft, "dropout", 0.0)), "attention_dropout": float(config_value(ft, "attention_dropout", 0.0)),
        "activation_dropout": float(config_value(ft, "activation_dropout", 0.0)),
        "encoder_layerdrop": float(config_value(ft, "layerdrop", 0.0)),
        "feature_grad_mult": float(config_value(ft, "feature_grad_mult", 0.0)),
        "apply_mask": bool(config_value(ft, "apply_mask", False)), "mask_prob": float(config_value(ft, "mask_prob", 0.5)),
        "decoder_layers": int(config_value(ft, "decoder_layers", 6)),
        "decoder_embed_dim": int(config_value(ft, "decoder_embed_dim", 768)),
        "decoder_ffn_embed_dim": int(config_value(ft, "decoder_ffn_embed_dim", 3072)),
        "decoder_attention_heads": int(config_value(ft, "decoder_attention_heads", 12)),
        "decoder_normalize_before": dec_pre_ln,
        "decoder_learned_pos": bool(config_value(ft, "decoder_learned_pos", False)),
        "decoder_dropout": float(config_value(ft, "decoder_dropout", 0.0)),
        "decoder_attention_dropout": float(config_value(ft, "decoder_attention_dropout", 0.0)),
        "decoder_activation_dropout": float(config_value(ft, "decoder_activation_dropout", 0.0)),
        "decoder_layerdrop": float(config_value(ft, "decoder_layerdrop", 0.0)),
        "decoder_activation_fn": str(config_value(ft, "activation_fn", "gelu")),
        "share_decoder_input_output_embed": shared,
    }
    task = config_value(state["cfg"], "task", {})
    task_cfg = {"_name": "speech_to_text", "data": str(config_value(task, "data", "???")),
                "config_yaml": str(config_value(task, "config_yaml", "config.yaml"))}
    out = _checkpoint({**_common(), "task": task_cfg, "model": model_cfg,
                       "criterion": {"_name": "label_smoothed_cross_entropy"}}, sd, src, "LabelSmoothedCrossEntropy")
    return out, {"target": tgt}


def _check_shapes(src, sd):
    rel = sd.get("speech_encoder.relative_keys.weight")
    if rel is not None and rel.shape[0] != 2 * REL_POS_CLIP:
        raise ConvertError(f"{src}: encoder.pos_emb.pe_k has {rel.shape[0]} rows; the released models have "
                           f"{2 * REL_POS_CLIP} (distance clipped to +-{REL_POS_CLIP})")
    pos = sd.get("shared_encoder.embed_positions.weight")
    if pos is not None and pos.shape[0] != MAX_SHARED_POSITIONS + POSITION_PAD + 1:
        raise ConvertError(f"{src}: unit_encoder.embed_positions has {pos.shape[0]} rows, expected "
                           f"{MAX_SHARED_POSITIONS + POSITION_PAD + 1}")


def check_finite(src: str, sd: Dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or Inf (a diverged run, a damaged file), naming the first tensors."""
    bad = [(k, int((~torch.isfinite(v)).sum()), v.numel()) for k, v in sd.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        eg = ", ".join(f"{k} ({n} of {total})" for k, n, total in bad[:3])
        raise ConvertError(f"{src}: {len(bad)} of {len(sd)} weight tensors hold NaN or Inf values, e.g. {eg}; "
                           "the checkpoint is damaged or from a run that diverged: convert another one. Nothing "
                           "was written")


def check_destination(src: str, dst: str, overwrite: bool = False) -> None:
    """``dst`` must not be ``src`` (the released file would be replaced) nor, unless ``overwrite``, exist."""
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ConvertError(f"{dst}: is the checkpoint being converted ({src}); writing there would replace the "
                           "released checkpoint with the converted one: give another DST")
    if os.path.isdir(dst):
        raise ConvertError(f"{dst}: is a directory; give the file name to write (e.g. {dst}/converted.pt)")
    if os.path.exists(dst) and not overwrite:
        raise ConvertError(f"{dst}: already exists; give --overwrite to replace it, or another DST")


def convert(src: str, dst: str, dict_ltr: Optional[str] = None, dict_phn: Optional[str] = None,
            dict_km: Optional[str] = None, dict_st: Optional[str] = None, layout: Optional[str] = None,
            overwrite: bool = False, report: Optional[Dict] = None) -> str:
    """Convert ``src`` (published layout) to ``dst`` (this plugin's); returns the layout converted.

    ``dst`` may not be ``src``, nor an existing file unless ``overwrite``; weights holding NaN or Inf are
    refused. The result is checked by building this plugin's model from it and loading the weights strictly.
    ``report``, when given, receives what the converter found (a cleaned checkpoint: ``lacks``,
    ``normalize``, ``notes``; see ``cleaned_report``).
    """
    check_destination(src, dst, overwrite)
    state = read_checkpoint(src, bare=True)  # also a released cleaned {cfg, model} file
    check_finite(src, state["model"])
    found = detect_layout(src, state)
    if layout and layout != found:
        raise ConvertError(f"{src}: --layout {layout} given, but the file is a '{found}' checkpoint")
    found_report = {}
    if found == "pretrained":
        out, _ = convert_pretrained(src, state, dict_ltr, dict_phn or dict_km)
    elif found == "cleaned":
        out, found_report = convert_cleaned(src, state)
    elif found == "asr":
        out, _ = convert_asr(src, state, dict_ltr)
    else:
        out, _ = convert_st(src, state, dict_st)
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or ".", exist_ok=True)
    atomic_torch_save(out, dst)
    verify(dst, found)
    if found_report:
        logger.info("%s: released cleaned checkpoint; it lacks %s", src, ", ".join(found_report["lacks"]))
    if report is not None:
        report.update(found_report)
    return found


def cleaned_report(report: Dict) -> str:
    """The converter's words on a cleaned checkpoint: what it lacks, what it can and cannot do."""
    lines = [f"  it lacks {', '.join(report['lacks'])}: the release removed them (pre-training only);",
             "  it extracts features (every layer; the s3prl upstream speechlm.s3prl.UpstreamExpert) and fine-tunes "
             "(model.w2v_path=...); continued pre-training from it is refused",
             f"  task.normalize={str(report['normalize']).lower()}"
             + (" (waveforms are layer-normed before the model: features dump and the s3prl upstream do it)"
                if report["normalize"] else "")]
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def verify(path: str, layout: str) -> None:
    """Build this plugin's model from the converted file and load its weights strictly."""
    state = read_checkpoint(path)
    if layout in ("pretrained", "cleaned"):
        SpeechLMModel.from_checkpoint(path, state=state)
        return
    model = SpeechLMModel.from_spec(PretrainedSpec.from_dict(state["cfg"]["model"]["pretrained_spec"]))
    model.remove_pretraining_modules()
    prefix = "w2v_encoder.w2v_model." if layout == "asr" else "encoder.speech.w2v_model."
    inner = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    model.load_state_dict(inner, strict=True)
