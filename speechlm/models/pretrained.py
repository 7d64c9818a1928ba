"""What a pre-trained SpeechLM is: :class:`PretrainedSpec`, read from a ``speechlm`` checkpoint.

A pre-trained (or converted) ``speechlm`` checkpoint is described by its model config, the sizes of its
unit and letter vocabularies and the letters its UCTC head predicts. The fine-tuned models (CTC, ST) keep
the spec in their config (``model.pretrained_spec``), so a fine-tuned checkpoint rebuilds its encoder
without the pre-trained file. ``SpeechLMModel.from_spec`` builds the (untrained) model a spec describes,
``SpeechLMModel.from_checkpoint`` loads one.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from speechlm.checkpoint import checkpoint_model_name, config_value, read_checkpoint
from speechlm.errors import UserError

# the published code's pre-training task: its checkpoints need `speechlm convert` first
OFFICIAL_TASKS = ("joint_sc2t_pretraining",)


def is_official_layout(state) -> bool:
    """True for a checkpoint written by the published SpeechLM code (microsoft/unilm ``speechlm/``)."""
    task = config_value(config_value(state.get("cfg"), "task"), "_name")
    return task in OFFICIAL_TASKS or any(
        k.startswith(("unit_encoder.", "encoder.w2v_model.unit_encoder.", "w2v_encoder.w2v_model.unit_encoder."))
        for k in state["model"]
    )


def _plain(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node


def _check_known_keys(path: str, state: dict, model_cfg: dict) -> None:
    """A checkpoint whose model config holds a key this version's ``SpeechLMConfig`` lacks was written by
    another version of the plugin: say so, instead of omegaconf's ``ConfigKeyError`` later."""
    import dataclasses

    from fairseq.models import MODEL_DATACLASS_REGISTRY

    from speechlm import __version__

    # the config the registered "speechlm" model takes (importing speechlm.models registers it), looked up
    # by name as fairseq builds models: models/speechlm.py imports this module, not the other way round
    known = {f.name for f in dataclasses.fields(MODEL_DATACLASS_REGISTRY["speechlm"])} | {"_name"}
    unknown = sorted(k for k in model_cfg if k not in known)
    if not unknown:
        return
    version = state.get("speechlm_version")
    who = (f"speechlm {version}" if version else "an earlier version of speechlm (no version recorded in it)")
    raise UserError(
        f"{path}: written by {who}; this is speechlm {__version__}, whose SpeechLMConfig has no "
        f"{', '.join(repr(k) for k in unknown[:5])} (renamed or removed since). Load it with the version that "
        "wrote it, or re-create it with this one (pre-train again, or `speechlm convert` a released checkpoint)"
    )


@dataclass(frozen=True)
class PretrainedSpec:
    """A pre-trained ``speechlm`` model's architecture and vocabularies (no weights).

    ``model_cfg``: its ``SpeechLMConfig`` fields as a plain dict (``_name: speechlm``); ``num_units``: rows
    of the unit embedding; ``num_letters``: outputs of the UCTC head (0: none); ``letters``: the symbols of
    the letter dictionary the UCTC head was trained on, or None when the checkpoint does not list them.
    Saved in a fine-tuned model's config as :meth:`to_dict` (keys ``model``, ``num_units``, ``num_letters``,
    ``letters``).
    """

    model_cfg: Dict[str, Any]
    num_units: int
    num_letters: int
    letters: Optional[Tuple[str, ...]] = None

    def to_dict(self) -> dict:
        return {"model": dict(self.model_cfg), "num_units": self.num_units, "num_letters": self.num_letters,
                "letters": None if self.letters is None else list(self.letters)}

    @classmethod
    def from_dict(cls, d) -> "PretrainedSpec":
        """From :meth:`to_dict`'s dict (or the ``DictConfig`` a checkpoint's config holds)."""
        d = _plain(d)
        letters = d.get("letters")
        return cls(dict(d["model"]), int(d["num_units"]), int(d["num_letters"]),
                   None if letters is None else tuple(letters))

    @classmethod
    def from_checkpoint(cls, path: str, state: dict) -> "PretrainedSpec":
        """The spec of the loaded ``speechlm`` checkpoint ``state`` (read from ``path``).

        Raises ``UserError`` naming ``path`` for a checkpoint of another model, of the published code
        (convert it first) or one whose UCTC letters disagree with its head.
        """
        name = checkpoint_model_name(state)
        if is_official_layout(state):
            raise UserError(
                f"{path}: a checkpoint of the published SpeechLM code (task 'joint_sc2t_pretraining'); convert "
                f"it first: speechlm convert {path} OUT.pt --dict-ltr dict.ltr.txt --dict-phn dict.phn.txt "
                "(or --dict-km dict.km.txt)"
            )
        if name != "speechlm":
            raise UserError(f"{path}: is a checkpoint of model {name!r}, not 'speechlm' (a pre-trained SpeechLM)")
        weights = state["model"]
        model_cfg = _plain(state["cfg"]["model"])
        _check_known_keys(path, state, model_cfg)
        cleaned = model_cfg.get("pretraining_heads") is False  # a released cleaned checkpoint, converted
        if "unit_embed.weight" not in weights and not cleaned:
            raise UserError(f"{path}: no 'unit_embed.weight': not a pre-trained 'speechlm' state dict")
        letters = model_cfg.get("uctc_letters")
        num_letters = int(weights["uctc_head.proj.weight"].shape[0]) if "uctc_head.proj.weight" in weights else 0
        if letters is not None and len(letters) != num_letters:
            raise UserError(f"{path}: the UCTC head predicts {num_letters} letters but the checkpoint lists "
                            f"{len(letters)} letter symbols")
        return cls(dict(model_cfg), 0 if cleaned else int(weights["unit_embed.weight"].shape[0]), num_letters,
                   None if letters is None else tuple(letters))

    @classmethod
    def read(cls, path: str) -> Tuple["PretrainedSpec", Dict]:
        """``(spec, weights)`` of the ``speechlm`` checkpoint ``path``, through the one reader."""
        state = read_checkpoint(path)
        return cls.from_checkpoint(path, state), state["model"]
