"""Checkpoints: a kill during a save, a damaged checkpoint_last.pt on restart, hostile config strings,
the wrong kind of checkpoint, and user errors without tracebacks (issue 13).

One tiny real pre-training (4 updates, a checkpoint every 2) gives the real checkpoints; the hostile
ones are that checkpoint (or a tiny fairseq hubert one) with only its config string edited, so they
hold nothing but strings and tensors and pass the pickle allow-list.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import speechlm  # noqa: F401  (registers the components; installs the wrappers)
from speechlm.checkpoint import check_config_strings, checkpoint_damage, literal_spec
from speechlm.cli.main import main as cli_main
from speechlm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_CONV = "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"


def env(**kw):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO), **kw}


def train(corpus, save, max_update, timeout=400):
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / "examples/mini/config/pretrain"),
           "--config-name", "speechlm_tiny", f"task.data={corpus}", "task.text_data=null",
           f"common.user_dir={REPO / 'speechlm'}", f"checkpoint.save_dir={save}",
           f"hydra.run.dir={save}/hydra", f"optimization.max_update={max_update}",
           "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=2",
           "dataset.disable_validation=true", "common.log_interval=1"]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run4(mini_corpus, tmp_path_factory):
    """4 updates of the tiny pre-training: checkpoint_1_2.pt, checkpoint_1_4.pt, checkpoint_last.pt."""
    save = tmp_path_factory.mktemp("trust_run")
    proc = train(mini_corpus, save, 4)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert {p.name for p in save.glob("checkpoint*.pt")} == {
        "checkpoint_1_2.pt", "checkpoint_1_4.pt", "checkpoint_last.pt"}
    return save


def num_updates(path):
    return torch.load(path, weights_only=True)["optimizer_history"][-1]["num_updates"]


# ------------------------------------------------------------------------------- kills and resume


@pytest.mark.slow
def test_restart_resumes_from_the_newest_intact_checkpoint(run4, mini_corpus, tmp_path):
    save = tmp_path / "save"
    shutil.copytree(run4, save)
    last = save / "checkpoint_last.pt"
    with open(last, "r+b") as f:  # cut short, as a kill during the copy left it
        f.truncate(last.stat().st_size // 2)
    (save / "checkpoint_1_4.pt").write_bytes(b"")  # and the update-4 one empty
    assert "truncated" in checkpoint_damage(str(last)) and "0 bytes" in checkpoint_damage(str(save / "checkpoint_1_4.pt"))
    proc = train(mini_corpus, save, 6)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"{last} is truncated or corrupt" in log
    assert f"resuming from the newest intact checkpoint {save / 'checkpoint_1_2.pt'} (update 2)" in log
    assert "@ 2 updates" in log  # fairseq's own "Loaded checkpoint ... (epoch 1 @ 2 updates)"
    updates = [int(m) for m in re.findall(r"num_updates=(\d+)", log)]
    assert updates[:1] == [3] and updates[-1] == 6, updates
    assert checkpoint_damage(str(last), full=True) is None and num_updates(last) == 6


def test_restart_with_no_intact_checkpoint_names_the_file(tmp_path):
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import CheckpointConfig

    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    cfg = OmegaConf.structured(CheckpointConfig(save_dir=str(tmp_path)))
    with pytest.raises(UserError, match=r"checkpoint_last\.pt: cannot resume: it is empty .* holds no other intact"):
        checkpoint_utils.load_checkpoint(cfg, trainer=None)


SLOW_SAVE = """
import sys, torch, speechlm
from fairseq import checkpoint_utils
state = {"model": {f"w{i}": torch.randn(64) for i in range(60000)}}
print("saving", flush=True)
checkpoint_utils.torch_persistent_save(state, sys.argv[1])
print("saved", flush=True)
"""


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_the_previous_file_intact(run4, tmp_path):
    target = tmp_path / "checkpoint_last.pt"
    shutil.copyfile(run4 / "checkpoint_1_2.pt", target)
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(target)], env=env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 120
    tmp = None
    while time.time() < deadline and proc.poll() is None:  # wait until the new file is being written
        tmps = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint_last.pt.tmp")]
        if tmps and tmps[0].stat().st_size > 0:
            tmp = tmps[0]
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp is not None and proc.returncode == -signal.SIGKILL, "the save finished before the kill"
    assert target.read_bytes() == before  # the old checkpoint, complete
    assert num_updates(target) == 2
    # what the kill left behind is not a checkpoint*.pt a restart would pick
    assert sorted(p.name for p in tmp_path.glob("checkpoint*.pt")) == ["checkpoint_last.pt"]


@pytest.mark.slow
def test_checkpoint_copies_are_atomic(run4, tmp_path, monkeypatch):
    """fairseq copies checkpoint_E_U.pt to checkpoint_last.pt; a copy that dies half-way changes nothing."""
    from fairseq import checkpoint_utils

    dst = tmp_path / "checkpoint_last.pt"
    shutil.copyfile(run4 / "checkpoint_1_2.pt", dst)
    before = dst.read_bytes()

    def dying_copy(src, d, *a, **k):
        with open(src, "rb") as f, open(d, "wb") as g:
            g.write(f.read(1000))
        raise KeyboardInterrupt("killed during the copy")

    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.PathManager.copy(str(run4 / "checkpoint_1_4.pt"), str(dst), overwrite=True)
    monkeypatch.undo()
    assert dst.read_bytes() == before and list(tmp_path.iterdir()) == [dst]
    assert checkpoint_utils.PathManager.copy(str(run4 / "checkpoint_1_4.pt"), str(dst), overwrite=True)
    assert num_updates(dst) == 4


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_pretrained_checkpoint_is_named(run4, mini_corpus, tmp_path, damage):
    from speechlm.models.speechlm import SpeechLMModel
    from speechlm.models.speechlm_ctc import read_pretrained

    bad = tmp_path / "pretrained.pt"
    data = (run4 / "checkpoint_last.pt").read_bytes()
    bad.write_bytes(b"" if damage == "empty" else data[: len(data) // 3])
    for load in (SpeechLMModel.from_checkpoint, read_pretrained):
        with pytest.raises(UserError, match=rf"{bad}: damaged checkpoint: it is (empty|truncated)"):
            load(str(bad))


# ------------------------------------------------------------------------------- hostile config strings


def escape(marker: Path, spec: str) -> str:
    """A conv spec that, evaluated, walks from () to os.system and touches ``marker``."""
    return (f"{spec} if [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close']"
            f"[0].__init__.__globals__['system']('touch {marker}') == 0 else []")


@pytest.fixture(scope="module")
def hostile(run4, tmp_path_factory):
    """``{kind: path}``: the tiny speechlm checkpoint, a tiny hubert one, and a speechlm one with the
    string nested where a fine-tuned checkpoint keeps its pre-training config; plus the marker path."""
    from fairseq.data import Dictionary
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    d = tmp_path_factory.mktemp("hostile")
    marker = d / "MARKER"
    state = torch.load(run4 / "checkpoint_last.pt", weights_only=True)
    spec = state["cfg"]["model"]["conv_feature_layers"]
    state["cfg"]["model"]["conv_feature_layers"] = escape(marker, spec)
    torch.save(state, d / "speechlm.pt")
    state = torch.load(run4 / "checkpoint_last.pt", weights_only=True)
    state["cfg"]["model"]["pretrained_spec"] = {"model": {"_name": "speechlm", "conv_feature_layers": escape(marker, spec)}}
    torch.save(state, d / "nested.pt")

    torch.manual_seed(0)
    mcfg = OmegaConf.structured(HubertConfig(
        conv_feature_layers=TINY_CONV, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=2, final_dim=16, conv_pos=16, conv_pos_groups=4, label_rate=50))
    tcfg = OmegaConf.structured(HubertPretrainingConfig(data="unused", labels=["km"], label_rate=50))
    model = HubertModel(mcfg, tcfg, [Dictionary()])
    mc, tc = (OmegaConf.to_container(c, enum_to_str=True) for c in (mcfg, tcfg))
    mc["_name"], tc["_name"] = "hubert", "hubert_pretraining"
    mc["conv_feature_layers"] = escape(marker, TINY_CONV)
    torch.save({"cfg": {"model": mc, "task": tc}, "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam",
                                       "lr_scheduler_state": {}, "num_updates": 0}]}, d / "hubert.pt")
    # the files hold only strings and tensors: the pickle allow-list alone would let them through
    for name in ("speechlm.pt", "hubert.pt"):
        torch.load(d / name, weights_only=True)
    return {"speechlm": d / "speechlm.pt", "hubert": d / "hubert.pt", "nested": d / "nested.pt", "marker": marker}


REFUSED = r"refused: config string .*conv_feature_layers=.* is not a plain literal"


def test_the_escape_string_is_real_code(tmp_path):
    """The test string does run a command under a plain eval (what fairseq does with hubert specs)."""
    marker = tmp_path / "ran"
    layers = eval(escape(marker, TINY_CONV))  # noqa: S307  (the point of the test)
    assert marker.exists() and len(layers) == 7


def test_literal_spec_grammar():
    assert literal_spec(TINY_CONV) == [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
    assert literal_spec("(0.9,0.98)") == (0.9, 0.98)
    for bad in ("().__class__", "open('x', 'w')", "[(1, 2, 3)] * 10**9", "[(1,1,1)] * 100000000", "x",
                "[c for c in []]", "'a' * 3", "lambda: 0", "[(1,2,3)][0]"):
        with pytest.raises(ValueError):
            literal_spec(bad)
    check_config_strings({"task": {"data": "exp/run.v2/data(1)"}, "model": {"adam_betas": "(0.9, 0.98)"}})
    with pytest.raises(UserError, match=r"x\.pt: refused: config string task\.data=.open"):
        check_config_strings({"task": {"data": "open('m', 'w')"}}, "x.pt")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["speechlm", "nested"])
def test_hostile_speechlm_checkpoint_in_process_entry_points(hostile, mini_corpus, kind):
    from speechlm.models.speechlm import SpeechLMModel
    from speechlm.models.speechlm_ctc import SpeechLMCtc, SpeechLMCtcConfig
    from speechlm.models.speechlm_st import SpeechLMSTConfig, SpeechLMSTEncoder
    from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

    path = str(hostile[kind])
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(mini_corpus), fine_tuning=True, seed=1, train_subset="train_paired"))
    task = SpeechLMPretrainingTask.setup_task(cfg)
    entry_points = {
        "SpeechLMModel.from_checkpoint": lambda: SpeechLMModel.from_checkpoint(path),
        "speechlm_ctc model.w2v_path": lambda: SpeechLMCtc.build_model(
            OmegaConf.structured(SpeechLMCtcConfig(w2v_path=path)), task),
        "speechlm_st model.w2v_path": lambda: SpeechLMSTEncoder(OmegaConf.structured(SpeechLMSTConfig(w2v_path=path))),
    }
    for name, call in entry_points.items():
        with pytest.raises(UserError, match=REFUSED):
            call()
        assert not hostile["marker"].exists(), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["speechlm", "hubert"])
def test_hostile_checkpoints_at_the_cli_verbs(hostile, mini_corpus, tmp_path, capsys, kind):
    path = str(hostile[kind])
    verbs = {
        "features dump": ["features", "dump", str(mini_corpus), "valid", str(tmp_path / "f"), "--checkpoint",
                          path, "--layer", "1"],
        "phone-units train": ["phone-units", "train", str(mini_corpus), "--split", "train", "--save",
                              str(tmp_path / "pr.pt"), "--checkpoint", path, "--layer", "1", "--max-updates", "1"],
        "infer": ["infer", "--config-dir", str(REPO / "examples/mini/config/decode"), "--config-name",
                  "infer_viterbi", f"common_eval.path={path}", "dataset.gen_subset=valid"],
    }
    for name, argv in verbs.items():
        capsys.readouterr()
        assert cli_main(argv) == 1, name
        err = capsys.readouterr().err
        assert f"speechlm {argv[0]}: error: {path}: refused: config string" in err, (name, err)
        assert "Traceback" not in err
        assert not hostile["marker"].exists(), name


@pytest.mark.slow
def test_hostile_checkpoint_at_the_training_and_generate_entry_points(hostile, mini_corpus, tmp_path):
    """fairseq-hydra-train with model.w2v_path, fairseq-generate with --path: a clean error, exit 1."""
    runs = {
        "fairseq-hydra-train": [
            str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / "examples/mini/config/finetune"),
            "--config-name", "speechlm_ctc_tiny", f"common.user_dir={REPO / 'speechlm'}",
            f"task.data={mini_corpus}", f"model.w2v_path={hostile['speechlm']}",
            f"checkpoint.save_dir={tmp_path / 'ft'}"],
        "fairseq-generate": [
            str(BIN / "fairseq-generate"), str(mini_corpus), "--user-dir", str(REPO / "speechlm"),
            "--task", "speechlm_pretraining", "--labels", '["phn"]', "--fine-tuning", "--path", str(hostile["nested"]),
            "--gen-subset", "valid", "--cpu"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, (name, out[-3000:])
        assert "refused: config string" in out and "Traceback" not in out, (name, out[-3000:])
        assert not hostile["marker"].exists(), name
    # SPEECHLM_DEBUG=1 shows the traceback
    proc = subprocess.run(runs["fairseq-hydra-train"], cwd=REPO, env=env(SPEECHLM_DEBUG="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UnsafeConfigError" in proc.stderr


# ------------------------------------------------------------------------------- wrong kind of checkpoint


@pytest.mark.slow
def test_the_wrong_kind_of_checkpoint_says_which_it_got(run4, mini_corpus, tmp_path, capsys):
    pre = str(run4 / "checkpoint_last.pt")
    argv = ["infer", "--config-dir", str(REPO / "examples/mini/config/decode"), "--config-name", "infer_viterbi",
            f"common_eval.path={pre}", "dataset.gen_subset=valid"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{pre}: is a pre-trained 'speechlm' checkpoint" in err and "speechlm_ctc" in err, err
    state = torch.load(pre, weights_only=True)
    state["cfg"]["model"]["_name"] = "speechlm_ctc"
    torch.save(state, tmp_path / "ctc.pt")
    assert cli_main(["features", "dump", str(mini_corpus), "valid", str(tmp_path / "f"), "--checkpoint",
                     str(tmp_path / "ctc.pt"), "--layer", "1"]) == 1
    err = capsys.readouterr().err
    assert "is a fine-tuned 'speechlm_ctc' checkpoint" in err and "pre-trained" in err, err


# ------------------------------------------------------------------------------- long utterances in infer


@pytest.mark.slow
def test_infer_decodes_long_utterances_in_chunks(run4, mini_corpus):
    from speechlm.decoding.ctc import ViterbiDecoder, chunked_emissions, decode_dataset, emissions
    from speechlm.models.speechlm_ctc import SpeechLMCtc, SpeechLMCtcConfig
    from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(mini_corpus), fine_tuning=True, seed=1, train_subset="train_paired", min_sample_size=0,
        max_sample_size=None))
    task = SpeechLMPretrainingTask.setup_task(cfg)
    task.load_dataset("test")
    ds = task.dataset("test")
    torch.manual_seed(0)
    model = SpeechLMCtc.build_model(OmegaConf.structured(SpeechLMCtcConfig(
        w2v_path=str(run4 / "checkpoint_last.pt"), apply_mask=False)), task).eval()
    dec = ViterbiDecoder(task.target_dictionary, task.target_dictionary.bos())
    chunk = int(np.median(ds.sizes)) // 640 * 640
    tgt = task.target_dictionary
    (whole,), _, _, _ = decode_dataset(model, ds, [dec], tgt, max_samples=10_000_000, chunk_samples=10_000_000)
    (chunked,), _, _, _ = decode_dataset(model, ds, [dec], tgt, chunk_samples=chunk)
    assert sorted(chunked) == sorted(whole) == list(range(len(ds)))
    short = [i for i in range(len(ds)) if ds.sizes[i] <= chunk]
    assert short and all(chunked[i] == whole[i] for i in short)
    long = [i for i in range(len(ds)) if ds.sizes[i] > chunk]
    assert long
    with torch.inference_mode():
        for i in long:
            sample = ds.collater([ds[i]])
            lp, n = emissions(model, sample)
            lpc, nc = chunked_emissions(model, sample, chunk)
            assert abs(int(nc[0]) - int(n[0])) <= len(range(0, int(ds.sizes[i]), chunk)), (int(nc[0]), int(n[0]))


def test_a_full_disk_during_a_save_is_a_clean_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from fairseq import checkpoint_utils

    target = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save({"num_updates": 2}, str(target))
    before = target.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=rf"{target}: no space left on the device .* previous checkpoint_last\.pt"):
        checkpoint_utils.torch_persistent_save({"num_updates": 4}, str(target))
    monkeypatch.undo()
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]
    assert torch.load(target, weights_only=True) == {"num_updates": 2}
