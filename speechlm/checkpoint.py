"""The one reader of checkpoints, and what makes fairseq's checkpoints safe to load and to save.

Every loader in this package (pre-trained SpeechLM, the CTC and ST encoders' ``model.w2v_path``, SPLAT's
``init_from``, ``features dump``, ``convert``) reads a file with :func:`read_checkpoint`; ``install()``
(called by ``import speechlm``) applies the same protections to fairseq's own loader and saver, so
fine-tuning, resuming and ``fairseq-generate`` get them too.

Unpickling. torch >= 2.6 unpickles with ``weights_only=True`` by default. fairseq's checkpoints then fail
to load (``UnpicklingError: Weights only load failed``) because they hold a few non-tensor objects: the
hydra config as omegaconf containers (older checkpoints), ``argparse.Namespace`` (legacy ``args``), numpy
scalars in the meters and the best-metric value, occasionally a fairseq ``Dictionary``. Instead of
turning ``weights_only`` off -- which would let any checkpoint run arbitrary code -- we allow-list
exactly those classes (:func:`allowed_globals`). Anything else (say a pickled ``os.system`` call) is
refused and never executed.

Config strings. fairseq builds several models by ``eval`` of config strings saved in the checkpoint
(``conv_feature_layers`` of wav2vec 2.0 / HuBERT, ``adaptive_softmax_cutoff``, ...). A checkpoint that
passes the pickle allow-list (only strings and tensors) could still run code through them. Every
checkpoint loaded through fairseq's ``load_checkpoint_to_cpu`` has those strings checked by
:func:`check_config_strings` against a literal grammar (:func:`literal_spec`: ints, floats, bools, None,
lists, tuples, ``+``, ``*``) before fairseq sees them.

Saving. fairseq writes ``checkpoint_E_U.pt`` through ``torch_persistent_save`` (temp file + rename) and
then *copies* it to ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with a plain ``shutil.copyfile``: a
kill during that copy leaves a 0-byte or cut-short ``checkpoint_last.pt``. Here every write and every
copy goes to a temporary file in the same directory, is flushed to disk, then renamed over the target
(:func:`atomic_torch_save`, :func:`atomic_copy`), so a checkpoint file is always either the previous
complete one or the new complete one.

Resuming. If ``checkpoint_last.pt`` is damaged anyway (written by an older version, a full disk, a
copy by hand), the restart names it and resumes from the newest intact ``checkpoint*.pt`` in the save
dir, saying which and at which update (the next save replaces the damaged file). A damaged
checkpoint given anywhere else is a :class:`~speechlm.errors.UserError` naming the file instead of a
bare ``EOFError``.
"""
import argparse
import ast
import builtins
import collections
import contextlib
import functools
import glob
import logging
import os
import pickle
import re
import typing
import zipfile
from typing import Any, Optional

import numpy as np
import torch

from speechlm.errors import UserError, UserFileNotFoundError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- reading


def validate_state(path: str, state) -> None:
    """The one place a loaded checkpoint is checked before anything is built from it.

    Raises ``UserError`` naming ``path`` when the file is not a fairseq checkpoint dict.
    """
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict)")
    if state.get("cfg") is None:
        raise UserError(f"{path}: no 'cfg' in the checkpoint; is it a fairseq (hydra) checkpoint?")


def read_checkpoint(path: str, arg_overrides=None, bare: bool = False) -> dict:
    """The state dict of the fairseq checkpoint ``path`` (``{"cfg", "model", ...}``), validated.

    ``torch.load`` with ``weights_only`` and the allow-list, config strings checked, a damaged file or
    one that is not a fairseq checkpoint a ``UserError`` naming ``path``. ``bare``: also accept a file
    holding only ``{"cfg", "model"}`` (the published SpeechLM's released cleaned checkpoints), which
    fairseq's loader refuses (its upgrade step wants the trainer's ``optimizer_history``): it is returned
    as loaded; a trainer checkpoint then goes through fairseq's loader as usual.
    """
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: checkpoint not found")
    install()  # idempotent: also when the console script has not registered the plugin
    if bare:
        raw = read_torch_file(path)
        if isinstance(raw, dict) and "optimizer_history" not in raw and "args" not in raw:
            validate_state(path, raw)
            check_config_strings(raw["cfg"], path)
            return raw
        del raw
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
    validate_state(path, state)
    return state


def peek_checkpoint(path: str) -> Optional[dict]:
    """The checkpoint's dict with its tensors memory-mapped, not read (cheap: its config and counters), with
    the allow-list; None when the file cannot be read that way (the full read then says why)."""
    install()
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001  (the real load reports a damaged or unsafe file)
        return None
    return state if isinstance(state, dict) else None


def read_torch_file(path: str, what: str = "checkpoint") -> dict:
    """``torch.load`` (``weights_only``, the allow-list) of a torch file that is not a fairseq checkpoint (a
    phone recognizer, its resume state); a missing, damaged or unsafe file is a ``UserError`` naming it."""
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: {what} not found")
    reason = checkpoint_damage(path)
    if reason is not None:
        _raise_damaged(path, reason, what)
    install()
    try:
        return _refuse_clearly(torch.load)(path, map_location="cpu", weights_only=True)
    except (EOFError, zipfile.BadZipFile) as e:
        _raise_damaged(path, f"cannot be read ({type(e).__name__}: {e})", what)
    except RuntimeError as e:
        if "zip archive" in str(e) or "PytorchStreamReader" in str(e):
            _raise_damaged(path, f"cannot be read ({e})", what)
        raise


def config_value(node, key: str, default=None):
    """``node[key]`` of a config node (dict, ``DictConfig`` or a legacy ``argparse.Namespace``);
    ``default`` when the node or the key is missing or the value is None."""
    if node is None:
        return default
    value = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    return default if value is None else value


def checkpoint_model_name(state) -> Optional[str]:
    """The registered model name (``cfg.model._name``) a checkpoint was saved by, or None."""
    return config_value(config_value(state.get("cfg"), "model"), "_name")


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


# ---------------------------------------------------------------------------------------- unpickling


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


def _refuse_clearly(load_fn):
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


# ---------------------------------------------------------------------------------------- config strings

# Config keys that fairseq (or speechlm) turns into values with eval(): every str value under one of
# these names must be a literal of the small grammar below (grep of fairseq's models and optimizers for
# `eval(`; fconv_self_att's `pretrained`, which may also be a path, is left to the generic check).
EVALUATED_CONFIG_KEYS = frozenset({
    "conv_feature_layers", "conv_aggregator_layers", "character_filters", "encoder_layers",
    "decoder_layers", "encoder_attention", "decoder_attention", "self_attention", "project_input",
    "gated_attention", "downsample", "adaptive_softmax_cutoff", "adaptive_input_cutoff", "adam_betas",
})
MAX_SPEC_CHARS = 10000  # longer "layer specs" are not specs
MAX_SPEC_ITEMS = 100000  # `[(1,1,1)] * 10**12` must not exhaust memory


class UnsafeConfigError(UserError):
    """A checkpoint's config string is not a plain literal; nothing was evaluated."""


def literal_spec(text: str) -> Any:
    """Evaluate ``text`` by the grammar of layer specs, without ``eval``.

    ``expr := int | float | True | False | None | [expr, ...] | (expr, ...) | expr + expr | expr * int``
    (e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"`` -> a list of 5 tuples). Anything else (names, calls,
    attributes, subscripts, strings) raises ``ValueError`` saying what was found.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"{len(text)} characters is too long for a layer spec")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not a Python literal ({type(e).__name__})") from None

    def size(v):
        return len(v) if isinstance(v, (list, tuple)) else 1

    def ev(node):
        if isinstance(node, ast.Constant) and (node.value is None or type(node.value) in (int, float, bool)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = ev(node.operand)
            if type(v) in (int, float):
                return -v
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = ev(node.left), ev(node.right)
            if type(a) is type(b) and type(a) in (list, tuple, int, float):
                if size(a) + size(b) > MAX_SPEC_ITEMS:
                    raise ValueError("the spec is too large")
                return a + b
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, int) and isinstance(b, (list, tuple)):
                a, b = b, a
            if isinstance(a, (list, tuple)) and type(b) is int:
                if size(a) * max(b, 0) > MAX_SPEC_ITEMS:
                    raise ValueError("the spec is too large")
                return a * b
            if type(a) in (int, float) and type(b) in (int, float):
                return a * b
        what = type(node).__name__
        if isinstance(node, ast.Attribute):
            what = f"attribute .{node.attr}"
        elif isinstance(node, ast.Name):
            what = f"name {node.id!r}"
        elif isinstance(node, ast.Call):
            what = "a function call"
        raise ValueError(f"{what} is not allowed (only numbers, lists, tuples, + and *)")

    try:
        return ev(tree.body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_BUILTIN_NAMES = frozenset(dir(builtins))


def _looks_like_code(text: str) -> Optional[str]:
    """Why ``text`` (any other config string) looks like code that an ``eval`` would run, or None.

    Paths and names (``exp/run.v2``, ``data(1)``) pass; calls of builtins or of attributes, and dunder
    attributes (``().__class__...``) do not.
    """
    if "(" not in text and "__" not in text:
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            return f"dunder attribute .{node.attr}"
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                return f"a call of .{node.func.attr}()"
            if isinstance(node.func, ast.Name) and node.func.id in _BUILTIN_NAMES:
                return f"a call of {node.func.id}()"
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp)):
            return type(node).__name__
    return None


def _walk(cfg, prefix=""):
    """``(dotted key, value)`` for every leaf of a dict / DictConfig / Namespace / list (no interpolation)."""
    from argparse import Namespace

    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, Namespace):
        cfg = vars(cfg)
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, cfg


def check_config_strings(cfg, path: str = "<config>") -> None:
    """Raise :class:`UnsafeConfigError` (naming ``path`` and the key) if a config string is not safe to
    hand to fairseq: keys in :data:`EVALUATED_CONFIG_KEYS` must be literals of :func:`literal_spec`,
    other strings must not look like code. ``cfg``: a checkpoint's ``cfg`` or legacy ``args``."""
    for key, value in _walk(cfg):
        if not isinstance(value, str):
            continue
        leaf = re.split(r"[.\[]", key)[-1]
        reason = None
        if leaf in EVALUATED_CONFIG_KEYS and not re.fullmatch(r"[\w\-]*", value):
            try:
                literal_spec(value)
            except ValueError as e:
                reason = str(e)
        elif leaf not in EVALUATED_CONFIG_KEYS:
            reason = _looks_like_code(value)
        if reason:
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise UnsafeConfigError(
                f"{path}: refused: config string {key}={shown!r} is not a plain literal ({reason}); "
                "fairseq would evaluate it as code. Nothing was evaluated. Layer specs look like "
                "'[(512,10,5)] + [(512,3,2)] * 4'; use a checkpoint from a source you trust."
            )


# ---------------------------------------------------------------------------------------- damage


def checkpoint_damage(path: str, full: bool = False) -> Optional[str]:
    """Why the file at ``path`` is not a complete torch checkpoint, or None if it looks intact.

    Checks the zip container torch writes (a file cut short loses its central directory at the end)
    and, with ``full``, every member's CRC (reads the whole file); legacy (non-zip) files are only
    checked for being non-empty. Never unpickles.
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty (0 bytes; a save was interrupted)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK":  # torch's legacy format: nothing cheap to check
        return None if head[:1] == b"\x80" else "is not a torch checkpoint (unknown format)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip() if full else None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is truncated or corrupt ({size} bytes; {e}; a save was interrupted)"
    if bad is not None:
        return f"is corrupt (member {bad} fails its CRC check)"
    return None


def _raise_damaged(path: str, reason: str, what: str = "checkpoint"):
    raise UserError(
        f"{path}: damaged {what}: it {reason}. Re-create it (re-run the step that wrote it), or point "
        "at another checkpoint."
    )


# ---------------------------------------------------------------------------------------- saving


def _fsync_replace(tmp: str, dst: str) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(dst)) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _tmp_name(dst: str) -> str:
    from speechlm.atomic import temp_name

    return temp_name(dst)  # unique per process and call: two writers never share a temporary file


def stamp_version(obj) -> None:
    """Record the plugin version that writes a checkpoint (``speechlm_version``), so a later version can
    say so instead of failing on a config key it no longer knows (``speechlm.resume``)."""
    if isinstance(obj, dict) and "model" in obj:
        from speechlm import __version__

        obj.setdefault("speechlm_version", __version__)


def _disk_full(e: OSError, dst: str) -> None:
    """A full disk or quota while writing ``dst`` is the user's to fix: say so (the old file is intact)."""
    import errno

    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        raise UserError(
            f"{dst}: no space left on the device while writing this checkpoint ({e.strerror}); the previous "
            f"{os.path.basename(dst)} (if any) is intact. Free space in {os.path.dirname(os.path.abspath(dst))} "
            "(or keep fewer checkpoints: checkpoint.keep_interval_updates) and run again to resume."
        ) from None


def atomic_copy(src: str, dst: str) -> bool:
    """Copy ``src`` to ``dst`` through a temporary file and a rename; True on success."""
    import shutil

    with _atomic_target(dst) as tmp:
        shutil.copyfile(src, tmp)
    return True


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed onto ``path``: a kill leaves the old file."""
    import torch

    stamp_version(obj)
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def _atomic_target(dst: str):
    """Yield a temporary path beside ``dst``; on success fsync it and rename it onto ``dst``. The temporary
    file never outlives the block, and a full disk becomes a UserError saying ``dst`` is intact."""
    tmp = _tmp_name(dst)
    try:
        yield tmp
        _fsync_replace(tmp, dst)
    except OSError as e:
        _disk_full(e, dst)
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _wrap_persistent_save(save_fn):
    if getattr(save_fn, "_speechlm_atomic", False):
        return save_fn

    @functools.wraps(save_fn)
    def torch_persistent_save(obj, filename, async_write: bool = False):
        from fairseq.file_io import PathManager

        if async_write or not isinstance(filename, str) or PathManager.path_requires_pathmanager(filename):
            return save_fn(obj, filename, async_write=async_write)
        import torch

        stamp_version(obj)
        with _atomic_target(filename) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)

    torch_persistent_save._speechlm_atomic = True
    return torch_persistent_save


def _atomic_path_manager(pm):
    """fairseq's PathManager with ``copy`` made atomic for local paths (used for checkpoint_last/best)."""
    if getattr(pm, "_speechlm_atomic", False):
        return pm

    class AtomicCopyPathManager(pm):
        _speechlm_atomic = True

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if pm.path_requires_pathmanager(src_path) or pm.path_requires_pathmanager(dst_path):
                return pm.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            return atomic_copy(src_path, dst_path)

    return AtomicCopyPathManager


# ---------------------------------------------------------------------------------------- resuming


def _update_of(path: str) -> int:
    m = re.search(r"checkpoint_\d+_(\d+)\.pt$", os.path.basename(path))
    return int(m.group(1)) if m else -1


def newest_intact_checkpoint(save_dir: str, exclude=()) -> Optional[str]:
    """The newest (by modification time, then update count) intact ``checkpoint*.pt`` in ``save_dir``."""
    exclude = {os.path.abspath(p) for p in exclude}
    cands = [p for p in glob.glob(os.path.join(save_dir, "checkpoint*.pt")) if os.path.abspath(p) not in exclude]
    cands.sort(key=lambda p: (os.path.getmtime(p), _update_of(p)), reverse=True)
    for p in cands:
        if checkpoint_damage(p, full=True) is None:
            return p
    return None


def _wrap_load_checkpoint(load_fn):
    """``checkpoint_utils.load_checkpoint`` (the trainer's resume): skip a damaged checkpoint_last."""
    if getattr(load_fn, "_speechlm_resume", False):
        return load_fn

    @functools.wraps(load_fn)
    def load_checkpoint(cfg, trainer, **passthrough_args):
        from omegaconf import open_dict

        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        if cfg.restore_file != "checkpoint_last.pt":
            return load_fn(cfg, trainer, **passthrough_args)
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        reason = checkpoint_damage(last, full=True) if os.path.exists(last) else None
        if reason is None:
            return load_fn(cfg, trainer, **passthrough_args)
        intact = newest_intact_checkpoint(cfg.save_dir, exclude=[last])
        if intact is None:
            raise UserError(
                f"{last}: cannot resume: it {reason}, and {cfg.save_dir} holds no other intact "
                "checkpoint. Delete it to start from scratch, or give one with checkpoint.restore_file=PATH."
            )
        # left in place (every rank must see the same files); the next save replaces it
        logger.warning(
            f"{last} {reason}; resuming from the newest intact checkpoint {intact}"
            + (f" (update {_update_of(intact)})" if _update_of(intact) >= 0 else "")
        )
        old = cfg.restore_file
        with open_dict(cfg):
            cfg.restore_file = intact
        try:
            return load_fn(cfg, trainer, **passthrough_args)
        finally:
            with open_dict(cfg):
                cfg.restore_file = old

    load_checkpoint._speechlm_resume = True
    return load_checkpoint


# Model config keys this plugin renamed, so that checkpoints saved before the rename still load:
# {model name: {old key: new key}}. The fine-tuned models' pre-trained spec was ``w2v_args`` (the published
# code's name, where it holds the pre-training *args*; its checkpoints are told apart by their content).
RENAMED_MODEL_CONFIG_KEYS = {
    "speechlm_ctc": {"w2v_args": "pretrained_spec"},
    "speechlm_st": {"w2v_args": "pretrained_spec"},
}


def upgrade_renamed_config_keys(state: dict) -> None:
    """Rename (in place) the model config keys of :data:`RENAMED_MODEL_CONFIG_KEYS` in a loaded checkpoint.

    A checkpoint of the published SpeechLM code also names its model ``speechlm_ctc`` and holds a
    ``w2v_args`` of another kind (``{"model", "task"}``, no ``num_units``): it is left as it is, for
    ``speechlm convert``.
    """
    from omegaconf import OmegaConf, open_dict

    model = config_value(state.get("cfg"), "model")
    for old, new in RENAMED_MODEL_CONFIG_KEYS.get(config_value(model, "_name"), {}).items():
        if not hasattr(model, "get") or old not in model or new in model:
            continue
        value = model[old]
        if value is not None and "num_units" not in value:
            continue  # not ours (the published code's pre-training args)
        if OmegaConf.is_config(model):
            with open_dict(model):
                model[new] = model.pop(old)
        else:
            model[new] = model.pop(old)


def _wrap_load_to_cpu(load_fn):
    """``load_checkpoint_to_cpu``: a damaged file is a UserError; config strings are checked."""
    if getattr(load_fn, "_speechlm_checked", False):
        return load_fn

    @functools.wraps(load_fn)
    def load_checkpoint_to_cpu(path, arg_overrides=None, *args, **kwargs):
        if isinstance(path, str) and os.path.isfile(path):
            reason = checkpoint_damage(path)
            if reason is not None:
                _raise_damaged(path, reason)
        try:
            state = load_fn(path, arg_overrides, *args, **kwargs)
        except (EOFError, zipfile.BadZipFile) as e:
            _raise_damaged(str(path), f"cannot be read ({type(e).__name__}: {e})")
        except RuntimeError as e:
            if "zip archive" in str(e) or "PytorchStreamReader" in str(e):
                _raise_damaged(str(path), f"cannot be read ({e})")
            raise
        for key in ("cfg", "args"):
            if isinstance(state, dict) and state.get(key) is not None:
                check_config_strings(state[key], str(path))
        if isinstance(state, dict):
            upgrade_renamed_config_keys(state)
        return state

    load_checkpoint_to_cpu._speechlm_checked = True
    return load_checkpoint_to_cpu


# ---------------------------------------------------------------------------------------- install


def allow(*classes):
    """Extend the allow-list for checkpoints you trust (e.g. a custom class in your own plugin)."""
    torch.serialization.add_safe_globals(list(classes))


def install() -> None:
    """Apply everything above to fairseq (idempotent; called by ``import speechlm``): the allow-list and a
    clear refusal, atomic saves, resuming past a damaged checkpoint_last, checked config strings."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(allowed_globals())
    from fairseq import checkpoint_utils

    checkpoint_utils.load_checkpoint_to_cpu = _refuse_clearly(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.torch_persistent_save = _wrap_persistent_save(checkpoint_utils.torch_persistent_save)
    checkpoint_utils.PathManager = _atomic_path_manager(checkpoint_utils.PathManager)
    checkpoint_utils.load_checkpoint = _wrap_load_checkpoint(checkpoint_utils.load_checkpoint)
    checkpoint_utils.load_checkpoint_to_cpu = _wrap_load_to_cpu(checkpoint_utils.load_checkpoint_to_cpu)
