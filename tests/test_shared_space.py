"""`speechlm analyze shared-space` and its measures (speechlm/analysis/shared_space.py)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm.analysis import shared_space
from speechlm.cli.main import main as speechlm_main
from speechlm.errors import UserError

TINY = dict(frontend="logmel", encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            speech_encoder_layers=1, shared_encoder_layers=2, conv_pos=16, conv_pos_groups=4)


def _one_hot_views(rng, n_utts=6, frames=40, n_phones=5, dim=16, noise=0.05):
    """Two views whose frames are the one-hot of their phone plus noise: phonetic and aligned."""
    phones = rng.integers(0, n_phones, size=n_utts * frames)
    groups = np.repeat(np.arange(n_utts), frames)
    base = np.eye(dim)[phones]
    s = base + noise * rng.normal(size=base.shape)
    t = base + noise * rng.normal(size=base.shape)
    return s, t, phones, groups


def test_identical_views_meet_everywhere():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)).astype(np.float32)
    phones = rng.integers(0, 7, size=300)
    st = shared_space.layer_stats(3, x, x.copy(), phones, groups=None)  # no exclusion: every frame finds itself
    assert st.same_phone_nn == 100.0 and st.speech_nn == 100.0 and st.text_nn == 100.0
    assert st.same_phone_nn_centred == 100.0
    assert st.cka == pytest.approx(1.0) and st.mean_cos == pytest.approx(1.0) and st.norm_ratio == pytest.approx(1.0)
    assert st.layer == 3 and st.frames == 300
    shares = np.bincount(phones) / 300
    assert st.chance == pytest.approx(100 * (shares ** 2).sum(), abs=0.01)


def test_phonetic_views_meet_across_utterances_and_unrelated_views_sit_at_chance():
    rng = np.random.default_rng(1)
    s, t, phones, groups = _one_hot_views(rng)
    st = shared_space.layer_stats(1, s, t, phones, groups)
    assert st.same_phone_nn == 100.0 and st.speech_nn == 100.0 and st.text_nn == 100.0
    assert st.cka > 0.9
    # speech moved by a constant vector along phone 0's text direction: every speech frame's nearest text
    # frame is a phone-0 frame (a hub), until each view is centred
    st = shared_space.layer_stats(1, s + 3.0 * np.eye(s.shape[1])[0], t, phones, groups)
    assert st.same_phone_nn == pytest.approx(100 * np.mean(phones == 0), abs=0.01)
    assert st.same_phone_nn_centred == 100.0
    # text frames unrelated to the speech's phones: the nearest one has the same phone about at chance
    t_random = rng.normal(size=t.shape)
    st = shared_space.layer_stats(1, s, t_random, phones, groups)
    assert abs(st.same_phone_nn - st.chance) < 10 and st.chance == pytest.approx(20, abs=5)
    assert st.text_nn < 40 and st.speech_nn == 100.0
    assert st.cka < 0.2


def test_own_utterance_is_never_the_neighbour():
    # query of utterance 0 is closest to its own key (same label) and then to a key of utterance 1 (other label)
    q = np.array([[1.0, 0.0]])
    keys = np.array([[1.0, 0.01], [0.9, 0.3]])
    assert shared_space.nearest_same_label(q, np.array([5]), keys, np.array([5, 6])) == 100.0
    assert shared_space.nearest_same_label(q, np.array([5]), keys, np.array([5, 6]), np.array([0]),
                                           np.array([0, 1])) == 0.0
    with pytest.raises(ValueError, match="no key outside its own group"):
        shared_space.nearest_same_label(q, np.array([5]), keys, np.array([5, 6]), np.array([0]), np.array([0, 0]))


def test_linear_cka_ignores_rotation_and_scale_and_knows_constant_views():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert shared_space.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    assert shared_space.linear_cka(x, np.ones((200, 8))) is None
    assert shared_space.chance_level(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(50.0)
    assert shared_space.mean_cosine(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])) == pytest.approx(0.0)


def _save_tiny(path, corpus, seed=0):
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    torch.manual_seed(seed)
    units = Dictionary.load(str(corpus / "dict.phn.txt"))
    letters = Dictionary.load(str(corpus / "dict.ltr.txt"))
    cfg = OmegaConf.structured(SpeechLMConfig(**TINY))
    model = SpeechLMModel(cfg, len(units), units.pad(), len(letters))
    torch.save({"args": None, "model": model.state_dict(), "extra_state": {},
                "cfg": {"model": {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "speechlm"},
                        "task": {"_name": "speechlm_pretraining", "data": str(corpus), "normalize": False}},
                "optimizer_history": [{"criterion_name": "SpeechLMCriterion", "optimizer_name": "Adam",
                                       "lr_scheduler_state": {}, "num_updates": 0}]}, path)
    return model


def test_shared_space_verb_on_a_tiny_model(mini_corpus, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    _save_tiny(ckpt, mini_corpus)
    out = tmp_path / "out"
    assert speechlm_main(["analyze", "shared-space", str(ckpt), str(mini_corpus), "--out", str(out),
                          "--frames-per-utt", "30", "--tsne-points", "80"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "shared_space.json").read_text())
    assert [r["layer"] for r in rows] == [0, 1, 2]  # input + the two Shared Transformer layers
    n_valid = len((mini_corpus / "valid.tsv").read_text().splitlines()) - 1
    for r in rows:
        assert {"layer", "same_phone_nn", "chance", "same_phone_nn_centred", "mean_cos", "cka", "speech_nn", "text_nn", "norm_ratio",
                "frames"} <= set(r)
        assert 0 <= r["same_phone_nn"] <= 100 and 0 < r["chance"] < 100
        assert -1 <= r["mean_cos"] <= 1 and 0 <= r["cka"] <= 1 and r["norm_ratio"] > 0
        assert n_valid <= r["frames"] <= 30 * n_valid
    # layer 0's text frames are the unit embedding of the true phone: one vector per phone, so the text
    # neighbour of a frame carries its phone whenever another utterance says that phone
    assert rows[0]["text_nn"] > 90
    assert (out / "shared_space.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heads = json.loads((out / "cross_reading.json").read_text())
    assert set(heads) == {"umlm_acc_speech", "umlm_acc_text", "uctc_ler_speech", "uctc_ler_text"}
    assert "| UCTC, letter error % |" in printed
    assert "| 0 (input) |" in printed and "CPU s" in printed


def test_the_same_frames_in_both_views_give_full_agreement(mini_corpus):
    from fairseq.data import Dictionary

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    torch.manual_seed(0)
    units = Dictionary.load(str(mini_corpus / "dict.phn.txt"))
    model = SpeechLMModel(SpeechLMConfig(**TINY), len(units), units.pad(), 0).eval()
    data = shared_space.load_data(str(mini_corpus), "valid", units, max_utts=4)
    assert len(data.utterances) == 4 and all(len(u.units) == len(u.phones) for u in data.utterances)
    speech, text, phones, groups = shared_space.collect_frames(model, data, frames_per_utt=25)
    assert len(speech) == len(text) == 3 and speech[0].shape == text[2].shape == (len(phones), 32)
    assert len(phones) == len(groups) == sum(min(25, len(u.phones)) for u in data.utterances)
    # a sanity case on real frames: the text view against itself, own frames allowed -> 100 %, CKA 1
    st = shared_space.layer_stats(2, text[2], text[2], phones, None)
    assert st.same_phone_nn == 100.0 and st.cka == pytest.approx(1.0)


def test_cross_reading_scores_each_head_on_each_view(mini_corpus, tmp_path):
    """UMLM accuracy = the head's argmax against the frame's unit, per view; UCTC letter error = greedy CTC
    against SPLIT.ltr: a head that only says blank deletes every letter (100 %), one that always says one
    letter leaves len(ref) - 1 errors where the reference has it; a letter outside the dictionary is named."""
    from fairseq.data import Dictionary

    model = _save_tiny(tmp_path / "tiny.pt", mini_corpus).eval()
    units = Dictionary.load(str(mini_corpus / "dict.phn.txt"))
    letter_dict = Dictionary.load(str(mini_corpus / "dict.ltr.txt"))
    data = shared_space.load_data(str(mini_corpus), "valid", units, max_utts=3)
    letters = shared_space.read_letters(str(mini_corpus), "valid", letter_dict, 3)
    r = shared_space.cross_reading(model, data, letters, letter_dict.bos())
    hits, frames = 0, 0
    with torch.inference_mode():
        for utt in data.utterances:
            u = torch.from_numpy(utt.units).view(1, -1)
            h = model.extract_text_features(u, None, 2)[0][0]
            hits += int((model.umlm_logits(h, 1).argmax(-1) == u[0]).sum())
            frames += u.size(1)
    assert r["umlm_acc_text"] == round(100 * hits / frames, 2) and 0 <= r["umlm_acc_speech"] <= 100
    with torch.no_grad():
        model.uctc_head.proj.bias.fill_(-1e4)
        model.uctc_head.proj.bias[letter_dict.bos()] = 1e4
    r = shared_space.cross_reading(model, data, letters, letter_dict.bos())
    assert r["uctc_ler_speech"] == r["uctc_ler_text"] == 100.0
    e = letter_dict.index("E")
    with torch.no_grad():
        model.uctc_head.proj.bias[letter_dict.bos()] = -1e4
        model.uctc_head.proj.bias[e] = 1e4
    r = shared_space.cross_reading(model, data, letters, letter_dict.bos())
    n = sum(len(ref) for ref in letters)
    want = sum(len(ref) - (e in ref) for ref in letters)
    assert r["uctc_ler_text"] == r["uctc_ler_speech"] == round(100 * want / n, 2)
    assert "uctc_ler_text" not in shared_space.cross_reading(model, data, None)
    bad = tmp_path / "corpus"
    bad.mkdir()
    lines = (mini_corpus / "valid.ltr").read_text().splitlines()
    (bad / "valid.ltr").write_text("\n".join(lines[:1] + ["A B 7 |"] + lines[2:]) + "\n")
    with pytest.raises(UserError, match=r"valid.ltr:2: letter '7' is not in the model's letter dictionary"):
        shared_space.read_letters(str(bad), "valid", letter_dict, 3)
    with pytest.raises(UserError, match="1 lines for 3 utterances"):
        (bad / "valid.ltr").write_text(lines[0] + "\n")
        shared_space.read_letters(str(bad), "valid", letter_dict, 3)


def test_random_init_is_seeded_and_bad_units_are_refused(mini_corpus, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    trained = _save_tiny(ckpt, mini_corpus, seed=5)
    loaded, normalize = shared_space.load_model(str(ckpt))
    assert not normalize
    assert torch.equal(loaded.unit_embed.weight, trained.unit_embed.weight)
    r1, _ = shared_space.load_model(str(ckpt), random_init=True, seed=3)
    r2, _ = shared_space.load_model(str(ckpt), random_init=True, seed=3)
    assert torch.equal(r1.unit_embed.weight, r2.unit_embed.weight)
    assert not torch.equal(r1.unit_embed.weight, trained.unit_embed.weight)
    # units of another inventory: the dictionary does not match the model's unit embedding
    other = tmp_path / "units"
    other.mkdir()
    (other / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(7)))
    with pytest.raises(UserError, match=r"dict.km.txt: 11 symbols, but .* unit embeddings"):
        from speechlm.cli import analyze

        analyze.run(_args(ckpt, mini_corpus, units_dir=str(other), label="km"))
    # labels off by more than a frame name the file and line
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dict.phn.txt").write_text((mini_corpus / "dict.phn.txt").read_text())
    lines = (mini_corpus / "valid.phn").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:-5])
    (bad / "valid.phn").write_text("\n".join(lines) + "\n")
    from fairseq.data import Dictionary

    with pytest.raises(UserError, match=r"valid.phn:2: .* frames, but .* must be 50 Hz labels"):
        shared_space.load_data(str(mini_corpus), "valid", Dictionary.load(str(bad / "dict.phn.txt")), str(bad), "phn")


def _args(ckpt, corpus, **kw):
    import argparse

    base = dict(checkpoint=str(ckpt), corpus=str(corpus), split="valid", out=None, units_dir=None, label="phn",
                random_init=False, seed=1, frames_per_utt=10, max_utts=3, tsne_points=20, no_plot=True)
    return argparse.Namespace(**{**base, **kw})


def test_unit_embed_scale_multiplies_the_unit_embedding_on_every_path():
    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    torch.manual_seed(0)
    model = SpeechLMModel(SpeechLMConfig(**TINY, unit_embed_scale=4.0), 12, 1, 8).eval()
    units = torch.randint(4, 12, (2, 30))
    assert torch.allclose(model.embed_units(units), 4.0 * model.unit_embed(units))
    text, _ = model.extract_text_features(units)
    assert torch.allclose(text, model.shared_encoder(4.0 * model.unit_embed(units), None), atol=1e-6)
    # swapped speech frames enter the Shared Transformer as the scaled embedding of their unit
    model.cfg.random_swap_prob, model.cfg.random_swap_length = 0.5, 1
    wav = torch.randn(1, 16000) * 0.1
    T = model.extract_features(wav)[0].size(1)
    target = torch.randint(4, 12, (1, T))
    seen = []
    model.shared_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    torch.manual_seed(1)
    out = model(wav, target=target, mask=True)
    swapped = out["swap_indices"][0]
    assert swapped.sum() > 5
    assert torch.allclose(seen[0][0, swapped], 4.0 * model.unit_embed(target[0, swapped]))


def _summary_run(exp: Path, run: str, name: str, seed: int, order: int, layers=None, time_from=None, heads=None):
    d = exp / "runs" / run
    (d / "decode").mkdir(parents=True)
    for subset in ("test", "test_other"):
        for kind in ("hypo", "ref"):
            (d / "decode" / f"{subset}.{kind}.wrd").write_text("A B (utt0)\n")
    (d / "time.decode").write_text('{"wall": 2.0, "user": 1.0, "sys": 0.0}\n')
    (d / "meta.json").write_text(json.dumps({"name": name, "seed": seed, "order": order, "pretrain_updates": 6,
                                             "tensorboard": None, "decode": f"runs/{run}/decode",
                                             "time_from": [time_from] if time_from else []}))
    if layers is not None:
        (d / "shared_space").mkdir()
        (d / "shared_space" / "shared_space.json").write_text(json.dumps(layers))
    if heads is not None:
        (d / "shared_space" / "cross_reading.json").write_text(json.dumps(heads))


def test_mini_summary_carries_the_shared_space_of_every_row(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import mini_summary

    def layers(nn, cka):
        return [{"layer": k, "same_phone_nn": v, "chance": 4.0, "cka": c, "frames": 100}
                for k, (v, c) in enumerate(zip(nn, cka))]

    def heads(umlm_text, uctc_speech):
        return {"umlm_acc_speech": 50.0, "umlm_acc_text": umlm_text, "uctc_ler_text": 30.0, "uctc_ler_speech": uctc_speech}

    _summary_run(tmp_path, "P.s1", "SpeechLM-P", 1, 3, layers([5.0, 10.0, 20.0], [0.3, 0.4, 0.5]), heads=heads(3.0, 98.0))
    _summary_run(tmp_path, "P.s2", "SpeechLM-P", 2, 3, layers([7.0, 12.0, 30.0], [0.3, 0.6, None]),
                 heads=heads(5.0, 90.0))
    _summary_run(tmp_path, "Z.s1", "zero-shot", 1, 4, time_from="runs/P.s1/time.decode")
    _summary_run(tmp_path, "F.s1", "fine-tuned elsewhere", 1, 5)  # no shared space: no key
    assert mini_summary.main(["--exp", str(tmp_path)]) == 0
    p, z, f = json.loads((tmp_path / "results.json").read_text())
    assert [x["layer"] for x in p["shared_space"]] == [0, 1, 2]
    assert [x["same_phone_nn"] for x in p["shared_space"]] == [6.0, 11.0, 25.0]
    assert p["shared_space"][2]["same_phone_nn_std"] == pytest.approx(7.07, abs=0.01)
    assert p["shared_space"][0]["chance"] == 4.0 and p["shared_space"][1]["cka"] == pytest.approx(0.5)
    assert "cka" not in p["shared_space"][2]  # a seed without it (constant view): no mean over the other
    assert z["shared_space"] == layers([5.0, 10.0, 20.0], [0.3, 0.4, 0.5])  # the model it decodes: P.s1's
    assert "shared_space" not in f
    out = capsys.readouterr().out
    assert "| SpeechLM-P | 6.0 / 11.0 / 25.0 (4.0) | 0.30 / 0.50 / – | 50.0 / 4.0 | 30.0 / 94.0 |" in out
    assert p["cross_reading"]["uctc_ler_speech"] == 94.0 and p["cross_reading"]["umlm_acc_text_std"] == pytest.approx(1.41, abs=0.01)
    assert z["cross_reading"] == heads(3.0, 98.0)  # P.s1's model, as its shared space
    assert "cross_reading" not in f
