"""Released cleaned checkpoints (the published README's "Extract features using pre-trained models").

tests/fixtures/official/cleaned_{base,large}.pt were saved in that layout by the published ``SpeechLM.py``
(run outside this repository; tests/fixtures/official/README.md): ``{"cfg": {"model", "task": {"normalize"}},
"model"}`` with feature_extractor.*, post_extract_proj.*, layer_norm.*, mask_emb, encoder.*, unit_encoder.*,
final_proj_list.* and nothing else. ``expected_cleaned_*.pt`` hold its ``extract_features`` at every
``output_layer`` and every ``layer_results`` entry. Base: post-LN, ``extractor_mode: default``; Large:
pre-LN, ``extractor_mode: layer_norm``, ``scaling_for_att: 32``, ``normalize: true``.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from speechlm.convert import ConvertError, cleaned_report, convert
from speechlm.errors import UserError
from speechlm.models.speechlm import SpeechLMModel
from tests.test_convert import BIN, FIX, TOL

NAMES = ("base", "large")


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    out = tmp_path_factory.mktemp("cleaned")
    paths, reports = {}, {}
    for name in NAMES:
        paths[name], reports[name] = out / f"{name}.pt", {}
        assert convert(str(FIX / f"cleaned_{name}.pt"), str(paths[name]), report=reports[name]) == "cleaned"
    return paths, reports


def _expected(name):
    exp = torch.load(FIX / f"expected_cleaned_{name}.pt", weights_only=True)
    wav = exp["wav"].float() / 32768
    x = F.layer_norm(wav, wav.shape)[None] if exp["normalize"] else wav[None]
    return exp, wav, x


def test_the_fixtures_have_the_released_layout():
    for name in NAMES:
        state = torch.load(FIX / f"cleaned_{name}.pt", weights_only=True)
        assert set(state) == {"cfg", "model"} and state["cfg"]["task"] == {"normalize": name == "large"}
        roots = {k.split(".")[0] for k in state["model"]}
        assert roots == {"feature_extractor", "post_extract_proj", "layer_norm", "mask_emb", "encoder",
                         "unit_encoder", "final_proj_list"}
        m = state["cfg"]["model"]
        assert (m["layer_norm_first"], m["extractor_mode"], m["scaling_for_att"]) == (
            (True, "layer_norm", 32.0) if name == "large" else (False, "default", 1.0))


@pytest.mark.parametrize("name", NAMES)
def test_converted_cleaned_checkpoint_matches_every_layer_of_the_published_code(cleaned, name):
    paths, reports = cleaned
    exp, _, x = _expected(name)
    assert reports[name]["normalize"] is exp["normalize"]
    assert len(reports[name]["lacks"]) == 3 and "label_embs_list" in " ".join(reports[name]["lacks"])
    model = SpeechLMModel.from_checkpoint(str(paths[name])).eval()
    assert model.unit_embed is None and model.uctc_head is None and model.umlm_label_embs is None
    L = exp["num_layers"]
    assert L == 4 and sorted(k for k in exp["features"] if k != "final") == list(range(1, L + 1))
    with torch.no_grad():
        got, _ = model.extract_features(x, None)
        assert (got - exp["features"]["final"]).abs().max().item() < TOL
        for k in range(1, L + 1):
            (feat, results), pad = model.extract_features(x, None, output_layer=k, ret_layer_results=True)
            assert pad is None and feat.shape == exp["features"][k].shape
            assert (feat - exp["features"][k]).abs().max().item() < TOL, (name, k)
            want = exp["layer_results"][k]
            assert len(results) == len(want) == k
            for i, (a, b) in enumerate(zip(results, want)):
                assert a.shape == b.shape  # (T, B, D), as published
                assert (a - b).abs().max().item() < TOL, (name, k, i)
    if name == "large":  # the published quirk, kept: the last Speech Transformer entry is not output_layer=L/2
        assert (exp["layer_results"][L][1].transpose(0, 1) - exp["features"][2]).abs().max().item() > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_s3prl_upstream_of_a_cleaned_checkpoint(cleaned, name):
    """The upstream takes the raw waveform (it applies normalize itself, Large); its last L hidden states
    are the published layer_results."""
    pytest.importorskip("s3prl.upstream.interfaces")
    from speechlm.s3prl import UpstreamExpert

    paths, _ = cleaned
    exp, wav, _ = _expected(name)
    up = UpstreamExpert(str(paths[name]))
    assert up.normalize is exp["normalize"]
    with torch.no_grad():
        states = up([wav])["hidden_states"]
    L = exp["num_layers"]
    assert len(states) == L + 1
    for s, r in zip(states[-L:], exp["layer_results"][L]):
        assert (s - r.transpose(0, 1)).abs().max().item() < TOL


@pytest.mark.parametrize("name", NAMES)
def test_cleaned_checkpoint_fine_tunes_asr_and_st_through_w2v_path(cleaned, name):
    from speechlm.models.speechlm_ctc import SpeechLMEncoder, SpeechLMEncoderConfig
    from speechlm.models.speechlm_st import SpeechLMSTConfig, SpeechLMSTEncoder

    paths, _ = cleaned
    exp, _, x = _expected(name)
    cfg = SpeechLMEncoderConfig(w2v_path=str(paths[name]), apply_mask=False, dropout=0.0, attention_dropout=0.0,
                                activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, final_dropout=0.0)
    enc = SpeechLMEncoder(cfg).eval()
    assert enc.uctc is None and enc.cfg.pretrained_spec["model"]["pretraining_heads"] is False
    with torch.no_grad():
        out = enc(x, None)["encoder_out"].transpose(0, 1)
    assert (out - exp["features"]["final"]).abs().max().item() < TOL
    st = SpeechLMSTEncoder(SpeechLMSTConfig(w2v_path=str(paths[name]), apply_mask=False, dropout=0.0,
                                            attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
                                            dropout_input=0.0, final_dropout=0.0)).eval()
    with torch.no_grad():
        out = st(x, torch.tensor([x.size(1)]))["encoder_out"][0].transpose(0, 1)
    assert (out - exp["features"]["final"]).abs().max().item() < TOL


def test_continued_pre_training_from_a_cleaned_checkpoint_is_refused(cleaned):
    paths, _ = cleaned
    converted = SpeechLMModel.from_checkpoint(str(paths["base"]))
    spec_cfg = dict(converted.cfg)
    spec_cfg["pretraining_heads"] = True  # the pre-training run's model: with its heads
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig

    full = SpeechLMModel(OmegaConf.merge(OmegaConf.structured(SpeechLMConfig), spec_cfg), 12, Dictionary().pad(), 10)
    with pytest.raises(UserError, match="release removed the unit embedding .*label_embs_list.*unit_encoder_ctc_head"):
        full.load_state_dict(converted.state_dict())  # what fairseq's trainer does with restore_file / finetune_from_model
    with pytest.raises(UserError, match="cannot be pre-trained further"):
        converted(torch.zeros(1, 16000), None, torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(UserError, match="cannot be pre-trained further"):
        converted.forward_text(torch.zeros(1, 10, dtype=torch.long))


def test_speechlm_convert_reports_what_the_release_removed(tmp_path):
    dst = tmp_path / "large.pt"
    proc = subprocess.run([str(BIN / "speechlm"), "convert", str(FIX / "cleaned_large.pt"), str(dst)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cleaned checkpoint" in proc.stdout and "it lacks the unit embedding (unit_embed_tokens)" in proc.stdout
    assert "continued pre-training from it is refused" in proc.stdout and "task.normalize=true" in proc.stdout
    # a full pre-trained checkpoint is not taken for a cleaned one, and --layout says which it is
    with pytest.raises(ConvertError, match="'pretrained' checkpoint"):
        convert(str(FIX / "pretrained_base.pt"), str(tmp_path / "x.pt"), layout="cleaned")
    assert "note" not in cleaned_report({"lacks": ["x"], "normalize": False, "notes": []})
    assert "missing" in cleaned_report({"lacks": ["x"], "normalize": False, "notes": ["cfg.task.normalize is missing"]})


def test_a_cleaned_checkpoint_without_task_normalize_converts_with_a_note(tmp_path):
    state = torch.load(FIX / "cleaned_base.pt", weights_only=True)
    del state["cfg"]["task"]
    src = tmp_path / "no_task.pt"
    torch.save(state, src)
    report = {}
    assert convert(str(src), str(tmp_path / "out.pt"), report=report) == "cleaned"
    assert report["normalize"] is False and "missing" in report["notes"][0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
