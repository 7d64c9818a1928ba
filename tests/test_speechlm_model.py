"""Unit tests of the SpeechLM model and criterion on small hand-made tensors (and two tiny seeded trainings)."""
import itertools
import math
from pathlib import Path

import editdistance
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import speechlm  # noqa: F401  (registers the components)
from speechlm.criterions.speechlm import uctc_loss
from speechlm.decoding.ctc import greedy_ctc
from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel
from speechlm.modules.conv_frontend import MaskedConvFeatureExtractor, parse_conv_layers
from speechlm.modules.relpos_transformer import REL_POS_CLIP, RelPosEncoderLayer, relative_index, shared_positions

TINY = dict(
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    speech_encoder_layers=2, shared_encoder_layers=2, conv_pos=16, conv_pos_groups=4,
    encoder_layerdrop=0.0, mask_length=3,
)


def tiny_model(**kw):
    torch.manual_seed(0)
    return SpeechLMModel(SpeechLMConfig(**{**TINY, **kw}), num_units=12, unit_pad=1, num_letters=8)


def test_swapped_positions_are_spans_never_inside_masked_spans_or_padding():
    model = tiny_model(random_swap_prob=0.4, random_swap_length=5, mask_prob=0.5).train()
    torch.manual_seed(1)
    B, T = 8, 120
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[:4, 90:] = True
    for _ in range(20):
        mask = model._span_mask(B, T, padding, 0.5, 3, 0, "cpu")
        swap = model.swap_positions(mask, padding)
        assert mask.any() and swap.any()
        assert not (swap & mask).any(), "a swapped frame lies inside a masked span"
        assert not (swap & padding).any(), "a padded frame was swapped"
        assert not (mask & padding).any()
    # without masking, swapped frames come in runs of at least random_swap_length frames (one row:
    # fairseq evens out the span count across a batch by dropping single frames)
    for _ in range(10):
        swap = model.swap_positions(torch.zeros(1, T, dtype=torch.bool), None)
        runs = [len(list(g)) for k, g in itertools.groupby(swap[0].tolist()) if k]
        assert runs and min(runs) >= 5


def test_masks_and_swaps_follow_the_torch_seed():
    model = tiny_model(random_swap_prob=0.4, mask_prob=0.5).train()
    source, target = torch.randn(3, 8000), torch.randint(4, 12, (3, 24))
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)  # what fairseq's trainer does before each update (seed + update)
        out = model(source, None, target=target)
        runs.append((out["mask_indices"], out["swap_indices"], out["umlm_logits"][1]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    torch.testing.assert_close(runs[0][2], runs[1][2])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_forward_swaps_only_unmasked_frames_and_prob_zero_turns_swapping_off():
    source = torch.randn(3, 8000)
    target = torch.randint(4, 12, (3, 24))
    model = tiny_model(random_swap_prob=0.4).train()
    out = model(source, None, target=target)
    assert out["swap_indices"].any() and out["mask_indices"].any()
    assert not (out["swap_indices"] & out["mask_indices"]).any()
    assert out["umlm_targets"].tolist() == target[out["mask_indices"]].tolist()
    assert [t.shape for t in out["umlm_logits"]] == [(int(out["mask_indices"].sum()), 12)] * 2
    assert out["features_pen"].item() > 0
    off = tiny_model(random_swap_prob=0.0).train()(source, None, target=target)
    assert not off["swap_indices"].any()


def test_swapped_frames_carry_the_unit_embedding():
    """At swapped frames the Shared Transformer's input is e(z); elsewhere the Speech Transformer output."""
    model = tiny_model(random_swap_prob=0.8, mask_prob=0.3).train()
    seen = {}
    model.shared_encoder.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model.speech_encoder.register_forward_hook(lambda m, args, out: seen.setdefault("h", out))
    target = torch.randint(4, 12, (2, 24))
    out = model(torch.randn(2, 8000), None, target=target)
    swap = out["swap_indices"]
    assert swap.any()
    torch.testing.assert_close(seen["x"][swap], model.unit_embed(target)[swap])
    torch.testing.assert_close(seen["x"][~swap], seen["h"][~swap])


def test_embedding_l2_is_the_published_formula_and_the_criterion_adds_it_per_masked_frame():
    """``l2_embedding``: mean over D of (speech - e(z))^2 / |e(z)|^2 at the masked frames, averaged; the
    criterion adds ``embedding_l2_weight`` x that x masked frames (off: the loss is the same as before)."""
    from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig

    class _Task:
        letter_dictionary = None

    source, target = torch.randn(2, 8000), torch.randint(4, 12, (2, 24))
    model = tiny_model(l2_embedding=True, unit_embed_scale=3.0, random_swap_prob=0.0).train()
    seen = {}
    model.speech_encoder.register_forward_hook(lambda m, args, out: seen.__setitem__("h", out))
    torch.manual_seed(5)
    out = model(source, None, target=target)
    m = out["mask_indices"]
    h, e = seen["h"][m], 3.0 * model.unit_embed(target)[m]
    want = torch.stack([((h[i] - e[i]) ** 2).mean() / (e[i] ** 2).sum() for i in range(len(h))]).mean()
    torch.testing.assert_close(out["embedding_l2_loss"], want)
    speech = {"net_input": {"source": source, "padding_mask": None}, "target": target,
              "ntokens": target.numel(), "nsentences": 2}
    losses = {}
    for w in (0.0, 2.5):
        torch.manual_seed(5)
        losses[w], n, log = SpeechLMCriterion(SpeechLMCriterionConfig(embedding_l2_weight=w), _Task())(
            model, {"speech": speech})
        assert n == int(m.sum()) and log["embedding_l2"] == pytest.approx(want.item() * n, rel=1e-5)
    assert (losses[2.5] - losses[0.0]).item() == pytest.approx(2.5 * want.item() * n, rel=1e-4)
    torch.manual_seed(5)
    assert "embedding_l2_loss" not in tiny_model(random_swap_prob=0.0).train()(source, None, target=target)


def test_umlm_logits_are_cosine_over_temperature_on_a_hand_made_example():
    model = tiny_model(encoder_embed_dim=4, encoder_attention_heads=2, encoder_ffn_embed_dim=8,
                       conv_pos_groups=2, logit_temp=0.1, final_dim=4)
    with torch.no_grad():
        model.umlm_proj[0].weight.copy_(torch.eye(4) * 2.0)  # W = 2 I: cosine ignores the scale
        model.umlm_proj[0].bias.zero_()
        emb = torch.ones(12, 4)
        emb[4] = torch.tensor([1.0, 0, 0, 0])
        emb[5] = torch.tensor([0, 1.0, 0, 0])
        emb[6] = torch.tensor([1.0, 1.0, 0, 0])
        emb[7] = torch.tensor([-3.0, 0, 0, 0])
        model.umlm_label_embs[0].copy_(emb)
    h = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0, 0]])
    logits = model.umlm_logits(h, 0)
    expect_row0 = {4: 10.0, 5: 0.0, 6: 10.0 / math.sqrt(2), 7: -10.0, 0: 5.0}
    expect_row1 = {4: 0.0, 5: 10.0, 6: 10.0 / math.sqrt(2), 7: 0.0, 0: 5.0}
    for row, expect in ((0, expect_row0), (1, expect_row1)):
        for unit, value in expect.items():
            assert logits[row, unit].item() == pytest.approx(value, abs=1e-5)
    # the second output has its own projection and table
    assert not torch.allclose(model.umlm_logits(h, 1), logits)


def test_uctc_equals_torch_ctc_and_the_path_sum_on_a_hand_made_example():
    # T = 3 frames, vocabulary {blank=0, a=1, b=2}, target "a b"
    probs = torch.tensor([[[0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]])
    logits = probs.log()
    lengths, target, target_lengths = torch.tensor([3]), torch.tensor([[1, 2]]), torch.tensor([2])
    # every length-3 path that collapses to "a b"
    total = 0.0
    for path in itertools.product(range(3), repeat=3):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == [1, 2]:
            total += float(probs[0, 0, path[0]] * probs[0, 1, path[1]] * probs[0, 2, path[2]])
    ours = uctc_loss(logits, lengths, target, target_lengths, blank=0)
    assert ours.item() == pytest.approx(-math.log(total), rel=1e-5)
    ref = torch.nn.CTCLoss(blank=0, reduction="sum")(logits.log_softmax(-1).transpose(0, 1), target, lengths, target_lengths)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    # padded batch: a second utterance does not change the first one's term
    logits2 = torch.cat([logits, torch.randn(1, 3, 3)])
    target2 = torch.tensor([[1, 2], [2, 9]])  # 9 = padding beyond the target length
    both = uctc_loss(logits2, torch.tensor([3, 3]), target2, torch.tensor([2, 1]), blank=0)
    second = uctc_loss(logits2[1:], torch.tensor([3]), torch.tensor([[2]]), torch.tensor([1]), blank=0)
    assert both.item() == pytest.approx(ours.item() + second.item(), rel=1e-5)


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    ids = torch.tensor([[3, 3, 0, 3, 4, 4, 0, 5]])
    logits = F.one_hot(ids, 6).float()
    assert greedy_ctc(logits, torch.tensor([8]), blank=0) == [[3, 3, 4, 5]]
    assert greedy_ctc(logits, torch.tensor([3]), blank=0) == [[3]]


@pytest.mark.parametrize("frontend", ["conv", "logmel"])
def test_padding_does_not_change_a_real_frames_output(frontend):
    model = tiny_model(random_swap_prob=0.3, frontend=frontend).eval()
    torch.manual_seed(3)
    lengths = [9600, 5000, 7321]
    wavs = [torch.randn(n) for n in lengths]
    batch = torch.zeros(3, max(lengths))
    padding = torch.ones(3, max(lengths), dtype=torch.bool)
    for b, w in enumerate(wavs):
        batch[b, : len(w)] = w
        padding[b, : len(w)] = False
    with torch.no_grad():
        feats, frame_pad = model.extract_features(batch, padding)
        for layer in (1, 3):
            mid, _ = model.extract_features(batch, padding, output_layer=layer)
            for b, w in enumerate(wavs):
                alone, _ = model.extract_features(w[None], None, output_layer=layer)
                assert (mid[b, : alone.size(1)] - alone[0]).abs().max() < 1e-5
        for b, w in enumerate(wavs):
            alone, pad_alone = model.extract_features(w[None], None)
            assert pad_alone is None
            n = alone.size(1)
            assert n == (len(w) - 400) // 320 + 1
            assert int((~frame_pad[b]).sum()) == n
            assert (feats[b, :n] - alone[0]).abs().max().item() < 1e-5
        # text branch too
        units = [torch.randint(4, 12, (n,)) for n in (7, 12, 3)]
        ub = torch.full((3, 12), 1)
        upad = torch.ones(3, 12, dtype=torch.bool)
        for b, u in enumerate(units):
            ub[b, : len(u)] = u
            upad[b, : len(u)] = False
        tf, _ = model.extract_text_features(ub, upad)
        for b, u in enumerate(units):
            alone, _ = model.extract_text_features(u[None], None)
            assert (tf[b, : len(u)] - alone[0]).abs().max().item() < 1e-5


def test_masked_front_end_equals_fairseq_front_end_without_padding():
    torch.manual_seed(0)
    fe = MaskedConvFeatureExtractor([(16, 10, 5), (16, 3, 2)], mode="default")
    x = torch.randn(2, 3000)
    torch.testing.assert_close(fe(x, torch.tensor([3000, 3000])), fe(x), atol=1e-5, rtol=1e-5)


def test_logmel_front_end_is_kaldi_fbank_and_keeps_the_conv_front_ends_frames(mini_corpus):
    """On real audio the torch log-Mel equals kaldi-native-fbank (speechlm.data.fbank); the output has
    num_frames_50hz(n) frames for any length, so labels and CTC targets work with either front end."""
    import soundfile as sf

    from speechlm.data.fbank import compute_fbank
    from speechlm.data.manifest import num_frames_50hz
    from speechlm.modules.logmel_frontend import LogMelFrontEnd

    root, first = (mini_corpus / "valid.tsv").read_text().splitlines()[:2]
    wav, sr = sf.read(str(Path(root) / first.split("\t")[0]), dtype="float32")
    assert sr == 16000
    fe = LogMelFrontEnd(16)
    ours = fe.logmel(torch.from_numpy(wav)[None])[0].numpy()
    ref = compute_fbank(wav)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 0.01  # log units; the values span about -5 .. 25
    for n in (400, 401, 719, 720, 1039, 1040, 16000, 16321, 33333):
        out = fe(torch.randn(1, n) * 0.1)
        assert out.shape == (1, 16, num_frames_50hz(n)), n
        assert int(fe.output_lengths(torch.tensor([n]))[0]) == num_frames_50hz(n)


def test_logmel_model_trains_and_reloads_with_its_front_end(tmp_path):
    """frontend=logmel: the pre-training loss falls on a fixed batch, the front end gets gradients, and
    a state dict round-trips into a model built from the same config (the mel banks are not saved)."""
    model = tiny_model(frontend="logmel", mask_prob=0.3)
    assert not any("mel_banks" in k or "window" in k for k in model.state_dict())
    torch.manual_seed(1)
    wav = torch.randn(2, 8000) * 0.1
    T = (8000 - 400) // 320 + 1
    target = torch.randint(4, 12, (2, T))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(5)
        out = model(wav, None, target)
        loss = F.cross_entropy(out["umlm_logits"][1], out["umlm_targets"])
        opt.zero_grad()
        loss.backward()
        assert model.feature_extractor.conv.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = tiny_model(frontend="logmel", mask_prob=0.3)
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    with torch.no_grad():
        a, _ = model.eval().extract_features(wav)
        b, _ = again.eval().extract_features(wav)
    torch.testing.assert_close(a, b)


def test_relative_keys_attention_equals_the_naive_shaw_formula_beyond_the_clip():
    """softmax((q.k + q.r[clip(i-j)]) / sqrt(d)) V, with the (T,T,d) keys materialised, T > 2 * 160."""
    torch.manual_seed(0)
    for pre_ln in (False, True):
        layer = RelPosEncoderLayer(embedding_dim=8, ffn_embedding_dim=16, num_attention_heads=2, dropout=0.0,
                                   attention_dropout=0.0, activation_dropout=0.0, activation_fn="gelu",
                                   layer_norm_first=pre_ln).eval()
        T, B, H, d = 2 * REL_POS_CLIP + 7, 2, 2, 4
        x = torch.randn(T, B, 8)
        table = torch.randn(2 * REL_POS_CLIP, d)
        pad = torch.zeros(B, T, dtype=torch.bool)
        pad[1, T - 20:] = True
        with torch.no_grad():
            ours = layer(x, table, relative_index(T, "cpu"), pad)
            # naive reference
            a = layer.self_attn
            xin = layer.self_attn_layer_norm(x) if pre_ln else x
            r_tab = layer.norm_k(table) if pre_ln else table
            q = a.q_proj(xin).view(T, B, H, d)
            k = a.k_proj(xin).view(T, B, H, d)
            v = a.v_proj(xin).view(T, B, H, d)
            i = torch.arange(T)
            dist = (i[:, None] - i[None, :]).clamp(-REL_POS_CLIP, REL_POS_CLIP - 1) + REL_POS_CLIP
            R = r_tab[dist]  # (T, T, d)
            logits = (torch.einsum("ibhd,jbhd->bhij", q, k) + torch.einsum("ibhd,ijd->bhij", q, R)) / d ** 0.5
            logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
            att = torch.einsum("bhij,jbhd->ibhd", logits.softmax(-1), v).reshape(T, B, 8)
            y = x + a.out_proj(att)
            if pre_ln:
                ref = y + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(y))))
            else:
                y = layer.self_attn_layer_norm(y)
                ref = layer.final_layer_norm(y + layer.fc2(layer.activation_fn(layer.fc1(y))))
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        assert (layer.norm_k is not None) == pre_ln


def test_shared_positions_follow_fairseq_learned_positional_embedding():
    pad = torch.tensor([[False, False, False], [False, True, True]])
    assert shared_positions(pad, 2, 3, "cpu").tolist() == [[2, 3, 4], [2, 1, 1]]
    assert shared_positions(None, 1, 3, "cpu").tolist() == [[2, 3, 4]]
    assert shared_positions(None, 1, 3005, "cpu")[0, -1].item() == 3001  # clamped to the last row


def test_conv_layer_specs_parse_by_grammar_and_refuse_code():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers("[(32, 10, 5), (32, 3, 2)]") == [(32, 10, 5), (32, 3, 2)]
    for bad in ("__import__('os').system('true')", "[(512,10,5)] * 10**9", "[(512,10)]", "[(1.5,2,2)]",
                "[(512,10,5)] + (1,2,3)", "[x for x in range(3)]", "", "[(0,1,1)]"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_layers(bad)


def test_text_branch_and_uctc_head_shapes():
    model = tiny_model().train()
    units = torch.randint(4, 12, (2, 21))
    pad = torch.zeros(2, 21, dtype=torch.bool)
    pad[1, 15:] = True
    out = model.forward_text(units, pad)
    assert out["uctc_logits"].shape == (2, 21, 8)  # kernel 2, stride 1, padding 1: one output per frame
    assert out["uctc_lengths"].tolist() == [21, 15]
    feats, _ = model.extract_text_features(units, pad, output_layer=1)
    assert feats.shape == (2, 21, 32)
    with pytest.raises(ValueError, match="output_layer=3"):
        model.extract_text_features(units, pad, output_layer=3)


def test_base_config_speech_encoder_parameters():
    model = SpeechLMModel(SpeechLMConfig(), num_units=45, unit_pad=1, num_letters=32)
    n = model.speech_encoder_parameters()
    pos = model.shared_encoder.embed_positions.weight.numel()
    print(f"SpeechLM Base speech encoder: {n / 1e6:.2f}M parameters, of which {pos / 1e6:.2f}M the Shared "
          f"Transformer's absolute positions ({(n - pos) / 1e6:.2f}M without; HuBERT Base: 94.68M)")
    assert abs((n - pos) / 94.70e6 - 1) < 0.01
    assert len(model.speech_encoder.layers) + len(model.shared_encoder.layers) == 12


def _tiny_training(seed: int, source, target, units, letters, steps: int = 3):
    """A few Adam steps of speech + text, seeded before each step as fairseq's trainer does
    (``common.seed + update``); returns the losses."""
    from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig

    class _Task:
        letter_dictionary = None

    model = tiny_model(random_swap_prob=0.4, mask_prob=0.5).train()
    crit = SpeechLMCriterion(SpeechLMCriterionConfig(), _Task())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    speech = {"net_input": {"source": source, "padding_mask": None}, "target": target,
              "ntokens": target.numel(), "nsentences": source.size(0)}
    text = {"net_input": {"units": units, "padding_mask": None}, "target": letters,
            "target_lengths": torch.full((letters.size(0),), letters.size(1)), "nsentences": units.size(0)}
    losses = []
    for update in range(steps):
        torch.manual_seed(seed + update)
        opt.zero_grad()
        loss, _, log = crit(model, {"speech": speech, "text": text})
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_two_same_seed_trainings_give_identical_losses(mini_corpus):
    """Masks, swaps, text masks and layerdrop all draw from the per-update seed: same seed, same run."""
    from speechlm.data.readers import load_manifest, read_audio

    root, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    n = 8000
    wavs = [read_audio(f"{root}/{rel}")[:n] for rel, frames in rows if frames >= n][:2]
    source = torch.from_numpy(np.stack(wavs)).float()
    g = torch.Generator().manual_seed(0)
    target = torch.randint(4, 12, (2, 24), generator=g)
    units, letters = torch.randint(4, 12, (2, 40), generator=g), torch.randint(4, 8, (2, 6), generator=g)
    a = _tiny_training(7, source, target, units, letters)
    b = _tiny_training(7, source, target, units, letters)
    c = _tiny_training(8, source, target, units, letters)
    assert a == b
    assert a != c


def _upsampled_text_batch(g, B=8):
    """Letters 4..7 (0 = blank), each spoken as 3-5 frames of unit ``letter + 4``: a toy upsampled text."""
    seqs, units = [], []
    for _ in range(B):
        letters = torch.randint(4, 8, (int(torch.randint(5, 9, (), generator=g)),), generator=g)
        units.append(torch.cat([torch.full((int(torch.randint(3, 6, (), generator=g)),), int(c) + 4)
                                for c in letters]))
        seqs.append(letters)
    T, L = max(len(u) for u in units), max(len(s) for s in seqs)
    U, P = torch.full((B, T), 1), torch.ones(B, T, dtype=torch.bool)
    Y = torch.zeros(B, L, dtype=torch.long)
    for i, (u, s) in enumerate(zip(units, seqs)):
        U[i, : len(u)], P[i, : len(u)], Y[i, : len(s)] = u, False, s
    return U, P, Y, torch.tensor([len(s) for s in seqs])


def _time_spread(model, U, P) -> float:
    """Frame-to-frame spread of the Shared Transformer's output over its total spread (0 = every frame equal)."""
    with torch.no_grad():
        h = model.extract_text_features(U, P)[0][0][~P[0]]
    return float(h.std(0).mean() / h.std())


def test_uctc_head_starts_at_the_blank_level_and_the_text_branch_keeps_its_input():
    """From a zero output bias the first CTC steps ("blank everywhere") flattened the Shared Transformer's
    output across frames (the demo's text branch never recovered); the head starts at blank probability
    BLANK_PRIOR instead, the spread stays, and the toy unit -> letter map is learned."""
    from speechlm.modules.uctc_head import BLANK, BLANK_PRIOR

    model = tiny_model(dropout=0.0, attention_dropout=0.0).train()
    probs = model.uctc_head.proj(torch.zeros(1, 32)).softmax(-1)[0]
    assert probs[BLANK].item() == pytest.approx(BLANK_PRIOR, abs=1e-6)
    assert torch.allclose(probs[1:], probs[1:].mean())

    def train(m):
        opt = torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-6)
        g = torch.Generator().manual_seed(0)
        spreads = []
        for step in range(150):
            U, P, Y, YL = _upsampled_text_batch(g)
            out = m.forward_text(U, P, mask=False)
            loss = uctc_loss(out["uctc_logits"], out["uctc_lengths"], Y, YL, BLANK) / YL.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 5 == 0:
                spreads.append(_time_spread(m, U, P))
        U, P, Y, YL = _upsampled_text_batch(g, 16)
        with torch.no_grad():
            out = m.eval().forward_text(U, P, mask=False)
        hyps = greedy_ctc(out["uctc_logits"], out["uctc_lengths"], BLANK)
        errors = sum(editdistance.eval(h, Y[i, : YL[i]].tolist()) for i, h in enumerate(hyps))
        return min(spreads), errors / YL.sum().item()

    spread, ler = train(model)
    assert spread > 0.4 and ler < 0.3, (spread, ler)
    zero_bias = tiny_model(dropout=0.0, attention_dropout=0.0).train()
    with torch.no_grad():
        zero_bias.uctc_head.proj.bias.zero_()
    spread_zero, _ = train(zero_bias)
    assert spread_zero < 0.3, spread_zero  # what the blank-level start avoids


def test_speech_transformer_has_bert_initialisation_shared_transformer_fairseq_defaults():
    model = tiny_model()
    speech, shared = model.speech_encoder, model.shared_encoder
    for w in (speech.relative_keys.weight, speech.layers[0].fc1.weight, speech.layers[1].self_attn.q_proj.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.15)
    assert shared.relative_keys.weight.std().item() == pytest.approx(1.0, rel=0.15)  # nn.Embedding's N(0, 1)
