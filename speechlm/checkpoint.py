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
import logging
import pickle
import typing

import numpy as np
import torch

from speechlm.errors import UserError

logger = logging.getLogger(__name__)


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
