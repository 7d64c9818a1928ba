"""ASR fine-tuning on the mini corpus: tiny pre-train -> speechlm_ctc fine-tune -> speechlm infer.

The chain runs once per module (real fairseq-hydra-train runs of a few dozen updates); the other
tests build models in-process from the same pre-trained checkpoint.
"""
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import editdistance
import pytest
import torch
from omegaconf import OmegaConf

import speechlm  # noqa: F401  (registers the components)
from speechlm.cli.infer import load_model_and_task
from speechlm.cli.main import main as cli_main
from speechlm.data.readers import load_labels, load_manifest
from speechlm.decoding.ctc import ViterbiDecoder, decode_dataset, emissions
from speechlm.models.speechlm_ctc import SpeechLMCtc, SpeechLMCtcConfig
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "speechlm")


def run(cmd, log: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    res = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, f"{cmd[0]} failed, log {log}:\n{(res.stdout + res.stderr)[-3000:]}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def pretrained(mini_corpus, tmp_path_factory) -> Path:
    """Tiny SpeechLM pre-training (speech + unpaired text, so it has a UCTC head): 20 updates."""
    work = tmp_path_factory.mktemp("ft_pretrain")
    text = work / "text"
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()
    for split, part in (("train", lines[:400]), ("valid", lines[400:440] or lines[:40])):
        (work / f"{split}.txt").write_text("\n".join(part) + "\n")
        # the CLI in-process (a subprocess would pay fairseq's import time again)
        assert cli_main(["phonemize", str(work / f"{split}.txt"), "--out-prefix",
                         str(text / split)]) == 0
        assert cli_main(["binarize", "--units", str(text / f"{split}.phn"), "--letters",
                         str(text / f"{split}.ltr"), "--unit-dict", str(mini_corpus / "dict.phn.txt"),
                         "--letter-dict", str(mini_corpus / "dict.ltr.txt"), "--dest",
                         str(work / "textbin"), "--split", split]) == 0
    save = work / "ckpt"
    run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples/mini/config/pretrain",
         "--config-name", "speechlm_tiny", f"task.data={mini_corpus}",
         f"task.text_data={work / 'textbin'}", f"common.user_dir={USER_DIR}",
         f"checkpoint.save_dir={save}", f"hydra.run.dir={work / 'hydra'}",
         "optimization.max_update=20", "dataset.validate_interval_updates=20"],
        work / "pretrain.log")
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def finetuned(pretrained, mini_corpus, tmp_path_factory):
    """speechlm_ctc fine-tuned on train_paired for 30 updates; the pre-trained file is then moved
    away, so everything after must work from the fine-tuned checkpoint alone."""
    work = tmp_path_factory.mktemp("ft_ctc")
    w2v = work / "pretrained.pt"
    shutil.copyfile(pretrained, w2v)
    log = run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples/mini/config/finetune",
               "--config-name", "speechlm_ctc_tiny", "common.user_dir=speechlm",
               f"task.data={mini_corpus}", f"model.w2v_path={w2v}",
               f"checkpoint.save_dir={work / 'ckpt'}", "optimization.max_update=30",
               "dataset.validate_interval_updates=15", "optimization.lr=[2e-3]"],
              work / "finetune.log")
    w2v.rename(work / "moved_away.pt")
    return work / "ckpt" / "checkpoint_best.pt", log


@pytest.mark.slow
def test_finetune_trains_from_the_uctc_head_and_validates_wer(finetuned):
    ckpt, log = finetuned
    assert "CTC head initialised from the pre-trained UCTC head" in log
    losses = [float(x) for x in re.findall(r"\[train\]\[INFO\] - epoch \d+ \| loss ([\d.]+)", log)]
    assert len(losses) >= 3 and min(losses[-3:]) < losses[0], losses
    valid = re.findall(r"valid on 'valid' subset .*?\| wer ([\d.]+)", log)
    assert len(valid) >= 2, "fairseq's ctc criterion reported no validation WER"
    assert ckpt.is_file()
    saved = torch.load(ckpt, weights_only=True)["cfg"]["model"]
    assert saved["_name"] == "speechlm_ctc" and saved["pretrained_spec"]["model"]["_name"] == "speechlm"


@pytest.mark.slow
def test_speechlm_infer_prints_wer_and_writes_hyp_ref_files(finetuned, mini_corpus, tmp_path):
    ckpt, _ = finetuned
    out = run([sys.executable, "-m", "speechlm", "infer", "--config-dir",
               "examples/mini/config/decode", "--config-name", "infer_viterbi",
               f"common_eval.path={ckpt}", "dataset.gen_subset=test,test_other",
               f"common_eval.results_path={tmp_path}"], tmp_path / "infer.log")
    table = {m[0]: (int(m[1]), int(m[2]), float(m[3]))
             for m in re.findall(r"^(test\w*)\s+(\d+)\s+(\d+)\s+([\d.]+)\s", out, flags=re.M)}
    assert set(table) == {"test", "test_other"}, out[-2000:]
    for subset in ("test", "test_other"):
        root, rows = load_manifest(mini_corpus / f"{subset}.tsv")
        words = load_labels(mini_corpus / f"{subset}.wrd", len(rows))
        hyp = (tmp_path / f"{subset}.hypo.wrd").read_text().splitlines()
        ref = (tmp_path / f"{subset}.ref.wrd").read_text().splitlines()
        assert len(hyp) == len(ref) == len(rows) == table[subset][0]
        errs = nref = 0
        for (rel, _), w, h, r in zip(rows, words, hyp, ref):
            uid = os.path.splitext(rel)[0]
            assert r == f"{' '.join(w.split())} ({uid})" and h.endswith(f"({uid})")
            hw, rw = h.rsplit(" (", 1)[0].split(), r.rsplit(" (", 1)[0].split()
            errs, nref = errs + editdistance.eval(hw, rw), nref + len(rw)
        assert table[subset][1] == nref
        assert table[subset][2] == pytest.approx(100.0 * errs / nref, abs=0.01)


def test_infer_tune_on_without_a_sweep_says_what_to_give(capsys):
    argv = ["infer", "--config-dir", str(REPO / "examples/mini/config/decode"), "--config-name", "infer_viterbi",
            "common_eval.path=any.pt", "--tune-on", "valid"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "--tune-on valid: give a decoding.* sweep" in err and "decoding.lm_weight=0.5,1,2" in err, err


@pytest.mark.slow
def test_batched_and_one_at_a_time_decoding_agree(finetuned):
    ckpt, _ = finetuned
    model, task, cfg = load_model_and_task(str(ckpt), {"max_sample_size": None})
    tgt = task.target_dictionary
    task.load_dataset("test", task_cfg=cfg.task)
    ds = task.dataset("test")
    dec = [ViterbiDecoder(tgt, tgt.bos())]
    (batched,), _, _, _ = decode_dataset(model, ds, dec, tgt, max_samples=10_000_000, max_pad_ratio=1.0)
    (single,), _, _, _ = decode_dataset(model, ds, dec, tgt, batch_size=1)
    assert len(batched) == len(ds) and batched == single
    # and the emissions themselves: one padded batch of everything vs each utterance alone
    samples = [ds[i] for i in range(len(ds))]
    lp, lengths = emissions(model, ds.collater(samples))
    assert len(set(lengths.tolist())) > 1, "test utterances all have one length: nothing padded"
    for b, s in enumerate(samples):
        lp1, l1 = emissions(model, ds.collater([s]))
        assert int(lengths[b]) == int(l1[0])
        torch.testing.assert_close(lp[b, : int(l1[0])], lp1[0, : int(l1[0])], atol=1e-4, rtol=1e-4)


def _task(mini_corpus):
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(mini_corpus), fine_tuning=True, max_sample_size=None, min_sample_size=0, seed=1,
        train_subset="train_paired"))
    return SpeechLMPretrainingTask.setup_task(cfg)


def _ctc_cfg(w2v, **kw):
    return OmegaConf.structured(SpeechLMCtcConfig(w2v_path=str(w2v), **kw))


@pytest.mark.slow
def test_ctc_head_starts_from_the_uctc_head_only_when_letters_match(pretrained, mini_corpus, caplog):
    sd = torch.load(pretrained, weights_only=False)["model"]
    task = _task(mini_corpus)
    model = SpeechLMCtc.build_model(_ctc_cfg(pretrained), task)
    for k, v in model.ctc_head.state_dict().items():
        torch.testing.assert_close(v, sd[f"uctc_head.{k}"])
    enc = model.w2v_encoder.w2v_model.state_dict()
    assert not any(k.startswith(("unit_embed", "umlm_", "uctc_")) for k in enc)
    for k, v in enc.items():  # every encoder weight is the pre-trained one
        torch.testing.assert_close(v, sd[k])
    # another letter inventory: the head starts random and the log says why
    task.target_dictionary.add_symbol("@")
    with caplog.at_level(logging.WARNING):
        model = SpeechLMCtc.build_model(_ctc_cfg(pretrained), task)
    assert "starts from random weights" in caplog.text
    assert model.ctc_head.proj.weight.shape[0] == sd["uctc_head.proj.weight"].shape[0] + 1
    # from scratch: same architecture, nothing pre-trained
    scratch = SpeechLMCtc.build_model(_ctc_cfg(pretrained, no_pretrained_weights=True),
                                      _task(mini_corpus))
    weights = {k: v for k, v in scratch.w2v_encoder.w2v_model.state_dict().items() if k.endswith(".weight")}
    assert weights and not any(torch.equal(v, sd[k]) for k, v in weights.items() if v.dim() > 1)


@pytest.mark.slow
def test_freeze_finetune_updates_and_masking(pretrained, mini_corpus):
    task = _task(mini_corpus)
    torch.manual_seed(0)
    model = SpeechLMCtc.build_model(_ctc_cfg(pretrained, freeze_finetune_updates=5, mask_prob=0.5,
                                             mask_channel_prob=0.2, mask_channel_length=8), task)
    task.load_dataset("train_paired")
    ds = task.dataset("train_paired")
    batch = ds.collater([ds[i] for i in range(3)])
    body = model.w2v_encoder.w2v_model.speech_encoder
    model.train()
    model.set_num_updates(0)
    out = model(**batch["net_input"])
    out["encoder_out"].sum().backward()
    assert all(p.grad is None for p in body.parameters()), "encoder trained while frozen"
    assert model.ctc_head.proj.weight.grad is not None
    model.zero_grad()
    model.set_num_updates(5)
    model(**batch["net_input"])["encoder_out"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
    # masking only in training: eval is deterministic, training outputs differ
    model.eval()
    with torch.no_grad():
        a = model(**batch["net_input"])["encoder_out"]
        b = model(**batch["net_input"])["encoder_out"]
        model.train()
        c = model(**batch["net_input"])["encoder_out"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.slow
def test_w2v_path_errors_name_the_file(finetuned, mini_corpus, tmp_path):
    ckpt, _ = finetuned
    with pytest.raises(FileNotFoundError, match=r"model\.w2v_path='.*nope\.pt': pre-trained checkpoint not found"):
        SpeechLMCtc.build_model(_ctc_cfg(tmp_path / "nope.pt"), _task(mini_corpus))
    with pytest.raises(ValueError, match=r"is a checkpoint of model 'speechlm_ctc'"):
        SpeechLMCtc.build_model(_ctc_cfg(ckpt), _task(mini_corpus))


CONFIGS = REPO / "examples"


@pytest.mark.parametrize("path", [
    "mini/config/finetune/speechlm_ctc_tiny.yaml",
    "librispeech/config/finetune/speechlm_base_100h.yaml",
    "librispeech/config/finetune/speechlm_large_960h.yaml",
    "mini/config/st/speechlm_st_tiny.yaml",
    "covost2/config/speechlm_st_base.yaml",
])
def test_recipe_configs_match_the_model_and_task_dataclasses(path):
    """Every model key is a field of the registered dataclass (a typo would fail at train time)."""
    from speechlm.models.speechlm_st import SpeechLMSTConfig

    cfg = OmegaConf.load(CONFIGS / path)
    model = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "_name"}
    schema = {"speechlm_ctc": SpeechLMCtcConfig, "speechlm_st": SpeechLMSTConfig}[cfg.model._name]
    merged = OmegaConf.merge(OmegaConf.structured(schema), model)
    assert OmegaConf.is_missing(merged, "w2v_path")  # the user must give it
    if cfg.task._name == "speechlm_pretraining":
        task = {k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "_name"}
        merged = OmegaConf.merge(OmegaConf.structured(SpeechLMPretrainingConfig), task)
        assert merged.fine_tuning and merged.max_sample_size is None
        assert cfg.criterion._name == "ctc" and cfg.checkpoint.best_checkpoint_metric == "wer"
    else:
        assert cfg.task._name == cfg.task.task == "speech_to_text"
    assert cfg.dataset.required_batch_size_multiple == 1


def _tiny_encoder(**overrides):
    from speechlm.models.pretrained import PretrainedSpec
    from speechlm.models.speechlm_ctc import SpeechLMEncoder

    model_cfg = {"_name": "speechlm", "frontend": "logmel", "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
                 "encoder_attention_heads": 2, "speech_encoder_layers": 2, "shared_encoder_layers": 2,
                 "conv_pos": 8, "conv_pos_groups": 4}
    spec = PretrainedSpec(model_cfg, num_units=8, num_letters=5)
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMCtcConfig), {
        "w2v_path": "never-read.pt", "pretrained_spec": spec.to_dict(), "encoder_layerdrop": 0.0,
        "activation_dropout": 0.0, **overrides})
    return SpeechLMEncoder(cfg)


@pytest.mark.parametrize("output_layer", [1, 2, 3, 4, None])
def test_fine_tuned_encoder_is_extract_features_with_its_masking_as_a_hook(output_layer):
    """The CTC/ST encoder runs the pre-trained model's public ``extract_features`` (same layer semantics);
    its masking goes in through the hook: in training with every frame masked the output changes."""
    enc = _tiny_encoder(output_layer=output_layer, mask_prob=1.0, mask_length=2).eval()
    x = torch.randn(2, 6400)
    pad = torch.zeros(2, 6400, dtype=torch.bool)
    pad[1, 4000:] = True
    out = enc(x, pad)
    ref, frame_pad = enc.w2v_model.extract_features(x, pad, output_layer)
    assert out["padding_mask"] is not None and torch.equal(out["padding_mask"], frame_pad)
    assert torch.equal(out["encoder_out"].transpose(0, 1), ref.masked_fill(frame_pad.unsqueeze(-1), 0.0))
    enc.train()
    masked = enc(x, pad)["encoder_out"]
    assert masked.shape == out["encoder_out"].shape and not torch.allclose(masked, out["encoder_out"])


def test_fine_tuned_encoder_refuses_a_layer_the_model_has_not():
    from speechlm.errors import UserError

    with pytest.raises(UserError, match=r"model.output_layer=5: the pre-trained model never-read.pt has layers 1..4"):
        _tiny_encoder(output_layer=5)
