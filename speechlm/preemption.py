"""Training that is stopped (Slurm preemption or time limit, ``kill``) saves its place; disk errors are clean.

``fairseq-hydra-train ... common.user_dir=speechlm`` imports the plugin inside fairseq's ``main()``;
:func:`install` (called by ``speechlm.register()`` when ``fairseq_cli.train`` is running) then wraps two of
that module's functions, which ``main()`` looks up at call time:

- ``validate_and_save``: after SIGTERM or SIGUSR1 (what Slurm sends before it kills or requeues a job;
  ``#SBATCH --signal=USR1@120`` asks for it ahead of the time limit) the update in progress finishes, then
  ``checkpoint_last.pt`` is saved (fairseq's ``save_checkpoint``, atomic through ``speechlm.checkpoint``,
  with the data iterator's position, so a resume continues at the same update and batch), a requeue is
  asked for under Slurm (``scontrol requeue $SLURM_JOB_ID``, as submitit's and Lightning's handlers do;
  ``SPEECHLM_NO_REQUEUE=1`` turns it off) and the process exits with status 128 + the signal number. With
  several ranks the flag is all-reduced every update, so every rank stops after the same update.
- ``train`` (and ``checkpoint_utils.verify_checkpoint_directory``, which ``main()`` calls first): an
  ``OSError`` the user can fix (disk full, read-only, not a directory) becomes the project's ``UserError``
  naming the path, printed without a traceback (:func:`speechlm.errors.os_error`).
"""
import logging
import os
import signal
import subprocess
import sys

from speechlm.errors import UserError, os_error, user_facing

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received = []  # signal numbers, in order


def _handler(signum, frame):
    if not _received:
        # the logging module is not safe inside a signal handler: one plain write
        os.write(2, f"speechlm: got {signal.Signals(signum).name}: saving checkpoint_last.pt after this "
                    "update, then exiting\n".encode())
    _received.append(signum)


def _stop_requested(trainer) -> int:
    """The signal to act on (0: none), the same on every rank."""
    sig = _received[0] if _received else 0
    world = getattr(trainer, "data_parallel_world_size", 1)
    if world > 1:
        import torch
        from fairseq.distributed import utils as dist

        t = torch.tensor([sig], dtype=torch.long, device=trainer.device)
        sig = int(dist.all_reduce(t, group=trainer.data_parallel_process_group, op="max").item())
    return sig


def _requeue(is_master: bool) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if not job or not is_master or os.environ.get("SPEECHLM_NO_REQUEUE", "") not in ("", "0"):
        return
    # an array task is requeued by its own id (what submitit does)
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{task}" if array_job and task else job
    try:
        p = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("could not ask Slurm to requeue job %s (%s); resubmit it to resume", target, e)
        return
    if p.returncode == 0:
        logger.info("asked Slurm to requeue job %s; it resumes from checkpoint_last.pt", target)
    else:
        logger.warning("scontrol requeue %s failed (%s); resubmit the job to resume", target,
                       (p.stderr or p.stdout).strip())


def _wrap_validate_and_save(original):
    def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        sig = _stop_requested(trainer)
        if not sig:
            return original(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
        from fairseq import checkpoint_utils
        from fairseq.distributed import utils as dist

        updates = trainer.get_num_updates()
        logger.warning("%s: saving %s/checkpoint_last.pt at update %d and stopping", signal.Signals(sig).name,
                       cfg.checkpoint.save_dir, updates)
        checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, None)
        _requeue(dist.is_master(cfg.distributed_training))
        logger.warning("stopped at update %d; run the same command again to resume", updates)
        logging.shutdown()
        raise SystemExit(128 + sig)

    validate_and_save.__wrapped__ = original
    return validate_and_save


def _wrap_train(original):
    def train(cfg, trainer, task, epoch_itr):
        try:
            return original(cfg, trainer, task, epoch_itr)
        except OSError as e:
            if isinstance(e, UserError) or not user_facing(e):
                raise
            raise os_error(e, cfg.checkpoint.save_dir, "checkpoint or training output") from None

    train.__wrapped__ = original
    return train


def _wrap_verify(original):
    def verify_checkpoint_directory(save_dir):
        try:
            return original(save_dir)
        except OSError as e:
            if isinstance(e, UserError) or not user_facing(e):
                raise
            raise os_error(e, save_dir, "checkpoint directory (checkpoint.save_dir)") from None

    verify_checkpoint_directory.__wrapped__ = original
    return verify_checkpoint_directory


def install() -> bool:
    """Wrap ``fairseq_cli.train``'s loop functions and catch SIGTERM/SIGUSR1 (idempotent). Only inside
    training (``fairseq_cli.train`` imported); returns whether it did."""
    mod = sys.modules.get("fairseq_cli.train")
    if mod is None or getattr(mod.validate_and_save, "__wrapped__", None) is not None:
        return False
    mod.validate_and_save = _wrap_validate_and_save(mod.validate_and_save)
    mod.train = _wrap_train(mod.train)
    from fairseq import checkpoint_utils

    checkpoint_utils.verify_checkpoint_directory = _wrap_verify(checkpoint_utils.verify_checkpoint_directory)
    for s in SIGNALS:
        try:
            signal.signal(s, _handler)
        except ValueError:  # not the main thread: the launcher's handlers stay
            logger.warning("cannot catch %s outside the main thread", signal.Signals(s).name)
    return True
