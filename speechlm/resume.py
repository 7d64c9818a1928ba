"""Resuming a run whose config changed says what changed and the way out, instead of fairseq's traceback.

fairseq resumes from ``checkpoint_last.pt`` in ``checkpoint.save_dir`` whatever the command line says now;
a model of another size fails deep inside ``load_state_dict`` ("please ensure that the architectures
match"), and a dictionary rewritten in another order loads silently and trains every symbol as another.
:func:`install` (called by ``speechlm.register()``) wraps ``Trainer.load_checkpoint``: the saved model
config is compared with the run's (every differing ``model.*`` setting is named, with both values) and the
saved dictionaries with the task's (``model.uctc_letters`` / ``model.target_symbols``); a mismatch is a
``UserError`` that names them and the ways out (the checkpoint's settings, or a new ``checkpoint.save_dir``).
Every checkpoint also records the plugin version that wrote it (``speechlm_version``, see
``speechlm.checkpoint``), named in the message when it differs from the running one.
"""
import functools
import logging
import os

from speechlm.errors import UserError

logger = logging.getLogger(__name__)

# filled at build time from the data, compared on their own (dictionaries), or bookkeeping
_NOT_SETTINGS = {"_name", "uctc_letters", "target_symbols", "pretrained_spec", "w2v_args", "w2v_path"}
_DICT_KEYS = ("uctc_letters", "target_symbols")


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else (node or {})


def _saved_state(path: str):
    """The checkpoint's config and version, cheaply (weights memory-mapped, not read)."""
    from speechlm.checkpoint import peek_checkpoint

    return peek_checkpoint(path)


def config_differences(saved_model: dict, current_model: dict):
    """``[(key, saved, current)]`` of the model settings that differ (build-time fields left out)."""
    out = []
    for k in sorted(set(saved_model) & set(current_model)):  # a key on one side only: another version's field
        if k in _NOT_SETTINGS:
            continue
        a, b = saved_model[k], current_model[k]
        if a != b:
            out.append((k, a, b))
    return out


def _message(path, state, trainer, detail: str = "") -> str:
    from speechlm import __version__
    from speechlm.dictionaries import first_difference

    saved = _plain((state.get("cfg") or {}).get("model"))
    current = _plain(trainer.cfg.model)
    parts = []
    for k in _DICT_KEYS:
        if saved.get(k) is not None and current.get(k) is not None:
            diff = first_difference(saved[k], current[k])
            if diff:
                parts.append(f"the dictionary behind model.{k} differs ({diff})")
    diffs = config_differences(saved, current)
    if diffs:
        parts.append("; ".join(f"model.{k}={a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:8])
                     + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""))
    version = state.get("speechlm_version")
    if version is None:
        parts.append(f"it was written by an earlier version of speechlm (no version recorded; this is {__version__})")
    elif version != __version__:
        parts.append(f"it was written by speechlm {version} (this is {__version__})")
    what = "; ".join(parts) or "the model built from this run's config does not fit its weights"
    return (
        f"{path}: cannot resume: {what}{(' [' + detail + ']') if detail else ''}. fairseq resumes from "
        f"{os.path.basename(path)} in checkpoint.save_dir whatever the command line says: to continue that run, "
        "use its settings and data; to train these settings, give a new checkpoint.save_dir (or start from its "
        "weights with checkpoint.restore_file=PATH checkpoint.reset_optimizer=true "
        "checkpoint.reset_dataloader=true checkpoint.reset_meters=true checkpoint.reset_lr_scheduler=true)"
    )


def _size_mismatch(e: BaseException) -> str:
    while e is not None:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing key" in ln
                 or "Unexpected key" in ln]
        if lines:
            return lines[0][:300]
        e = e.__cause__ or e.__context__
    return ""


def _wrap(load_fn):
    if getattr(load_fn, "_speechlm_resume_check", False):
        return load_fn

    @functools.wraps(load_fn)
    def load_checkpoint(self, filename, reset_optimizer=False, reset_lr_scheduler=False, optimizer_overrides=None,
                        reset_meters=False):
        resuming = not (reset_optimizer and reset_lr_scheduler and reset_meters) and os.path.isfile(str(filename))
        state = _saved_state(str(filename)) if resuming else None
        if state is not None:  # a dictionary in another order loads without error: compare them first
            saved, current = _plain((state.get("cfg") or {}).get("model")), _plain(self.cfg.model)
            from speechlm.dictionaries import first_difference

            if any(saved.get(k) is not None and current.get(k) is not None and first_difference(saved[k], current[k])
                   for k in _DICT_KEYS):
                raise UserError(_message(str(filename), state, self))
        try:
            return load_fn(self, filename, reset_optimizer, reset_lr_scheduler, optimizer_overrides, reset_meters)
        except Exception as e:
            if "Cannot load model parameters from checkpoint" not in str(e) or state is None:
                raise
            raise UserError(_message(str(filename), state, self, _size_mismatch(e))) from None

    load_checkpoint._speechlm_resume_check = True
    return load_checkpoint


def install() -> None:
    from fairseq.trainer import Trainer

    Trainer.load_checkpoint = _wrap(Trainer.load_checkpoint)
