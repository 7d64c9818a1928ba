"""Every layer: ``extract_features(..., ret_layer_results=True)`` with the published ``SpeechLM.py`` semantics.

On the converted tiny official checkpoints (tests/fixtures/official; how they were made: its README):
``layer_results`` holds each layer's output as ``(T, B, D)``, Speech Transformer then Shared
Transformer, before any final norm; ``output_layer=k`` beyond L/2 returns the final output.
"""
import pytest
import torch
import torch.nn.functional as F

from speechlm.convert import convert
from speechlm.models.speechlm import SpeechLMModel
from tests.test_convert import FIX, TOL, _input


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("layers")
    paths = {}
    for name in ("base", "large"):
        paths[name] = out / f"{name}.pt"
        convert(str(FIX / f"pretrained_{name}.pt"), str(paths[name]), dict_ltr=str(FIX / "dict.ltr.txt"),
                dict_phn=str(FIX / "dict.phn.txt"))
    return paths


@pytest.mark.parametrize("name", ["base", "large"])
def test_layer_results_follow_the_published_semantics(pretrained, name):
    exp = torch.load(FIX / f"expected_pretrained_{name}.pt", weights_only=True)
    model = SpeechLMModel.from_checkpoint(str(pretrained[name])).eval()
    x = _input(exp)
    n_speech = len(model.speech_encoder.layers)
    L = n_speech + len(model.shared_encoder.layers)
    with torch.no_grad():
        (final, results), pad = model.extract_features(x, None, output_layer=L, ret_layer_results=True)
        assert pad is None and len(results) == L
        assert all(r.shape == (final.size(1), 1, final.size(2)) for r in results)  # (T, B, D), as published
        assert (final - exp["features"]["final"]).abs().max().item() < TOL
        # layer 1 = output_layer=1 (no final norm inside the Speech Transformer)
        assert (results[0].transpose(0, 1) - exp["features"][1]).abs().max().item() < TOL
        # the L/2-th entry is output_layer=L/2 for post-LN (Base); pre-LN (Large) norms only the latter
        gap = (results[n_speech - 1].transpose(0, 1) - exp["features"][n_speech]).abs().max().item()
        assert (gap < TOL) if name == "base" else (gap > 0.1)
        gap = (results[-1].transpose(0, 1) - final).abs().max().item()
        assert (gap < TOL) if name == "base" else (gap > 0.1)
        for k in range(1, L + 1):
            (feat, res), _ = model.extract_features(x, None, output_layer=k, ret_layer_results=True)
            assert len(res) == k
            for a, b in zip(res, results):
                assert torch.equal(a, b)
            want = exp["features"][k] if k <= n_speech else exp["features"]["final"]
            assert (feat - want).abs().max().item() < TOL, k
        (feat, res), _ = model.extract_features(x, None, ret_layer_results=True)
        assert res == [] and torch.equal(feat, final)  # output_layer=None: no layer results, as published
        # layer_states: the input of layer 1, then every entry of layer_results, batch first
        states, _ = model.layer_states(x)
        assert len(states) == L + 1
        for s, r in zip(states[1:], results):
            assert torch.allclose(s, r.transpose(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="outside 1"):
        model.extract_features(x, None, output_layer=L + 1, ret_layer_results=True)


def test_layer_results_with_padding_match_each_utterance_alone(pretrained):
    model = SpeechLMModel.from_checkpoint(str(pretrained["base"])).eval()
    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(16000), 0.1 * torch.randn(11000)]
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :11000] = wavs[0], wavs[1]
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 11000:] = True
    with torch.no_grad():
        (_, res), frame_pad = model.extract_features(batch, padding, output_layer=4, ret_layer_results=True)
        T1 = int((~frame_pad[1]).sum())
        (_, alone), _ = model.extract_features(wavs[1][None], None, output_layer=4, ret_layer_results=True)
    for a, b in zip(res, alone):
        assert F.l1_loss(a[:T1, 1], b[:, 0]).item() < 1e-5


def test_features_dump_writes_a_chosen_layer_or_all_of_them(pretrained, tmp_path):
    """`speechlm features dump --layer all`: FEAT_DIR/layer{k}/ holds layer_results[k-1] of each utterance
    (the Large layout: the checkpoint's normalize applied); `--layer 3` is output_layer=3 (the final output)."""
    import json

    import numpy as np
    import soundfile as sf

    from speechlm.cli.main import main
    from speechlm.tokenizers.features import load_feature_shard

    exp = torch.load(FIX / "expected_pretrained_large.pt", weights_only=True)
    wav = exp["wav"].numpy()
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", wav, 16000, subtype="PCM_16")
    sf.write(audio / "b.wav", wav[:9000], 16000, subtype="PCM_16")
    (tmp_path / "valid.tsv").write_text(f"{audio}\na.wav\t{len(wav)}\nb.wav\t9000\n")
    ckpt = str(pretrained["large"])
    assert main(["features", "dump", str(tmp_path), "valid", str(tmp_path / "all"), "--checkpoint", ckpt,
                 "--layer", "all"]) == 0
    assert main(["features", "dump", str(tmp_path), "valid", str(tmp_path / "l3"), "--checkpoint", ckpt,
                 "--layer", "3"]) == 0
    model = SpeechLMModel.from_checkpoint(ckpt).eval()
    x = F.layer_norm(torch.from_numpy(wav).float() / 32768, (len(wav),))[None]
    with torch.no_grad():
        (final, results), _ = model.extract_features(x, None, output_layer=4, ret_layer_results=True)
    for k in range(1, 5):
        feats, lens = load_feature_shard(str(tmp_path / "all" / f"layer{k}"), "valid", 0, 1)
        assert lens == [179, 27] and feats.shape == (206, 16)
        assert np.abs(feats[:179] - results[k - 1][:, 0].numpy()).max() < 1e-4
        side = json.loads((tmp_path / "all" / f"layer{k}" / "valid_0_1.shard.json").read_text())
        assert side["options"]["layer"] == k
    feats, _ = load_feature_shard(str(tmp_path / "l3"), "valid", 0, 1)
    assert np.abs(feats[:179] - final[0].numpy()).max() < 1e-4  # output_layer=3 > L/2: the final output
    assert np.abs(feats[:179] - exp["features"]["final"][0].numpy()).max() < TOL
    with pytest.raises(SystemExit):
        main(["features", "dump", str(tmp_path), "valid", str(tmp_path / "x"), "--checkpoint", ckpt, "--layer", "top"])
