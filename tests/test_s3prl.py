"""``speechlm.s3prl.UpstreamExpert``: an s3prl upstream, consumed by s3prl's own ``Featurizer``.

s3prl 0.4.18 is installed with --no-deps (scripts/setup.sh; it requires torchaudio, which has no build for
this torch); its ``s3prl.upstream.interfaces`` needs only torch. The hidden states are checked against the
published ``SpeechLM.py`` outputs on the tiny official checkpoints (tests/fixtures/official).
"""
import pytest
import torch

from speechlm.convert import convert
from speechlm.s3prl import DOWNSAMPLE_RATE, UpstreamExpert
from speechlm.superb import WeightedLayerSum
from tests.test_convert import FIX, TOL

interfaces = pytest.importorskip("s3prl.upstream.interfaces", reason="s3prl is installed by scripts/setup.sh")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("s3prl")
    paths = {}
    for name in ("base", "large"):
        paths[name] = out / f"{name}.pt"
        convert(str(FIX / f"pretrained_{name}.pt"), str(paths[name]), dict_ltr=str(FIX / "dict.ltr.txt"),
                dict_phn=str(FIX / "dict.phn.txt"))
    return paths


@pytest.mark.parametrize("name", ["base", "large"])
def test_upstream_hidden_states_are_every_layer(converted, name):
    """The input of layer 1, then each layer's output; the checkpoint's normalize applied by the upstream
    (Large: the raw waveform goes in, the published features came from the layer-normed one)."""
    exp = torch.load(FIX / f"expected_pretrained_{name}.pt", weights_only=True)
    up = UpstreamExpert(str(converted[name]))
    assert isinstance(up, interfaces.UpstreamBase)
    assert up.normalize is (name == "large") and up.get_downsample_rates("hidden_states") == DOWNSAMPLE_RATE == 320
    wav = exp["wav"].float() / 32768  # raw: the upstream normalizes
    with torch.no_grad():
        out = up([wav])
        (final, results), _ = up.model.extract_features(
            torch.nn.functional.layer_norm(wav, wav.shape)[None] if name == "large" else wav[None],
            None, output_layer=up.num_layers, ret_layer_results=True)
    states = out["hidden_states"]
    assert len(states) == up.num_layers + 1 == 5
    for s, r in zip(states[1:], results):
        assert s.shape == (1, exp["features"][1].size(1), 16)
        assert (s - r.transpose(0, 1)).abs().max().item() < 1e-6
    assert (states[1] - exp["features"][1]).abs().max().item() < TOL  # the published layer 1
    if name == "base":  # post-LN: the last entry is the published final output
        assert (states[-1] - exp["features"]["final"]).abs().max().item() < TOL


def test_s3prl_featurizer_consumes_the_upstream(converted):
    up = UpstreamExpert(str(converted["base"]))
    featurizer = interfaces.Featurizer(up, upstream_device="cpu")
    assert featurizer.layer_num == 5 and featurizer.downsample_rate == 320 and featurizer.output_dim == 16
    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(16000), 0.1 * torch.randn(12000)]
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
        out = up(wavs)
        feats = featurizer(wavs, out)
        ours = WeightedLayerSum(5)
        ours.weights.copy_(featurizer.weights)
        want = ours(torch.stack(out["hidden_states"]))
    # s3prl trims each to round(len / 320) frames: 49 (all there are) and 38 (37 real + 1 padding frame,
    # as for s3prl's HuBERT: its rounding, not the model's floor((n - 400) / 320) + 1)
    assert [f.shape for f in feats] == [(49, 16), (38, 16)]
    w = torch.softmax(featurizer.weights, 0)
    manual = sum(w[i] * out["hidden_states"][i] for i in range(5))
    for b, f in enumerate(feats):
        assert torch.allclose(f, manual[b, : f.size(0)], atol=1e-6)
        assert torch.allclose(f, want[b, : f.size(0)], atol=1e-6)
    # the shorter utterance's states are those of the utterance alone (padding does not leak in)
    with torch.no_grad():
        alone = up([wavs[1]])["hidden_states"]
    T = alone[0].size(1)
    for a, s in zip(alone, out["hidden_states"]):
        assert (a[0] - s[1, :T]).abs().max().item() < 1e-5


def test_upstream_refuses_what_is_not_a_list_of_waveforms(converted):
    up = UpstreamExpert(str(converted["base"]))
    with pytest.raises(ValueError, match="1-D"):
        up([torch.zeros(2, 16000)])
