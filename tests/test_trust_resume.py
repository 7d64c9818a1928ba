"""A resume with a changed config names the setting and the way out; a checkpoint from another version of the
plugin says so (issue 27)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import speechlm
from speechlm.cli.main import main as cli
from speechlm.models.pretrained import PretrainedSpec
from speechlm.models.speechlm import SpeechLMModel
from tests.test_checkpoint import LM_CONFIG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = dict(frontend="logmel", encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
            speech_encoder_layers=1, shared_encoder_layers=1, conv_pos=4, conv_pos_groups=2)


def _old_checkpoint(path: Path, version=None):
    spec = PretrainedSpec({"_name": "speechlm", **TINY}, num_units=12, num_letters=0)
    model = SpeechLMModel.from_spec(spec)
    cfg = {"model": {"_name": "speechlm", **TINY, "dropout_features": 0.1},  # a key of the old architecture
           "task": {"_name": "speechlm_pretraining", "data": "x", "labels": ["phn"]}}
    state = {"cfg": cfg, "model": model.state_dict(), "extra_state": {}, "last_optimizer_state": None,
             "optimizer_history": [{"criterion_name": "SpeechLMCriterion", "optimizer_name": "FairseqAdam",
                                    "lr_scheduler_state": {}, "num_updates": 0}]}
    if version:
        state["speechlm_version"] = version
    torch.save(state, path)
    return path


def test_a_checkpoint_of_an_earlier_version_says_so(tmp_path, mini_corpus, capsys):
    old = _old_checkpoint(tmp_path / "old.pt")
    with pytest.raises(speechlm.errors.UserError, match=r"old.pt: written by an earlier version of speechlm \(no "
                                                        r"version recorded in it\); this is speechlm .*'dropout_features'"):
        PretrainedSpec.read(str(old))
    older = _old_checkpoint(tmp_path / "older.pt", version="0.0.1")
    assert cli(["features", "dump", str(mini_corpus), "valid", str(tmp_path / "f"), "--checkpoint", str(older),
                "--layer", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{older}: written by speechlm 0.0.1; this is speechlm {speechlm.__version__}" in err, err
    assert "ConfigKeyError" not in err and "Traceback" not in err


def _train(work, *overrides):
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", str(work), "--config-name", "lm",
           f"task.data={work / 'bin'}", f"checkpoint.save_dir={work / 'ckpt'}", f"hydra.run.dir={work / 'hydra'}",
           f"common.user_dir={REPO / 'speechlm'}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_resume_with_another_model_size_names_the_setting(tmp_path, mini_corpus):
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:200]
    (tmp_path / "train.txt").write_text("\n".join(lines[:150]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[150:]) + "\n")
    subprocess.run([str(BIN / "fairseq-preprocess"), "--only-source", "--trainpref", "train.txt", "--validpref",
                    "valid.txt", "--destdir", "bin", "--workers", "1"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "lm.yaml").write_text(LM_CONFIG)
    r = _train(tmp_path, "optimization.max_update=2")
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert state["speechlm_version"] == speechlm.__version__
    r = _train(tmp_path, "optimization.max_update=4", "model.decoder_layers=2", "model.decoder_embed_dim=24")
    log = r.stdout + r.stderr
    assert r.returncode == 1, log[-3000:]
    assert "checkpoint_last.pt: cannot resume: model.decoder_embed_dim=16 in the checkpoint, 24 now; " \
           "model.decoder_layers=1 in the checkpoint, 2 now" in log, log[-3000:]
    assert "give a new checkpoint.save_dir" in log and "Traceback" not in log
