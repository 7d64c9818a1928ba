"""SPLAT building blocks on hand-made tensors: alignment losses, idf, masking statistics, QA metrics,
geometry scores, fbank + per-speaker normalisation."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import speechlm  # noqa: F401  (registers the components)
from speechlm.criterions.splat_alignment import (
    contrastive_alignment_loss,
    sequence_alignment_loss,
    token_alignment_loss,
)
from speechlm.criterions.spoken_qa import best_spans, span_overlap_scores, spans_to_frames
from speechlm.data.fbank import SpeakerFeatures, compute_fbank, extract_features
from speechlm.data.manifest import num_frames_100hz, write_manifest
from speechlm.modules.splat_masking import splat_mask
from speechlm.splat.geometry import geometry_scores
from speechlm.splat.idf import compute_idf


def test_sequence_alignment_loss_is_l1_between_s1_and_cls():
    s1 = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t1 = torch.tensor([[0.0, 2.0, 5.0], [1.0, -1.0, 0.5]])
    assert torch.allclose(sequence_alignment_loss(s1, t1), torch.tensor([3.0, 2.5]))


def test_contrastive_alignment_loss_is_infonce_on_cosines():
    t1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    s1 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # the third points away from its target
    loss = contrastive_alignment_loss(s1, t1, temperature=0.5)
    cos = torch.nn.functional.normalize(s1, dim=-1) @ torch.nn.functional.normalize(t1, dim=-1).T
    expect = -torch.log_softmax(cos / 0.5, dim=1).diagonal()
    assert torch.allclose(loss, expect)
    assert loss[0] < loss[2] and loss[1] < loss[2]
    # only directions count: invariant to the scale of s1 and t1
    assert torch.allclose(contrastive_alignment_loss(5 * s1, 0.1 * t1, 0.5), loss)
    # a fourth row with utterance 0's transcript (another voice): not a negative of row 0 nor row 0 of it,
    # while rows 1 and 2 now see that target twice among their negatives
    dup = contrastive_alignment_loss(torch.cat([s1, s1[:1]]), torch.cat([t1, t1[:1]]), 0.5)
    assert torch.allclose(dup[0], loss[0]) and torch.allclose(dup[3], loss[0])
    four = torch.cat([cos, cos[:, :1]], 1) / 0.5
    assert torch.allclose(dup[1:3], -torch.log_softmax(four[1:3], 1)[[0, 1], [1, 2]])


def test_token_alignment_loss_idf_weighted_max_cosine():
    # speech frames: e1, e2, e1+e2 ; tokens: [CLS] (weight 0), e1 (weight 2), (-e1+e2) (weight 1)
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    t = torch.tensor([[[5.0, 5.0], [2.0, 0.0], [-1.0, 1.0]]])
    w = torch.tensor([[0.0, 2.0, 1.0]])
    no_pad = torch.zeros(1, 3, dtype=torch.bool)
    # token e1: best frame e1 (cos 1); token -e1+e2: best frame e2 (cos 1/sqrt 2)
    expected = -(2 * 1.0 + 1 * (1 / math.sqrt(2))) / 3
    assert token_alignment_loss(s, no_pad, t, w).item() == pytest.approx(expected, abs=1e-6)
    # padding the e2 frame: the second token's best is now e1+e2 (cos 0)
    pad = torch.tensor([[False, True, False]])
    assert token_alignment_loss(s, pad, t, w).item() == pytest.approx(-2 / 3, abs=1e-6)
    # the [CLS] token never counts, whatever its vector
    t2 = t.clone()
    t2[0, 0] = torch.tensor([-7.0, 3.0])
    assert token_alignment_loss(s, no_pad, t2, w).item() == pytest.approx(expected, abs=1e-6)


def test_token_alignment_loss_gradient_reaches_speech_only_where_it_is_the_max():
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], requires_grad=True)
    t = torch.tensor([[[2.0, 0.1]]])
    token_alignment_loss(s, torch.zeros(1, 3, dtype=torch.bool), t, torch.ones(1, 1)).backward()
    g = s.grad[0].abs().sum(-1)
    assert g[0] > 0 and g[1] == 0 and g[2] == 0


def test_token_alignment_loss_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="positive idf"):
        token_alignment_loss(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 2, 3),
                             torch.zeros(1, 2))


def test_idf_is_bertscore_formula_with_special_tokens_zero():
    CLS, SEP, PAD, a, b, c = 0, 1, 2, 3, 4, 5
    docs = [[CLS, a, b, b, SEP], [CLS, a, SEP], [CLS, a, c, SEP]]
    idf = compute_idf(docs, 6, [CLS, SEP, PAD])
    N = 3
    assert idf[a].item() == pytest.approx(math.log((N + 1) / (3 + 1)))  # in every transcript: 0
    assert idf[b].item() == pytest.approx(math.log((N + 1) / (1 + 1)))  # repeated words count once
    assert idf[c].item() == pytest.approx(math.log(4 / 2))
    assert idf[CLS] == 0 and idf[SEP] == 0 and idf[PAD] == 0


def test_masking_statistics_and_spans():
    g = torch.Generator().manual_seed(0)
    B, T, C = 64, 2000, 80
    x = torch.randn(B, T, C)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[:, 1900:] = True
    masked, frame_mask, channel_mask = splat_mask(x, pad, 0.15, 4, 0.15, generator=g)
    # a frame is masked if any of 4 starts (itself and the 3 before) fired: 1 - 0.85^4 = 0.478
    inner = frame_mask[:, 10:1890].float().mean().item()
    assert inner == pytest.approx(1 - 0.85 ** 4, abs=0.01)
    assert channel_mask.float().mean().item() == pytest.approx(0.15, abs=0.02)
    assert not frame_mask[pad].any()
    # every run of masked frames that starts and ends inside the utterance is at least 4 long
    runs = []
    for row in frame_mask[:8, :1900].int().tolist():
        s = "".join(map(str, row)).strip("1")  # drop runs touching the edges
        runs += [len(r) for r in s.split("0") if r]
    assert runs and min(runs) >= 4
    # zeroed entries are exactly frame-or-channel masked ones; the rest is untouched
    zero = frame_mask[:, :, None] | channel_mask[:, None, :]
    assert (masked[zero] == 0).all()
    assert torch.equal(masked[~zero], x[~zero])


def test_spoken_qa_span_frames_decoding_and_scores():
    spans = torch.tensor([[0.10, 0.30], [1.0, 9.0]])
    frames = spans_to_frames(spans, 50.0, torch.tensor([100, 100]))
    assert frames.tolist() == [[5, 14], [50, 99]]  # end clipped to the last frame
    start = torch.tensor([[-5.0, 2.0, -5.0, -5.0, 3.0, -5.0]])
    end = torch.tensor([[4.0, -5.0, -5.0, 2.5, -5.0, float("-inf")]])  # last frame: padding
    # (start 1, end 0) would score 6 but ends before it starts; the best legal span is (1, 3) = 4.5
    assert best_spans(start, end, max_len=6).tolist() == [[1, 3]]
    # at most 2 frames long: (0, 0) = -1 is the best left
    assert best_spans(start, end, max_len=2).tolist() == [[0, 0]]
    aos, f1 = span_overlap_scores(torch.tensor([[2, 5], [0, 1]]), torch.tensor([[4, 7], [5, 6]]))
    # overlap 4..5 = 2 frames, union 2..7 = 6 -> AOS 1/3; P = 2/4, R = 2/4 -> F1 0.5; disjoint -> 0
    assert aos.tolist() == pytest.approx([1 / 3, 0.0])
    assert f1.tolist() == pytest.approx([0.5, 0.0])


def test_geometry_scores_hand_made():
    s1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # text: 0 and 1 are nearest to each other, 2 and 3 to each other
    t1 = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    g = geometry_scores(s1, t1)
    # pairs: (0,1)=1, (0,2)=0, (0,3)=0, (1,2)=0, (1,3)=0, (2,3)=-1 -> mean 0
    assert g["S_avg"] == pytest.approx(0.0, abs=1e-6)
    # closest-by-text partners: 0<->1 (cos 1), 2<->3 (cos -1) -> 0; now swap s1 of 3 to match 2
    assert g["S_closest"] == pytest.approx(0.0, abs=1e-6)
    s1[3] = torch.tensor([0.0, 2.0])
    assert geometry_scores(s1, t1)["S_closest"] == pytest.approx(1.0, abs=1e-6)


def _noise_corpus(tmp_path, gains):
    rng = np.random.RandomState(0)
    rows, spks = [], []
    for k, (spk, gain) in enumerate(gains):
        n = 16000 + 1234 * k
        wav = (gain * rng.randn(n)).clip(-1, 1).astype(np.float32)
        sf.write(tmp_path / f"u{k}.wav", wav, 16000, subtype="PCM_16")
        rows.append((f"u{k}.wav", n))
        spks.append(spk)
    write_manifest(str(tmp_path / "train.tsv"), str(tmp_path), rows)
    (tmp_path / "train.spk").write_text("".join(s + "\n" for s in spks))
    return rows


def test_fbank_shape_and_per_speaker_normalisation(tmp_path):
    rows = _noise_corpus(tmp_path, [("loud", 0.3), ("loud", 0.3), ("quiet", 0.01), ("quiet", 0.01)])
    f = compute_fbank(np.zeros(16000, np.float32) + 0.01)
    assert f.shape == (num_frames_100hz(16000), 80) == (98, 80)
    stats = extract_features(str(tmp_path), ["train"])
    assert sorted(stats["speakers"].tolist()) == ["loud", "quiet"]
    loud = stats["speakers"].tolist().index("loud")
    assert stats["mean"][loud].mean() > stats["mean"][1 - loud].mean() + 3  # ~30 dB apart in log energy
    feats = SpeakerFeatures(str(tmp_path), "train")
    assert [len(feats[i]) for i in range(4)] == [num_frames_100hz(n) for _, n in rows]
    for pair in ([0, 1], [2, 3]):
        x = np.concatenate([feats[i] for i in pair])
        assert np.abs(x.mean(0)).max() < 1e-3
        assert np.allclose(x.std(0), 1.0, atol=1e-2)


def test_features_errors_name_file_and_fix(tmp_path):
    _noise_corpus(tmp_path, [("a", 0.1), ("b", 0.1)])
    with pytest.raises(FileNotFoundError, match="speechlm splat features"):
        SpeakerFeatures(str(tmp_path), "train")
    extract_features(str(tmp_path), ["train"])
    (tmp_path / "train.spk").write_text("a\nc\n")
    with pytest.raises(ValueError, match=r"train.spk:2: speaker 'c' has no statistics"):
        SpeakerFeatures(str(tmp_path), "train")


@pytest.mark.slow
def test_slu_corpus_cli_is_idempotent(tmp_path, capsys):
    from speechlm.cli.main import main as speechlm_main

    (tmp_path / "done").touch()
    assert speechlm_main(["splat", "slu-corpus", str(tmp_path)]) == 0
    assert "already built" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]  # nothing synthesized


def test_intent_grid_has_enough_intents_and_disjoint_voices():
    from speechlm.corpora.slu import INTENT_VOICES, intent_sentences

    sents = intent_sentences()
    labels = {lab for _, lab in sents}
    assert len(labels) >= 20 and len(sents) == 4 * len(labels) == len(set(s for s, _ in sents))
    v = {k: set(x) for k, x in INTENT_VOICES.items()}
    assert not (v["train"] & v["test"]) and not (v["train"] & v["valid"]) and not (v["valid"] & v["test"])


def test_sentence_pooling_cls_and_mean_skip_padding():
    from speechlm.splat.bert import pool_sentence

    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]], [[0.0, 4.0], [2.0, 2.0], [4.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.equal(pool_sentence(h, mask, "cls"), h[:, 0])
    assert torch.allclose(pool_sentence(h, mask, "mean"), torch.tensor([[2.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="choose one of cls, mean"):
        pool_sentence(h, mask, "max")


def test_text_geometry_is_the_geometry_of_an_exact_copy():
    from speechlm.splat.geometry import text_geometry_scores

    torch.manual_seed(0)
    t1 = torch.randn(12, 8) + 3.0  # a shared component: high S_avg
    g = geometry_scores(t1.clone(), t1)
    assert g == text_geometry_scores(t1)
    assert g["S_closest"] > g["S_avg"]
    # a speech module that outputs one vector for everything: S_avg = S_closest = 1, no gap
    const = geometry_scores(torch.ones(12, 8), t1)
    assert const["S_avg"] == pytest.approx(1.0) and const["S_closest"] == pytest.approx(1.0)


def test_sentence_target_centres_and_pca_whitens():
    from speechlm.splat.targets import SentenceTarget

    torch.manual_seed(0)
    # 40 sentence vectors in 6-d: a shared offset, two strong directions and weak noise
    basis = torch.linalg.qr(torch.randn(6, 6))[0]
    coords = torch.randn(40, 6) * torch.tensor([5.0, 2.0, 0.01, 0.01, 0.01, 0.01])
    t1 = coords @ basis.T + 3.0
    assert torch.equal(SentenceTarget.fit(t1)(t1), t1)  # neither: the identity
    c = SentenceTarget.fit(t1, center=True)(t1)
    assert torch.allclose(c, t1 - t1.mean(0), atol=1e-5)
    w = SentenceTarget.fit(t1, whiten=2)(t1)
    assert w.shape == t1.shape  # stays in the language module's width
    # unit variance along the two kept directions, nothing along the others; centred
    cov = w.T @ w / (len(w) - 1)
    eig = torch.linalg.eigvalsh(cov.double()).flip(0)
    assert torch.allclose(eig[:2], torch.ones(2, dtype=torch.double), atol=1e-4)
    assert eig[2:].abs().max() < 1e-4 and w.mean(0).abs().max() < 1e-4
    # the weak directions no longer count: vectors that differ only along them map to the same target
    x = t1[:1] + 0.5 * basis[:, 4]
    assert torch.allclose(SentenceTarget.fit(t1, whiten=2)(x), w[:1], atol=1e-2)
    with pytest.raises(ValueError, match="keep fewer than the number of alignment transcripts"):
        SentenceTarget.fit(t1[:3], whiten=3)


def test_run_variants_reads_step_costs_from_done_files(tmp_path):
    """--report while the runner runs: the cost comes from the finished steps' done files (the runner
    writes one per step as it finishes), a step without a record or not finished is left out."""
    import importlib.util
    import json
    import os

    spec = importlib.util.spec_from_file_location(
        "run_variants", os.path.join(os.path.dirname(__file__), "..", "examples", "splat", "run_variants.py"))
    rv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rv)

    def step(name, cpu, after=()):
        s = rv.Step(name, ["true"], str(tmp_path / f"{name}.log"), str(tmp_path / name / "done"), after)
        if cpu is not None:
            os.makedirs(tmp_path / name)
            (tmp_path / name / "done").write_text(json.dumps({"cpu_s": cpu}) if cpu >= 0 else "")
        return s

    pre = step("pre", 100.0)
    a, b = step("a", 50.0, [pre]), step("b", 30.0, [pre])
    c = step("c", None, [a])  # not finished
    old = step("old", -1)  # finished by an older runner: empty done file
    assert [s.cpu_seconds() for s in (pre, a, b, c, old)] == [100.0, 50.0, 30.0, None, None]
    assert c.finished() is False and old.finished() is True
    timing = {s.name: s.cpu_seconds() for s in (pre, a, b, c, old) if s.cpu_seconds() is not None}
    # two cores: pre, then a and b side by side
    assert rv.idle_estimate([pre, a, b, c, old], timing, jobs=2) == pytest.approx(150.0)
    assert rv.idle_estimate([pre, a, b, c, old], timing, jobs=1) == pytest.approx(180.0)


def test_random_neighbour_gaps_centre_on_zero_and_shrink_with_n():
    from speechlm.splat.geometry import random_neighbour_gaps

    torch.manual_seed(0)
    small, large = random_neighbour_gaps(torch.randn(10, 16) + 0.5), random_neighbour_gaps(torch.randn(200, 16) + 0.5)
    assert small.shape == (1000,)
    assert abs(small.mean().item()) < 0.01 and abs(large.mean().item()) < 0.01
    assert large.std() < small.std() / 2  # the noise floor falls with the number of utterances
    # never the utterance itself: an s1 set of two vectors always pairs them, gap = cos - S_avg = 0
    two = random_neighbour_gaps(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), draws=5)
    assert torch.allclose(two, torch.zeros(5), atol=1e-6)
