"""Safe loading of fairseq checkpoints under torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True`` by default. fairseq's checkpoints then fail to load
(``UnpicklingError: Weights only load failed``) because they hold a few non-tensor objects: the hydra
config as omegaconf containers (older checkpoints), ``argparse.Namespace`` (legacy ``args``), numpy
scalars in the meters and the best-metric value, occasionally a fairseq ``Dictionary``. Instead of
turning ``weights_only`` off -- which would let any checkpoint run arbitrary code -- we allow-list
exactly those classes. Anything else (say a pickled ``os.system`` call) is refused and never executed.

``install()`` is called by ``import speechlm``; it is idempotent. It covers every place fairseq loads a
checkpoint (``checkpoint_utils.load_checkpoint_to_cpu``, the average/upgrade helpers and the
distributed broadcast of the checkpoint state), because all of them go through ``torch.load`` with
the default ``weights_only``.
"""
import argparse
import collections
import functools
import pickle
import typing
from typing import Optional

import numpy as np
import torch

from speechlm.errors import UserError


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list; nothing in it was executed."""


def _numpy_globals():
    """numpy scalars and arrays as pickle writes them, under numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    out = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((multiarray.scalar, f"{mod}.scalar"))
        out.append((multiarray._reconstruct, f"{mod}._reconstruct"))
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (numpy.dtypes.Float64DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def _omegaconf_globals():
    import omegaconf
    from omegaconf import base, nodes

    out = [omegaconf.DictConfig, omegaconf.ListConfig, base.ContainerMetadata, base.Metadata]
    out += [
        getattr(nodes, n)
        for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
                  "PathNode", "EnumNode", "InterpolationResultNode")
        if hasattr(nodes, n)
    ]
    return out


def _fairseq_globals():
    from fairseq.data.dictionary import Dictionary

    return [Dictionary]


def allowed_globals():
    """The full allow-list: exactly what fairseq (and speechlm) checkpoints contain."""
    builtins_ = [dict, list, tuple, set, int, float, str, bool, bytes, type(None), object]
    return (
        builtins_
        + [typing.Any, argparse.Namespace, collections.OrderedDict, collections.defaultdict]
        + _numpy_globals()
        + _omegaconf_globals()
        + _fairseq_globals()
    )


def _wrap_load(load_fn):
    """Turn torch's refusal into an error that names the file and says what happened."""
    if getattr(load_fn, "_speechlm_safe", False):
        return load_fn

    @functools.wraps(load_fn)
    def load(path, *args, **kwargs):
        try:
            return load_fn(path, *args, **kwargs)
        except pickle.UnpicklingError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln]
            reason = lines[0] if lines else str(e).splitlines()[0]
            raise UnsafeCheckpointError(
                f"{path}: refused to load this checkpoint: it holds an object outside the classes "
                f"fairseq checkpoints contain ({reason}). Nothing in it was executed. If you wrote "
                "this file yourself and trust it, allow the class with "
                "speechlm.checkpoint.allow(SomeClass) before loading."
            ) from None

    load._speechlm_safe = True
    return load


def allow(*classes):
    """Extend the allow-list for checkpoints you trust (e.g. a custom class in your own plugin)."""
    torch.serialization.add_safe_globals(list(classes))


def install():
    """Allow-list fairseq's checkpoint classes and give fairseq's loader a clear refusal message."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(allowed_globals())
    from fairseq import checkpoint_utils

    checkpoint_utils.load_checkpoint_to_cpu = _wrap_load(checkpoint_utils.load_checkpoint_to_cpu)
    from speechlm import checkpoint_io

    checkpoint_io.install()  # atomic saves, resume past a damaged checkpoint_last, safe config strings


# ---------------------------------------------------------------------------------------------------
# The one loader of a pre-trained SpeechLM: SpeechLMModel.from_checkpoint, the CTC and ST encoders
# (model.w2v_path) and the feature dumper all go through ``read_checkpoint`` / ``load_pretrained``.

OFFICIAL_TASKS = ("joint_sc2t_pretraining",)


def validate_state(path: str, state) -> None:
    """The one place a loaded checkpoint is checked before anything is built from it.

    Raises ``UserError`` naming ``path`` when the file is not a fairseq checkpoint dict.
    """
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict)")
    if state.get("cfg") is None:
        raise UserError(f"{path}: no 'cfg' in the checkpoint; is it a fairseq (hydra) checkpoint?")


def read_checkpoint(path: str, arg_overrides=None) -> dict:
    """``torch.load`` (weights_only, allow-listed classes) of a fairseq checkpoint, validated."""
    import os

    from fairseq import checkpoint_utils

    from speechlm.errors import UserFileNotFoundError

    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: checkpoint not found")
    install()  # idempotent: also when the console script has not registered the plugin
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
    validate_state(path, state)
    return state


def _cfg_get(node, key, default=None):
    try:
        value = node.get(key, default) if node is not None else default
    except Exception:  # an argparse Namespace (legacy checkpoints)
        value = getattr(node, key, default)
    return default if value is None else value


def checkpoint_model_name(state) -> Optional[str]:
    return _cfg_get(_cfg_get(state.get("cfg"), "model"), "_name")


def is_official_layout(state) -> bool:
    """True for a checkpoint written by the published SpeechLM code (microsoft/unilm ``speechlm/``)."""
    task = _cfg_get(_cfg_get(state.get("cfg"), "task"), "_name")
    return task in OFFICIAL_TASKS or any(
        k.startswith(("unit_encoder.", "encoder.w2v_model.unit_encoder.", "w2v_encoder.w2v_model.unit_encoder."))
        for k in state["model"]
    )


def pretrained_spec(path: str, state) -> dict:
    """``{"model": model cfg dict, "num_units", "num_letters", "letters"}`` of a ``speechlm`` checkpoint.

    ``letters``: the symbols of the letter dictionary the UCTC head was trained on (saved in the
    checkpoint's model config), or None. Raises ``UserError`` naming the file otherwise.
    """
    from omegaconf import OmegaConf

    name = checkpoint_model_name(state)
    if is_official_layout(state):
        raise UserError(
            f"{path}: a checkpoint of the published SpeechLM code (task 'joint_sc2t_pretraining'); convert "
            f"it first: speechlm convert {path} OUT.pt --dict-ltr dict.ltr.txt --dict-phn dict.phn.txt "
            "(or --dict-km dict.km.txt)"
        )
    if name != "speechlm":
        raise UserError(f"{path}: is a checkpoint of model {name!r}, not 'speechlm' (a pre-trained SpeechLM)")
    sd = state["model"]
    model_cfg = state["cfg"]["model"]
    model_cfg = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True) \
        if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    if "unit_embed.weight" not in sd:
        raise UserError(f"{path}: no 'unit_embed.weight': not a pre-trained 'speechlm' state dict")
    letters = model_cfg.get("uctc_letters")
    num_letters = int(sd["uctc_head.proj.weight"].shape[0]) if "uctc_head.proj.weight" in sd else 0
    if letters is not None and len(letters) != num_letters:
        raise UserError(f"{path}: the UCTC head predicts {num_letters} letters but the checkpoint lists "
                         f"{len(letters)} letter symbols")
    return {
        "model": model_cfg,
        "num_units": int(sd["unit_embed.weight"].shape[0]),
        "num_letters": num_letters,
        "letters": None if letters is None else list(letters),
    }


def build_from_spec(spec: dict, overrides: Optional[dict] = None):
    """An untrained ``SpeechLMModel`` of the architecture ``spec`` describes (``overrides`` win)."""
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    cfg = OmegaConf.merge(
        OmegaConf.structured(SpeechLMConfig),
        {k: v for k, v in spec["model"].items() if k != "_name"},
        overrides or {},
    )
    return SpeechLMModel(cfg, spec["num_units"], Dictionary().pad(), spec["num_letters"])


def load_pretrained(path: str, arg_overrides: Optional[dict] = None):
    """``(SpeechLMModel, state dict)`` of a pre-trained ``speechlm`` checkpoint (weights not loaded)."""
    state = read_checkpoint(path)
    spec = pretrained_spec(path, state)
    overrides = {k: v for k, v in (arg_overrides or {}).items() if k in spec["model"] or k == "uctc_letters"}
    return build_from_spec(spec, overrides), state["model"]


def store_in_saved_config(cfg, key: str, value) -> None:
    """Put ``key: value`` into the config the trainer saves in every checkpoint.

    fairseq builds a model from a merged copy of ``cfg.model``; the copy keeps the parent of the
    original (the whole run config, which ``Trainer.state_dict`` saves), so the original ``model``
    node is reached through it.
    """
    from omegaconf import OmegaConf, open_dict

    parent = cfg._get_parent() if OmegaConf.is_config(cfg) else None
    if parent is not None and "model" in parent and parent.model is not cfg:
        with open_dict(parent.model):
            parent.model[key] = value
