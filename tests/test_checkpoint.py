"""Checkpoints written by fairseq-hydra-train load safely under torch >= 2.6; training resumes;
a malicious checkpoint is refused without running its code."""
import argparse
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LM_CONFIG = """\
# @package _global_
task: {_name: language_modeling, data: '???', tokens_per_sample: 32}
model: {_name: transformer_lm, decoder_layers: 1, decoder_embed_dim: 16,
        decoder_ffn_embed_dim: 32, decoder_attention_heads: 2}
criterion: {_name: cross_entropy}
optimizer: {_name: adam}
lr_scheduler: {_name: fixed}
optimization: {lr: [0.001], max_update: 2}
dataset: {batch_size: 4, num_workers: 0}
common: {cpu: true, log_interval: 1, seed: 1}
checkpoint: {save_dir: '???'}
distributed_training: {distributed_world_size: 1}
"""


def _train(workdir, max_update):
    cmd = [
        str(BIN / "fairseq-hydra-train"), "--config-dir", str(workdir), "--config-name", "lm",
        f"task.data={workdir / 'bin'}", f"checkpoint.save_dir={workdir / 'ckpt'}",
        f"optimization.max_update={max_update}", f"common.user_dir={REPO / 'speechlm'}",
        f"hydra.run.dir={workdir / 'hydra'}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, mini_corpus):
    """A real fairseq-hydra-train run (2 updates) of a tiny LM on the mini corpus's unpaired text."""
    work = tmp_path_factory.mktemp("lm")
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:200]
    (work / "train.txt").write_text("\n".join(lines[:150]) + "\n")
    (work / "valid.txt").write_text("\n".join(lines[150:]) + "\n")
    subprocess.run(
        [str(BIN / "fairseq-preprocess"), "--only-source", "--trainpref", "train.txt",
         "--validpref", "valid.txt", "--destdir", "bin", "--workers", "1"],
        cwd=work, check=True, capture_output=True,
    )
    (work / "lm.yaml").write_text(LM_CONFIG)
    log = _train(work, max_update=2)
    return work, log


def _legacy_variant(src, dst):
    """The same checkpoint with numpy values where fairseq's metrics and best score put them."""
    state = torch.load(src, weights_only=True)
    state["extra_state"]["best"] = np.float64(3.25)
    state["extra_state"]["val_loss_hist"] = np.array([4.0, 3.25])
    torch.save(state, dst)


@pytest.mark.slow
def test_fairseq_checkpoint_loads_after_import(lm_run):
    from fairseq import checkpoint_utils

    import speechlm  # noqa: F401

    work, _ = lm_run
    state = checkpoint_utils.load_checkpoint_to_cpu(str(work / "ckpt" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert "decoder.embed_tokens.weight" in state["model"]

    _legacy_variant(work / "ckpt" / "checkpoint_last.pt", work / "legacy.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(work / "legacy.pt"))
    assert float(state["extra_state"]["best"]) == 3.25
    np.testing.assert_array_equal(state["extra_state"]["val_loss_hist"], [4.0, 3.25])


def test_legacy_argparse_args_load(tmp_path):
    """Legacy (argparse) checkpoints keep their options in an ``argparse.Namespace``."""
    import speechlm  # noqa: F401

    path = tmp_path / "legacy_args.pt"
    torch.save({"args": argparse.Namespace(arch="speechlm", lr=[5e-4]), "model": {}}, path)
    state = torch.load(path, map_location="cpu")
    assert state["args"].arch == "speechlm" and state["args"].lr == [5e-4]


@pytest.mark.slow
def test_legacy_checkpoint_fails_without_speechlm(lm_run):
    """The control: plain fairseq under torch >= 2.6 cannot load it (what speechlm fixes)."""
    work, _ = lm_run
    _legacy_variant(work / "ckpt" / "checkpoint_last.pt", work / "legacy2.pt")
    code = ("from fairseq import checkpoint_utils;"
            f"checkpoint_utils.load_checkpoint_to_cpu({str(work / 'legacy2.pt')!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "Weights only load failed" in out.stderr


@pytest.mark.slow
def test_resume_from_checkpoint_last(lm_run):
    work, _ = lm_run
    log = _train(work, max_update=4)
    m = re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log)
    assert m and int(m.group(1)) == 2, log[-2000:]
    from fairseq import checkpoint_utils

    import speechlm  # noqa: F401

    state = checkpoint_utils.load_checkpoint_to_cpu(str(work / "ckpt" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 4


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_not_run(tmp_path):
    from fairseq import checkpoint_utils

    import speechlm  # noqa: F401
    from speechlm.checkpoint import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "cfg": None, "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()
    # the distributed broadcast path uses torch.load on a buffer: refused too
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu")
    assert not marker.exists()


def test_renamed_config_key_of_an_older_finetuned_checkpoint_is_upgraded(tmp_path):
    """A ``speechlm_ctc`` checkpoint saved when the pre-trained spec was called ``w2v_args`` loads under the
    new name; a checkpoint of the published code (same model name, ``w2v_args`` = its pre-training args)
    keeps ``w2v_args`` for ``speechlm convert``."""
    from omegaconf import OmegaConf

    import speechlm  # noqa: F401  (installs the reader's wrappers)
    from speechlm.checkpoint import read_checkpoint
    from speechlm.models.pretrained import PretrainedSpec

    spec = PretrainedSpec({"_name": "speechlm", "encoder_embed_dim": 32}, 12, 0).to_dict()
    official_args = {"model": {"_name": "speechlm"}, "task": {"_name": "joint_sc2t_pretraining"}}
    for name, w2v_args, want_key in (("speechlm_ctc", spec, "pretrained_spec"),
                                     ("speechlm_st", spec, "pretrained_spec"),
                                     ("speechlm_ctc", official_args, "w2v_args")):
        path = tmp_path / f"{name}_{want_key}.pt"
        torch.save({"args": None, "cfg": {"model": {"_name": name, "w2v_path": "pre.pt", "w2v_args": w2v_args}},
                    "model": {"w": torch.zeros(1)}, "extra_state": {}, "last_optimizer_state": None,
                    "optimizer_history": [{"criterion_name": "ctc", "optimizer_name": "adam",
                                           "lr_scheduler_state": {}, "num_updates": 0}]}, path)
        model_cfg = read_checkpoint(str(path))["cfg"]["model"]
        assert want_key in model_cfg and ({"w2v_args", "pretrained_spec"} - {want_key}).isdisjoint(model_cfg)
        assert OmegaConf.to_container(model_cfg[want_key]) == w2v_args
    assert PretrainedSpec.from_dict(spec) == PretrainedSpec({"_name": "speechlm", "encoder_embed_dim": 32}, 12, 0)
