"""Speech -> hidden units: MFCC / checkpoint-layer dumps, k-means learn/apply/merge, purity."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from speechlm.cli.main import main as speechlm_main
from speechlm.data.manifest import num_frames_50hz, num_frames_100hz
from speechlm.data.readers import load_manifest, read_audio
from speechlm.tokenizers.features import compute_deltas, load_feature_shard
from speechlm.tokenizers.kmeans import KMeansApplier, purity, sample_frames


@pytest.fixture(scope="module")
def mfcc_dir(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat")
    for rank in range(2):
        assert speechlm_main(["features", "dump", str(mini_corpus), "valid", str(out), "--nshard", "2",
                              "--rank", str(rank)]) == 0
    return out


def test_mfcc_dump_has_one_row_per_50hz_frame(mini_corpus, mfcc_dir, tmp_path):
    _, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    lens = []
    for rank in range(2):
        feats, shard_lens = load_feature_shard(str(mfcc_dir), "valid", rank, 2)
        assert feats.shape == (sum(shard_lens), 39) and feats.dtype == np.float32
        lens += shard_lens
    assert lens == [num_frames_50hz(n) for _, n in rows]
    # the 50 Hz rows are the 100 Hz Kaldi frames 0, 2, 4, ... (same frame centres)
    assert speechlm_main(["features", "dump", str(mini_corpus), "valid", str(tmp_path), "--rate", "100"]) == 0
    f100, l100 = load_feature_shard(str(tmp_path), "valid", 0, 1)
    assert l100 == [num_frames_100hz(n) for _, n in rows]
    f50, _ = load_feature_shard(str(mfcc_dir), "valid", 0, 2)
    n0 = lens[0]
    np.testing.assert_array_equal(f50[:n0], f100[: l100[0]][::2][:n0])
    # per-frame labels line up with the corpus's true 50 Hz phones
    phn = (mini_corpus / "valid.phn").read_text().splitlines()
    assert [len(p.split()) for p in phn] == lens


def test_deltas_match_the_regression_formula():
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    d = compute_deltas(x)
    pad = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])
    expected = np.stack([(pad[t + 3] - pad[t + 1] + 2 * (pad[t + 4] - pad[t])) / 10 for t in range(7)])
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)


def test_kmeans_learn_apply_shards_merge_and_score(mini_corpus, mfcc_dir, tmp_path):
    km = tmp_path / "km.npy"
    assert speechlm_main(["kmeans", "learn", str(mfcc_dir), "valid", "--nshard", "2", "--km-path", str(km),
                          "-k", "16", "--percent", "0.5", "--n-init", "2", "--max-iter", "20"]) == 0
    C = np.load(km)
    assert C.shape == (16, 39)
    for rank in range(2):
        assert speechlm_main(["kmeans", "apply", str(mfcc_dir), "valid", "--km-path", str(km), "--lab-dir",
                              str(tmp_path / "lab"), "--nshard", "2", "--rank", str(rank)]) == 0
    assert speechlm_main(["kmeans", "merge", str(tmp_path / "lab"), "valid", "--nshard", "2",
                          "--km-path", str(km)]) == 0
    lines = (tmp_path / "lab" / "valid.km").read_text().splitlines()
    phn = (mini_corpus / "valid.phn").read_text().splitlines()
    assert [len(x.split()) for x in lines] == [len(p.split()) for p in phn]
    # labels are the nearest centroid by the full Euclidean distance
    feats = np.concatenate([load_feature_shard(str(mfcc_dir), "valid", r, 2)[0] for r in range(2)])
    labels = np.array([int(u) for line in lines for u in line.split()])
    brute = ((feats[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    assert (labels == brute).mean() > 0.999  # float32 ties aside
    counts = [line.split() for line in (tmp_path / "lab" / "dict.km.txt").read_text().splitlines()]
    assert [c[0] for c in counts] == [str(k) for k in range(16)]
    assert sum(int(c[1]) for c in counts) == len(labels)
    assert np.bincount(labels, minlength=16).tolist() == [int(c[1]) for c in counts]
    # the unsharded path gives the same labels
    assert speechlm_main(["features", "dump", str(mini_corpus), "valid", str(tmp_path / "f1")]) == 0
    assert speechlm_main(["kmeans", "apply", str(tmp_path / "f1"), "valid", "--km-path", str(km),
                          "--lab-dir", str(tmp_path / "lab1")]) == 0
    assert (tmp_path / "lab1" / "valid.km").read_bytes() == (tmp_path / "lab" / "valid.km").read_bytes()
    assert (tmp_path / "lab1" / "dict.km.txt").read_bytes() == (tmp_path / "lab" / "dict.km.txt").read_bytes()
    res = purity([np.array([int(u) for u in x.split()]) for x in lines], [p.split() for p in phn])
    assert res["frames"] == len(labels) and 0 < res["pnmi"] < 1
    majority = max(np.unique([q for p in phn for q in p.split()], return_counts=True)[1]) / len(labels)
    assert res["phone_purity"] > majority  # the units carry phone information


def test_learning_sample_does_not_depend_on_the_sharding(mfcc_dir):
    """k-means learns from the same frames whether the features come in 1 shard or 2 (Slurm arrays)."""
    shards = [load_feature_shard(str(mfcc_dir), "valid", r, 2)[0] for r in range(2)]
    whole = np.concatenate(shards)
    one, two = sample_frames([whole], 0.3, seed=5), sample_frames(shards, 0.3, seed=5)
    assert one.shape == (round(0.3 * len(whole)), 39)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, sample_frames([whole], 0.3, seed=6))
    np.testing.assert_array_equal(sample_frames(shards, 1.0, seed=5), whole)


def test_purity_on_hand_made_labels():
    phones = [["A", "A", "B", "B", "C"]]
    assert purity([np.array([0, 0, 1, 1, 2])], phones)["pnmi"] == pytest.approx(1.0)
    r = purity([np.array([0, 0, 0, 0, 0])], phones)
    assert r["pnmi"] == pytest.approx(0.0) and r["phone_purity"] == pytest.approx(0.4)
    assert r["cluster_purity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="utterance 1: 4 units but 5 phone frames"):
        purity([np.array([0, 0, 0, 0])], phones)


def test_applier_chunks_agree_with_one_product():
    rng = np.random.default_rng(1)
    C, x = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(1000, 5)).astype(np.float32)
    np.testing.assert_array_equal(KMeansApplier(C, chunk_frames=64)(x), KMeansApplier(C)(x))
    with pytest.raises(ValueError, match="do not match centroids of dim 5"):
        KMeansApplier(C)(x[:, :4])


TINY_CONV = "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"


def _save(path, model_cfg, task_cfg, model):
    state = {"cfg": {"model": model_cfg, "task": task_cfg}, "model": model.state_dict(), "extra_state": {},
             "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam",
                                    "lr_scheduler_state": {}, "num_updates": 0}]}
    torch.save(state, path)


def _check_layer_dump(mini_corpus, ckpt, model, layer, tmp_path):
    out = tmp_path / "feat"
    assert speechlm_main(["features", "dump", str(mini_corpus), "valid", str(out), "--checkpoint", str(ckpt),
                          "--layer", str(layer)]) == 0
    feats, lens = load_feature_shard(str(out), "valid", 0, 1)
    root, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    assert lens == [num_frames_50hz(n) for _, n in rows]
    model.eval()
    with torch.no_grad():
        wav = torch.from_numpy(read_audio(f"{root}/{rows[1][0]}")).view(1, -1)
        ref = model.extract_features(wav, padding_mask=None, output_layer=layer)[0][0].numpy()
    np.testing.assert_allclose(feats[lens[0] : lens[0] + lens[1]], ref, rtol=1e-4, atol=1e-4)
    return feats


def test_hubert_checkpoint_layer_dump(mini_corpus, tmp_path):
    from fairseq.data import Dictionary
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    torch.manual_seed(0)
    mcfg = OmegaConf.structured(HubertConfig(
        conv_feature_layers=TINY_CONV, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=2, final_dim=16, conv_pos=16, conv_pos_groups=4, label_rate=50))
    tcfg = OmegaConf.structured(HubertPretrainingConfig(data="/nonexistent", labels=["km"], label_rate=50))
    d = Dictionary()
    for i in range(10):
        d.add_symbol(str(i))
    model = HubertModel(mcfg, tcfg, [d])
    mc = OmegaConf.to_container(mcfg, enum_to_str=True)
    tc = OmegaConf.to_container(tcfg, enum_to_str=True)
    mc["_name"], tc["_name"] = "hubert", "hubert_pretraining"
    _save(tmp_path / "hubert.pt", mc, tc, model)
    f1 = _check_layer_dump(mini_corpus, tmp_path / "hubert.pt", model, 1, tmp_path / "l1")
    f2 = _check_layer_dump(mini_corpus, tmp_path / "hubert.pt", model, 2, tmp_path / "l2")
    assert f1.shape == f2.shape and not np.allclose(f1, f2)  # a different layer is dumped


def test_speechlm_checkpoint_layer_dump(mini_corpus, tmp_path):
    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    torch.manual_seed(0)
    cfg = SpeechLMConfig(conv_feature_layers=TINY_CONV, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                         encoder_attention_heads=2, speech_encoder_layers=1, shared_encoder_layers=1,
                         conv_pos=16, conv_pos_groups=4)
    model = SpeechLMModel(OmegaConf.structured(cfg), 12, 1, 8)
    mc = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    mc["_name"] = "speechlm"
    _save(tmp_path / "speechlm.pt", mc, {"_name": "speechlm_pretraining"}, model)
    _check_layer_dump(mini_corpus, tmp_path / "speechlm.pt", model, 2, tmp_path)
