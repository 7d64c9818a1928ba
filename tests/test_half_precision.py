"""Half precision: bf16 training on CPU against float32, half-precision inference, the published fp16 guard.

fairseq's ``common.fp16=true`` asserts CUDA, so on a CPU the half-precision path is ``common.bf16=true``: the same
trainer (FP16Optimizer with float32 master weights, the model and the batches in bfloat16), which catches a
float32 tensor meeting a half one. Each slow test trains the same 8 updates twice (same seed, same batches),
in float32 and in bf16, and compares the per-update training losses (``BF16_LOSS_RTOL``).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import speechlm  # noqa: F401  (registers the components)
from speechlm.modules.logmel_frontend import LogMelFrontEnd
from speechlm.modules.relpos_transformer import RelPosEncoderLayer, relative_attention, relative_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrain import parse_train_log  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIX = REPO / "tests" / "fixtures" / "official"
UPDATES = 8
# bf16 keeps 8 mantissa bits: measured per-update differences against float32 over 8 updates were at most 0.45 %
# (pre-training loss; UMLM 0.16 / 0.34 %, UCTC 0.55 %), 0.22 % (CTC) and 0.41 % (ST); 2 % leaves room and still
# catches a model that diverges or trains on other batches.
BF16_LOSS_RTOL = 0.02
# a small conv front end (64 channels): the published 512-channel stack costs minutes per bf16 update on a CPU
SMALL_CONV = "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'"
COMMON = [f"optimization.max_update={UPDATES}", "common.log_interval=1", "dataset.validate_interval_updates=0",
          "dataset.disable_validation=true", f"checkpoint.save_interval_updates={UPDATES}"]


def train(config_dir: str, config_name: str, save: Path, overrides, bf16: bool):
    """One fairseq-hydra-train run -> (per-update training rows, the log); asserts it succeeded."""
    cmd = [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / config_dir), "--config-name", config_name,
           f"common.user_dir={REPO / 'speechlm'}", f"checkpoint.save_dir={save}", f"hydra.run.dir={save}/hydra",
           *COMMON, *overrides] + (["common.bf16=true"] if bf16 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    (save / "train.log").write_text(log)
    assert res.returncode == 0, log[-3000:]
    return parse_train_log(log), log


def assert_bf16_tracks_fp32(fp32_rows, bf16_rows, key="loss"):
    """Every update's ``key`` finite and within ``BF16_LOSS_RTOL`` of float32's; and not float32's bit for bit
    (fairseq saves checkpoints in float32, so the losses are what shows that the run was bf16)."""
    assert [r["num_updates"] for r in fp32_rows] == list(range(1, UPDATES + 1))
    assert [r["num_updates"] for r in bf16_rows] == list(range(1, UPDATES + 1))
    for a, b in zip(fp32_rows, bf16_rows):
        assert torch.isfinite(torch.tensor(b[key])), b
        assert abs(b[key] - a[key]) <= BF16_LOSS_RTOL * abs(a[key]), (int(a["num_updates"]), a[key], b[key])
    assert any(a[key] != b[key] for a, b in zip(fp32_rows, bf16_rows)), f"{key}: bf16 run identical to float32"


def pair(tmp_path_factory, name, config_dir, config_name, overrides):
    out = {}
    for bf16 in (False, True):
        save = tmp_path_factory.mktemp(f"{name}_{'bf16' if bf16 else 'fp32'}")
        rows, log = train(config_dir, config_name, save, overrides, bf16)
        out["bf16" if bf16 else "fp32"] = (save, rows, log)
    return out


# ------------------------------------------------------------------------------------------ slow: training


def binarized_text(corpus: Path, dest: Path) -> Path:
    """``speechlm binarize`` of the corpus's frame-level phones and letters: train from train_paired, and valid."""
    from speechlm.cli.main import main as speechlm_main

    for split, source in (("train", "train_paired"), ("valid", "valid")):
        assert speechlm_main(["binarize", "--units", str(corpus / f"{source}.phn"), "--letters",
                              str(corpus / f"{source}.ltr"), "--unit-dict", str(corpus / "dict.phn.txt"),
                              "--letter-dict", str(corpus / "dict.ltr.txt"), "--dest", str(dest),
                              "--split", split]) == 0
    return dest


@pytest.fixture(scope="module")
def text_dir(mini_corpus, tmp_path_factory):
    return binarized_text(Path(mini_corpus), tmp_path_factory.mktemp("hp_text"))


PRETRAIN = ("examples/mini/config/pretrain", "speechlm_tiny")


def pretrain_overrides(corpus, text, frontend):
    over = [f"task.data={corpus}", f"task.text_data={text}", f"model.frontend={frontend}",
            "dataset.max_tokens=160000", "task.max_sample_size=48000"]
    # not a key of the yaml: appended (the model dataclass registers after hydra composes)
    return over + ([f"+model.conv_feature_layers={SMALL_CONV}"] if frontend == "conv" else [])


@pytest.fixture(scope="module")
def pretrain_logmel(mini_corpus, text_dir, tmp_path_factory):
    return pair(tmp_path_factory, "pt_logmel", *PRETRAIN, pretrain_overrides(mini_corpus, text_dir, "logmel"))


@pytest.mark.slow
def test_bf16_pretraining_logmel_tracks_float32(pretrain_logmel):
    """The demo's config as it is (log-Mel front end): the run that died on a float/bfloat16 mismatch."""
    (_, fp32, _), (_, bf16, _) = pretrain_logmel["fp32"], pretrain_logmel["bf16"]
    assert_bf16_tracks_fp32(fp32, bf16)
    for key in ("umlm_loss_0", "umlm_loss_1", "uctc_loss"):
        assert_bf16_tracks_fp32(fp32, bf16, key)


@pytest.mark.slow
def test_bf16_pretraining_conv_front_end_tracks_float32(mini_corpus, text_dir, tmp_path_factory):
    runs = pair(tmp_path_factory, "pt_conv", *PRETRAIN, pretrain_overrides(mini_corpus, text_dir, "conv"))
    assert_bf16_tracks_fp32(runs["fp32"][1], runs["bf16"][1])


@pytest.fixture(scope="module")
def pretrained(pretrain_logmel):
    """The float32 log-Mel pre-training's checkpoint: what the fine-tunings start from."""
    return pretrain_logmel["fp32"][0] / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def ctc_runs(mini_corpus, pretrained, tmp_path_factory):
    return pair(tmp_path_factory, "ctc", "examples/mini/config/finetune", "speechlm_ctc_tiny",
                [f"task.data={mini_corpus}", f"model.w2v_path={pretrained}", "dataset.max_tokens=240000"])


@pytest.mark.slow
def test_bf16_ctc_finetuning_tracks_float32(ctc_runs):
    assert_bf16_tracks_fp32(ctc_runs["fp32"][1], ctc_runs["bf16"][1])


@pytest.mark.slow
def test_speechlm_infer_in_bf16_decodes_as_float32(ctc_runs, mini_corpus):
    """``speechlm infer common.bf16=true``: the model runs in bfloat16, the CTC log-probabilities close to
    float32's, and the command line writes the same table."""
    from speechlm.cli.infer import load_model_and_task
    from speechlm.decoding.ctc import emissions

    ckpt = ctc_runs["fp32"][0] / "checkpoint_last.pt"
    model, task, saved = load_model_and_task(str(ckpt))
    task.load_dataset("test", task_cfg=saved.task)
    ds = task.dataset("test")
    sample = ds.collater([ds[i] for i in range(3)])
    with torch.no_grad():
        lp32, n32 = emissions(model, sample)
        lp16, n16 = emissions(model.bfloat16(), sample)
    assert lp16.dtype == torch.float32 and torch.equal(n32, n16)
    real = torch.arange(lp16.size(1))[None, :] < n16[:, None]  # padded frames are -inf but for the blank
    assert torch.isfinite(lp16[real]).all()
    assert (lp16[real].exp() - lp32[real].exp()).abs().max() < 0.05
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "speechlm", "infer", "--config-dir", "examples/mini/config/decode",
                          "--config-name", "infer_viterbi", f"common_eval.path={ckpt}", "dataset.gen_subset=test",
                          "common.bf16=true"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^test\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+", out.stdout, flags=re.M), out.stdout


@pytest.fixture(scope="module")
def st_data(mini_corpus, tmp_path_factory):
    from speechlm.corpora.st import prepare_st_data

    out = tmp_path_factory.mktemp("hp_st_data")
    prepare_st_data(str(mini_corpus), str(out), ["train", "valid", "test"], "train", synthetic="cipherese")
    return out


@pytest.mark.slow
def test_bf16_st_training_tracks_float32_and_generates_in_bf16(st_data, pretrained, tmp_path_factory):
    runs = pair(tmp_path_factory, "st", "examples/mini/config/st", "speechlm_st_tiny",
                # the mini ST config freezes the encoder; fine-tune it here so that its backward runs in bf16 too
                [f"task.data={st_data}", f"model.w2v_path={pretrained}", "model.freeze_finetune_updates=0",
                 "model.decoder_layers=1",
                 "model.decoder_embed_dim=32", "model.decoder_ffn_embed_dim=64", "model.decoder_attention_heads=4"])
    assert_bf16_tracks_fp32(runs["fp32"][1], runs["bf16"][1])
    ckpt = runs["bf16"][0] / "checkpoint_last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    gen = subprocess.run([str(BIN / "fairseq-generate"), str(st_data), "--user-dir", "speechlm", "--task",
                          "speech_to_text", "--path", str(ckpt), "--gen-subset", "test", "--beam", "2",
                          "--max-tokens", "20000", "--required-batch-size-multiple", "1", "--max-len-b", "20",
                          "--scoring", "sacrebleu", "--cpu", "--bf16"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert gen.returncode == 0, gen.stderr[-3000:]
    n_test = len((st_data / "test.tsv").read_text().splitlines()) - 1
    assert len(re.findall(r"^H-\d+\t", gen.stdout, flags=re.M)) == n_test
    assert re.search(r"Generate test with beam=2: BLEU = \d+\.\d+", gen.stdout + gen.stderr)


# ------------------------------------------------------------------------------------------ fast


def test_st_prepare_for_inference_casts_to_bf16_only_when_asked():
    """fairseq-generate calls ``prepare_for_inference_(cfg)``; ``--bf16`` must cast the model (fairseq's
    generate casts only for ``--fp16``)."""
    from speechlm.models.speechlm_st import SpeechLMST

    class Tiny(SpeechLMST):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self._is_generation_fast = False
            self.lin = torch.nn.Linear(2, 2)

    for bf16, want in ((False, torch.float32), (True, torch.bfloat16)):
        m = Tiny()
        m.prepare_for_inference_(OmegaConf.create({"common": {"bf16": bf16, "fp16": False}, "generation": {}}))
        assert m.lin.weight.dtype == want


def test_logmel_front_end_in_bf16_keeps_float32_filterbank():
    torch.manual_seed(0)
    fe = LogMelFrontEnd(16)
    wav = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 6000])
    want = fe(wav, lengths)
    fe16 = LogMelFrontEnd(16)
    fe16.load_state_dict(fe.state_dict())
    fe16.bfloat16()
    assert fe16.conv.weight.dtype == torch.bfloat16
    assert fe16.window.dtype == fe16.mel_banks.dtype == torch.float32
    assert torch.equal(fe16.mel_banks, fe.mel_banks) and torch.equal(fe16.window, fe.window)
    got = fe16(wav.bfloat16(), lengths)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


def _guard_layer(dim=32, heads=1):
    torch.manual_seed(0)
    return RelPosEncoderLayer(embedding_dim=dim, ffn_embedding_dim=64, num_attention_heads=heads, dropout=0.0,
                              attention_dropout=0.0, activation_dropout=0.0, activation_fn="gelu").eval()


def test_scaling_for_att_keeps_fp16_logits_finite_that_overflow_without_it():
    """q.k beyond fp16's 65504: without the guard the logits are inf and the attention NaN; with the published
    32 the queries are divided before the products, and the output matches float32's."""
    T, B, C = 6, 2, 32
    layer = _guard_layer(C)
    with torch.no_grad():
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            proj.weight.copy_(torch.eye(C) * 150.0)
            proj.bias.zero_()
    x = 1.0 + 0.5 * torch.rand(T, B, C)
    rel_keys = torch.randn(2 * 160, C) * 0.1
    index = relative_index(T, "cpu")
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        q = layer.self_attn.q_proj(x) * C ** -0.5
        assert (q @ layer.self_attn.k_proj(x).transpose(-1, -2)).abs().max() > 65504  # float32: beyond fp16
        want = relative_attention(layer, x, rel_keys, index, padding)
        half = layer.half()
        bad = relative_attention(half, x.half(), rel_keys.half(), index, padding)
        good = relative_attention(half, x.half(), rel_keys.half(), index, padding, scaling_for_att=32.0)
    assert not torch.isfinite(bad).all()
    assert torch.isfinite(good).all()
    assert (good.float() - want).abs().max() <= 0.02 * want.abs().max()


def test_scaling_for_att_leaves_float32_attention_unchanged():
    T, B, C = 7, 3, 32
    layer = _guard_layer(C, heads=4)
    x = torch.randn(T, B, C)
    rel_keys = torch.randn(2 * 160, C // 4)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[2, -3:] = True
    index = relative_index(T, "cpu")
    with torch.no_grad():
        plain = relative_attention(layer, x, rel_keys, index, padding)
        guarded = relative_attention(layer, x, rel_keys, index, padding, scaling_for_att=32.0)
    assert torch.allclose(plain, guarded, atol=1e-5, rtol=0)


def test_model_and_large_recipe_carry_scaling_for_att(tmp_path):
    from speechlm.convert import convert
    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    recipe = OmegaConf.load(REPO / "examples/librispeech/config/pretrain/speechlm_p_large_librilight.yaml")
    assert recipe.model.scaling_for_att == 32
    out = tmp_path / "large.pt"
    assert convert(str(FIX / "pretrained_large.pt"), str(out), dict_ltr=str(FIX / "dict.ltr.txt"),
                   dict_phn=str(FIX / "dict.phn.txt")) == "pretrained"
    assert torch.load(out, weights_only=True)["cfg"]["model"]["scaling_for_att"] == 32
    model = SpeechLMModel.from_checkpoint(str(out))
    # as the published code: only the Shared (unit) Transformer is guarded
    assert {layer.scaling_for_att for layer in model.shared_encoder.layers} == {32.0}
    assert {layer.scaling_for_att for layer in model.speech_encoder.layers} == {1.0}
    assert SpeechLMConfig().scaling_for_att == 1.0


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_the_gpu_code_path(tmp_path):
    """scripts/gpu_check.sh --cpu-smoke: the GPU check's code (fairseq's FP16Optimizer on SpeechLM and on fairseq's
    HuBERT, half-precision CTC decoding) with tiny sizes in bf16; its JSON has every figure, all finite."""
    import json

    out = tmp_path / "gpu_check.json"
    res = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    got = json.loads(out.read_text())
    assert got["precision"] == "bf16" and got["device"].startswith("cpu")
    assert got["speechlm"]["all_finite"] and got["speechlm"]["updates"] == 4
    assert got["speechlm"]["overflow_skipped_updates"] == 0
    assert got["step_time_ratio_speechlm_over_hubert"] > 0 and got["hubert_base"]["updates"] == 3
    assert got["ctc_decoding"]["finite"] and got["ctc_decoding"]["utterances"] == 2
