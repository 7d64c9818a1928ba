"""Shims that let fairseq's distributed trainer run on CPU processes (gloo), applied at ``import speechlm``.

fairseq assumes CUDA in two places that are reached after the user dir is imported:

- ``ddp_backend=pytorch_ddp`` wraps the model in ``DistributedDataParallel(device_ids=[device_id])``,
  which torch rejects for a CPU module. The shim drops ``device_ids``/``output_device`` when the
  module lives on the CPU (what torch's docs prescribe for CPU modules); GPU runs are unchanged.
- ``all_gather_list`` (used by the trainer when a criterion's logging outputs cannot be summed)
  allocates a ``torch.cuda.ByteTensor``. Without CUDA the shim gathers with
  ``torch.distributed.all_gather_object`` instead.

What happens *before* the user dir is imported cannot be fixed here; start each CPU rank yourself:
``distributed_training.distributed_world_size=N distributed_init_method=tcp://HOST:PORT
distributed_rank=R distributed_no_spawn=true device_id=0 distributed_backend=gloo`` (see README).
"""
import functools
import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class CPUAwareDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DDP; ``device_ids``/``output_device`` are ignored for a module on the CPU."""

    def __init__(self, module, *args, device_ids=None, output_device=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        if on_cpu:
            device_ids = output_device = None
        super().__init__(module, *args, device_ids=device_ids, output_device=output_device, **kwargs)


def _cpu_all_gather_list(original):
    if getattr(original, "_speechlm_shim", False):
        return original

    @functools.wraps(original)
    def all_gather_list(data, group=None, max_size=16384):
        if torch.cuda.is_available():
            return original(data, group=group, max_size=max_size)
        from fairseq import utils
        from fairseq.distributed.utils import get_global_group, get_world_size

        if group is None:
            group = get_global_group()
        out = [None] * get_world_size(group=group)
        dist.all_gather_object(out, utils.move_to_cpu(data), group=group)
        return out

    all_gather_list._speechlm_shim = True
    return all_gather_list


def install():
    """Apply the shims (idempotent)."""
    import fairseq.distributed as fdist
    from fairseq.distributed import utils as dist_utils
    from fairseq.models import distributed_fairseq_model

    distributed_fairseq_model.DistributedDataParallel = CPUAwareDistributedDataParallel
    shim = _cpu_all_gather_list(dist_utils.all_gather_list)
    dist_utils.all_gather_list = shim
    fdist.all_gather_list = shim


install()
