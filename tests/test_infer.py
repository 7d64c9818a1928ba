"""`speechlm infer` building blocks on hand-made tensors: decoders, WER, config composition."""
import importlib.util
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary

from speechlm.cli.infer import compose_config, compose_configs, expand_overrides
from speechlm.decoding.ctc import (
    KENLM_MISSING,
    KenLMDecoder,
    ViterbiDecoder,
    emissions,
    plan_batches,
    word_errors,
)

REPO = Path(__file__).resolve().parents[1]
DECODE_DIRS = [REPO / "examples/mini/config/decode", REPO / "examples/librispeech/config/decode"]


def letters():
    d = Dictionary()
    for c in "|ABC":
        d.add_symbol(c)
    return d


def one_hot_lprobs(ids, V):
    lp = torch.full((len(ids), V), -10.0)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    return lp.log_softmax(-1)


def test_viterbi_merges_repeats_and_drops_blanks():
    d = letters()
    A, B, bar, blank = d.index("A"), d.index("B"), d.index("|"), d.bos()
    # A A <b> A B B | <b> -> A A B |   (a blank separates the two A's)
    lp = one_hot_lprobs([A, A, blank, A, B, B, bar, blank], len(d))
    assert ViterbiDecoder(d, blank).decode(lp) == [A, A, B, bar]
    assert ViterbiDecoder(d, blank).decode(one_hot_lprobs([blank] * 4, len(d))) == []


def test_word_errors_counts_words_and_characters():
    assert word_errors("THE CAT SAT", "THE CAT SAT") == (0, 3, 0, 9)
    we, nw, ce, nc = word_errors("THE BAT", "THE CAT SAT")
    assert (we, nw) == (2, 3) and (ce, nc) == (4, 9)
    assert word_errors("", "A B") == (2, 2, 2, 2)


class _Padded(torch.nn.Module):
    """A CTC 'model' returning fixed logits and a padding mask, as SpeechLMCtc does."""

    def __init__(self, logits, pad):
        super().__init__()
        self.logits, self.pad = logits, pad

    def forward(self, **kw):
        return {"encoder_out": self.logits, "padding_mask": self.pad}

    def get_normalized_probs(self, net_output, log_probs):
        return net_output["encoder_out"].log_softmax(-1)


def test_emissions_give_each_utterance_its_real_frames_only():
    logits = torch.randn(7, 2, 5)  # (T, B, V)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    lp, lengths = emissions(_Padded(logits, pad), {"net_input": {}})
    assert lp.shape == (2, 7, 5) and lengths.tolist() == [7, 4]
    lp, lengths = emissions(_Padded(logits, None), {"net_input": {}})
    assert lengths.tolist() == [7, 7]


@pytest.mark.parametrize("config_dir", DECODE_DIRS, ids=lambda p: p.parts[-3])
def test_decode_configs_compose_and_type_check(config_dir, tmp_path):
    cfg = compose_config(str(config_dir), "infer_viterbi", [
        "common_eval.path=x.pt", "dataset.gen_subset=test,test_other", "task.data=/d",
    ])
    assert cfg.decoding.type == "viterbi"
    assert cfg.dataset.gen_subset == "test,test_other"  # a list of subsets, not a hydra sweep
    assert cfg.task.max_sample_size is None and cfg.task.data == "/d"  # never crop
    with pytest.raises(SystemExit, match="common_eval.path"):
        compose_config(str(config_dir), "infer_viterbi", [])
    with pytest.raises(SystemExit, match="decoding.type|Invalid value|not a valid"):
        compose_config(str(config_dir), "infer_viterbi", ["common_eval.path=x", "decoding.type=foo"])
    with pytest.raises(SystemExit, match="nope.yaml: decode config not found"):
        compose_config(str(config_dir), "nope", [])


def test_kenlm_config_composes():
    cfg = compose_config(str(DECODE_DIRS[1]), "infer_kenlm", ["common_eval.path=x.pt",
                                                              "decoding.lm_path=lm.arpa"])
    assert cfg.decoding.type == "kenlm" and cfg.decoding.lm_path == "lm.arpa"


@pytest.mark.skipif(importlib.util.find_spec("pyctcdecode") is not None,
                    reason="pyctcdecode is installed: the missing-decoder message cannot show")
def test_kenlm_without_a_decoder_says_what_to_install():
    with pytest.raises(SystemExit) as e:
        KenLMDecoder(letters(), 0, "lm.arpa")
    assert str(e.value) == KENLM_MISSING
    assert "pip install pyctcdecode kenlm" in KENLM_MISSING and "infer_viterbi" in KENLM_MISSING


def test_sweeps_expand_to_a_grid_of_decoding_settings():
    fixed, subsets, grid = expand_overrides([
        "common_eval.path=x.pt", "dataset.gen_subset=dev,test", "decoding.lm_weight=0,1,2",
        "decoding.word_score=range(-1,1)"])
    assert fixed == ["common_eval.path=x.pt"] and subsets == ["dev", "test"]
    assert len(grid) == 6 and grid[0] == ["decoding.lm_weight=0", "decoding.word_score=-1"]
    cfgs = compose_configs(str(DECODE_DIRS[1]), "infer_kenlm", [
        "common_eval.path=x.pt", "decoding.lm_path=lm.arpa", "dataset.gen_subset=dev,test",
        "decoding.lm_weight=0,0.5", "decoding.word_score=-1,1"])
    assert [(c.decoding.lm_weight, c.decoding.word_score) for c in cfgs] == [
        (0, -1), (0, 1), (0.5, -1), (0.5, 1)]
    assert all(c.dataset.gen_subset == "dev,test" for c in cfgs)
    with pytest.raises(SystemExit, match="task.data=a,b: only dataset.gen_subset and decoding"):
        expand_overrides(["task.data=a,b"])
    with pytest.raises(SystemExit, match="use compose_configs"):
        compose_config(str(DECODE_DIRS[1]), "infer_kenlm", ["common_eval.path=x", "decoding.beam=1,2"])


def test_batches_are_length_sorted_bounded_and_cover_every_utterance():
    sizes = [100, 950, 1000, 480, 500, 90, 990, 10]
    batches = plan_batches(sizes, max_samples=2000, max_pad_ratio=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for b in batches:
        longest = max(sizes[i] for i in b)
        assert len(b) * longest <= 2000 or len(b) == 1  # samples incl. padding
        assert min(sizes[i] for i in b) >= 0.9 * longest  # padding under 10 %
    assert batches[0] == [2, 6]  # longest first; 950 would make 3 x 1000 > 2000
    assert plan_batches(sizes, 10**9, 1.0, max_batch=3) == [[2, 6, 1], [4, 3, 0], [5, 7]]


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_front_end_runs_each_utterance_of_a_padded_batch_alone_at_inference(mini_corpus, mode):
    """At inference the conv front end takes each utterance on its own samples (fairseq's fused forward) and
    pads only the features; on every real frame that equals the masked batched path and the utterance alone."""
    import os

    from speechlm.data.readers import load_manifest, read_audio
    from speechlm.modules.conv_frontend import MaskedConvFeatureExtractor, conv_output_lengths

    root, rows = load_manifest(mini_corpus / "test.tsv")
    wavs = [torch.from_numpy(read_audio(os.path.join(root, rel))).float() for rel, _ in rows[:3]]
    lengths = torch.tensor([len(w) for w in wavs])
    assert len(set(lengths.tolist())) == 3
    x = torch.zeros(3, int(lengths.max()))
    for b, w in enumerate(wavs):
        x[b, : len(w)] = w
    torch.manual_seed(0)
    spec = [(16, 10, 5), (16, 3, 2), (16, 2, 2)]
    fe = MaskedConvFeatureExtractor(spec, mode=mode)
    masked = fe(x, lengths).detach()  # training mode, gradient on: one masked batched pass
    fe.eval()
    with torch.inference_mode():
        each = fe(x, lengths)
        n = conv_output_lengths(lengths, spec).tolist()
        assert each.shape == masked.shape == (3, 16, n[int(lengths.argmax())])
        for b in range(3):
            alone = fe(x[b : b + 1, : int(lengths[b])])[0]
            assert alone.shape[-1] == n[b]
            torch.testing.assert_close(each[b, :, : n[b]], alone)
            torch.testing.assert_close(each[b, :, : n[b]], masked[b, :, : n[b]], atol=1e-4, rtol=1e-4)
            assert (each[b, :, n[b]:] == 0).all()
