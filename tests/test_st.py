"""Speech translation: the synthetic target language, `speechlm st prepare`, and a tiny speechlm_st
model trained with fairseq-hydra-train and decoded by fairseq-generate (BLEU from sacrebleu)."""
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import speechlm  # noqa: F401  (registers the components)
from speechlm.corpora.st import build_rows, copy_source_bleu, prepare_st_data, read_tsv
from speechlm.corpora.st_synthetic import TARGET_LANGUAGES, from_cipherese, to_cipherese
from speechlm.data.manifest import num_frames_50hz
from speechlm.data.readers import load_labels, load_manifest, read_audio

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_SPEECHLM = dict(
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    speech_encoder_layers=1, shared_encoder_layers=1, conv_pos=16, conv_pos_groups=4,
)


def run(cmd, log: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, f"{cmd[0]} failed, log {log}:\n{(res.stdout + res.stderr)[-3000:]}"
    return res.stdout + res.stderr


def save_speechlm_checkpoint(path: Path, data_dir: Path, num_units: int = 12):
    """A `speechlm` model (random weights) in fairseq's checkpoint format, as training writes it."""
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    torch.manual_seed(0)
    letters = Dictionary.load(str(data_dir / "dict.ltr.txt"))
    cfg = OmegaConf.structured(SpeechLMConfig(**TINY_SPEECHLM))
    model = SpeechLMModel(cfg, num_units, 1, len(letters))
    model_cfg = {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "speechlm"}
    torch.save({
        "args": None, "model": model.state_dict(), "extra_state": {},
        "cfg": {"model": model_cfg, "task": {"_name": "speechlm_pretraining", "data": str(data_dir)}},
        "optimizer_history": [{"criterion_name": "SpeechLMCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {}, "num_updates": 0}],
    }, path)
    return model


# ------------------------------------------------------------------------- synthetic language


def test_cipherese_is_reversible_reorders_and_differs_from_english():
    s = "AND GOD SAID LET THERE BE LIGHT"
    t = to_cipherese(s)
    assert t == "mak itk roz yiuk ho znoxo rumnz"
    assert from_cipherese(t) == s
    # pairs of words swap places; every letter changes; length in words is kept
    assert len(t.split()) == 7
    assert to_cipherese("THE CAT").split() == [to_cipherese("CAT"), to_cipherese("THE")]
    assert all(a.lower() != b for a, b in zip(s.replace(" ", ""), t.replace(" ", "")))
    assert "'" in to_cipherese("DON'T STOP")
    assert from_cipherese(to_cipherese("DON'T STOP")) == "DON'T STOP"
    # the monotonic variant: the same words in the English order
    mono = TARGET_LANGUAGES["cipherese-monotonic"](s)
    assert mono == "itk mak yiuk roz znoxo ho rumnz"
    assert sorted(mono.split()) == sorted(t.split()) and from_cipherese(mono, swap=False) == s


def test_cipherese_round_trips_the_corpus_text(mini_corpus):
    words = (mini_corpus / "train.wrd").read_text().splitlines()
    assert words
    for line in words:
        assert from_cipherese(to_cipherese(line)) == " ".join(line.split())


# ------------------------------------------------------------------------- st prepare


@pytest.fixture(scope="module")
def st_data(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_data")
    counts = prepare_st_data(str(mini_corpus), str(out), ["train", "valid", "test"], "train",
                             synthetic="cipherese")
    return out, counts


def test_st_prepare_round_trip(mini_corpus, st_data):
    import sentencepiece as spm

    out, counts = st_data
    for split in ("train", "valid", "test"):
        root, rows = load_manifest(mini_corpus / f"{split}.tsv")
        wrd = load_labels(mini_corpus / f"{split}.wrd", len(rows))
        tsv = read_tsv(out / f"{split}.tsv")
        assert counts[split] == len(rows) == len(tsv)
        for (rel, n), src, r in zip(rows, wrd, tsv):
            assert r["src_text"] == " ".join(src.split())
            assert r["tgt_text"] == to_cipherese(src)
            assert int(r["n_frames"]) == num_frames_50hz(n)
    # the audio in the zip is exactly the wav's samples, at the offset the TSV names
    r = read_tsv(out / "test.tsv")[1]
    zip_path, offset, size = r["audio"].rsplit(":", 2)
    with open(zip_path, "rb") as f:
        f.seek(int(offset))
        import io
        arr = np.load(io.BytesIO(f.read(int(size))))
    root, rows = load_manifest(mini_corpus / "test.tsv")
    np.testing.assert_array_equal(arr, read_audio(os.path.join(root, rows[1][0])))
    assert zipfile.ZipFile(zip_path).testzip() is None
    # the char SentencePiece model reproduces every target; its pieces are the fairseq dictionary
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm_char.model"))
    for r in read_tsv(out / "train.tsv"):
        pieces = sp.encode(r["tgt_text"], out_type=str)
        assert all(len(p) == 1 for p in pieces) and sp.decode(pieces) == r["tgt_text"]
    vocab = [ln.split()[0] for ln in (out / "spm_char.txt").read_text().splitlines()]
    assert "\u2581" in vocab and "<unk>" not in vocab and len(vocab) == sp.get_piece_size() - 4
    cfg = (out / "config.yaml").read_text()
    assert "use_audio_input: true" in cfg and "vocab_filename: spm_char.txt" in cfg


def test_fairseq_speech_to_text_task_reads_the_prepared_data(mini_corpus, st_data):
    """fairseq's own task and dataset load the raw waveform and the encoded target."""
    from argparse import Namespace

    from fairseq.tasks.speech_to_text import SpeechToTextTask

    out, _ = st_data
    args = Namespace(data=str(out), config_yaml="config.yaml", multitask_config_yaml=None,
                     max_source_positions=6000, max_target_positions=1024, seed=1,
                     train_subset="train")
    task = SpeechToTextTask.setup_task(args)
    task.load_dataset("test")
    ds = task.dataset("test")
    item = ds[0]
    root, rows = load_manifest(mini_corpus / "test.tsv")
    wav = read_audio(os.path.join(root, rows[0][0]))
    # fairseq's speech_to_text standardizes raw audio whatever config.yaml says (its
    # `standardize_audio` is a method, so `if cfg.standardize_audio:` is always true)
    expected = torch.nn.functional.layer_norm(torch.from_numpy(wav), wav.shape)
    torch.testing.assert_close(item.source, expected)
    text = task.data_cfg.bpe_tokenizer and read_tsv(out / "test.tsv")[0]["tgt_text"]
    decoded = task.tgt_dict.string(item.target[:-1])  # drop </s>
    assert decoded.replace(" ", "").replace("\u2581", " ").strip() == text


def test_st_prepare_errors_name_the_file_and_line(mini_corpus, tmp_path):
    _, rows = load_manifest(mini_corpus / "test.tsv")
    targets = ["x"] * len(rows)
    targets[2] = "  "
    with pytest.raises(ValueError, match=r"targets\.de:3: empty target sentence"):
        build_rows(str(mini_corpus / "test.tsv"), targets, targets, None, "targets.de")
    with pytest.raises(ValueError, match=r"has 1 lines but .*test\.tsv has"):
        build_rows(str(mini_corpus / "test.tsv"), ["x"], ["x"], None, "targets.de")
    (tmp_path / "test.tsv").write_text(f"{mini_corpus}\nshort.wav\t100\n")
    (tmp_path / "test.de").write_text("hallo\n")
    (tmp_path / "test.wrd").write_text("HELLO\n")
    with pytest.raises(ValueError, match=r"test\.tsv:2: utterance 'short' has 100 samples"):
        prepare_st_data(str(tmp_path), str(tmp_path / "out"), ["test"], "test", target_ext="de")


def test_copy_the_source_baseline_scores_near_zero(st_data):
    out, _ = st_data
    bleu = copy_source_bleu(str(out / "test.tsv"))
    assert bleu.score < 5.0


# ------------------------------------------------------------------------- model + fairseq-generate


def test_speechlm_st_encoder_decoder_shapes_and_padding(tmp_path, mini_corpus, st_data):
    from argparse import Namespace

    from fairseq.tasks.speech_to_text import SpeechToTextTask
    from omegaconf import OmegaConf

    from speechlm.models.speechlm_st import SpeechLMST, SpeechLMSTConfig

    out, _ = st_data
    ckpt = tmp_path / "pretrained.pt"
    pre = save_speechlm_checkpoint(ckpt, mini_corpus)
    task = SpeechToTextTask.setup_task(Namespace(
        data=str(out), config_yaml="config.yaml", max_source_positions=6000,
        max_target_positions=1024, seed=1))
    cfg = OmegaConf.structured(SpeechLMSTConfig(
        w2v_path=str(ckpt), decoder_layers=2, decoder_embed_dim=32, decoder_ffn_embed_dim=64,
        decoder_attention_heads=4))
    model = SpeechLMST.build_model(cfg, task).eval()
    assert len(model.decoder.layers) == 2
    # the encoder holds the pre-trained weights
    got = model.encoder.speech.w2v_model.state_dict()
    for k, v in pre.state_dict().items():
        if not k.startswith(("unit_embed", "umlm_", "uctc_")):
            torch.testing.assert_close(got[k], v, msg=k)
    wav = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9000])
    enc = model.encoder(wav, lengths)
    T = num_frames_50hz(16000)
    assert enc["encoder_out"][0].shape == (T, 2, 32)
    assert enc["encoder_padding_mask"][0].sum(-1).tolist() == [0, T - num_frames_50hz(9000)]
    alone = model.encoder(wav[1:, :9000], lengths[1:])["encoder_out"][0]
    torch.testing.assert_close(enc["encoder_out"][0][: alone.size(0), 1], alone[:, 0],
                               atol=1e-4, rtol=1e-4)
    # ... which the SpeechLM (group-norm) front end does not see: it is invariant to the scale and
    # offset of the waveform, so a model pre-trained on raw audio gets the same features
    std = torch.nn.functional.layer_norm(wav[:1], (16000,))
    torch.testing.assert_close(model.encoder(std, lengths[:1])["encoder_out"][0],
                               enc["encoder_out"][0][:, :1], atol=1e-3, rtol=1e-3)
    prev = torch.full((2, 5), task.tgt_dict.eos())
    logits, _ = model(wav, lengths, prev)
    assert logits.shape == (2, 5, len(task.tgt_dict))


def test_mini_st_config_keeps_the_encoder_frozen_for_every_update():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "examples/mini/config/st/speechlm_st_tiny.yaml")
    assert cfg.model.freeze_finetune_updates == cfg.optimization.max_update == 600
    cfg.optimization.max_update = 37  # an override of the updates moves the freeze with it
    assert cfg.model.freeze_finetune_updates == 37


@pytest.mark.slow
def test_st_train_then_fairseq_generate_prints_bleu(tmp_path, mini_corpus, st_data):
    out, _ = st_data
    ckpt = tmp_path / "pretrained.pt"
    save_speechlm_checkpoint(ckpt, mini_corpus)
    save = tmp_path / "st"
    log = run([
        str(BIN / "fairseq-hydra-train"), "--config-dir", "examples/mini/config/st",
        "--config-name", "speechlm_st_tiny", "common.user_dir=speechlm", f"task.data={out}",
        f"model.w2v_path={ckpt}", f"checkpoint.save_dir={save}", "optimization.max_update=12",
        "dataset.validate_interval_updates=12", "model.decoder_layers=1",
        "model.decoder_embed_dim=32", "model.decoder_ffn_embed_dim=64",
        "model.decoder_attention_heads=4", "optimization.lr=[3e-3]",
        "lr_scheduler.warmup_updates=4",
    ], tmp_path / "train.log")
    losses = [float(m) for m in re.findall(r"epoch \d+ \| loss ([\d.]+)", log)]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    # the config keeps the encoder frozen for the whole run: only the decoder learnt
    from speechlm.checkpoint import read_checkpoint

    pre = read_checkpoint(str(ckpt))["model"]
    prefix = "encoder.speech.w2v_model."
    st = {k[len(prefix):]: v for k, v in read_checkpoint(str(save / "checkpoint_best.pt"))["model"].items()
          if k.startswith(prefix)}
    assert len(st) > 20 and set(st) <= set(pre), sorted(set(st) - set(pre))[:5]
    for k, v in st.items():
        assert torch.equal(v, pre[k]), f"{k} changed: the encoder was not frozen"
    ckpt.unlink()  # the fine-tuned checkpoint must not need the pre-trained file
    gen = run([
        str(BIN / "fairseq-generate"), str(out), "--user-dir", "speechlm", "--task",
        "speech_to_text", "--path", str(save / "checkpoint_best.pt"), "--gen-subset", "test",
        "--beam", "5", "--max-tokens", "20000", "--required-batch-size-multiple", "1",
        "--max-len-b", "60", "--scoring", "sacrebleu",
    ], tmp_path / "generate.log")
    n_test = len(read_tsv(out / "test.tsv"))
    assert len(re.findall(r"^H-\d+\t", gen, flags=re.M)) == n_test
    assert re.search(r"Generate test with beam=5: BLEU = \d+\.\d+", gen), gen[-2000:]


# ------------------------------------------------------------------------- st compare (stage 8's runner)

GENERATE_LOG = """\
2026-12-07 21:00:00 | INFO | fairseq_cli.generate | loaded 2 examples
S-1\tsome source
T-1\tzpo pi
H-1\t-0.5\tz p o ▁ p i
D-1\t-0.5\tzpo pi
P-1\t-0.1 -0.2
T-0\tmak itk
H-0\t-0.3\tm a k
D-0\t-0.3\tmak
2026-12-07 21:00:01 | INFO | fairseq_cli.generate | Generate test with beam=5: BLEU = 12.34 50.0/40.0/0/0 (BP = 0.5)
"""


def test_st_compare_reads_fairseq_generate_and_aggregates_seeds(tmp_path):
    from speechlm.cli.st_compare import aggregate, format_table, parse_row, read_generate
    from speechlm.errors import UserError

    log = tmp_path / "generate.log"
    log.write_text(GENERATE_LOG)
    bleu, hyps, refs = read_generate(str(log))
    assert bleu == 12.34 and hyps == ["mak", "zpo pi"] and refs == ["mak itk", "zpo pi"]
    log.write_text(GENERATE_LOG.splitlines()[-1])
    with pytest.raises(UserError, match="generate.log: no BLEU line"):
        read_generate(str(log))

    row = parse_row("SpeechLM-P=runs/P.s{seed}/pretrain/checkpoint_last.pt")
    assert (row.name, row.random_weights, row.checkpoint_for(3)) == (
        "SpeechLM-P", False, "runs/P.s3/pretrain/checkpoint_last.pt")
    row = parse_row("random weights=random:x.pt")
    assert (row.slug, row.random_weights, row.checkpoint) == ("random-weights", True, "x.pt")
    for bad in ("noequals", "=x.pt", "copy=x.pt"):
        with pytest.raises(UserError, match="--row"):
            parse_row(bad)

    runs = [{"name": n, "seed": s, "bleu": b, "chrf": 2 * b, "seconds": 10.0, "wall_seconds": 20.0,
             "run": f"runs/{n}.s{s}", "bleu_detail": "x", "valid_loss": [[100, 9.0], [200, 3.0 + b / 10]]}
            for n, s, b in (("A", 1, 10.0), ("A", 2, 14.0), ("B", 1, 1.0), ("B", 2, 1.0))]
    rows = aggregate(runs, ["A", "B"])
    assert [r["name"] for r in rows] == ["A", "B"]
    assert rows[0]["bleu"] == 12.0 and rows[0]["bleu_std"] == pytest.approx(2 ** 0.5 * 2)
    assert rows[0]["valid_loss"] == pytest.approx(4.2) and rows[0]["valid_loss_std"] == pytest.approx(0.2 * 2 ** 0.5)
    assert rows[1]["bleu_std"] == 0.0 and [s["seed"] for s in rows[0]["seeds"]] == [1, 2]
    table = format_table(rows + [{"name": "copy", "bleu": 0.5, "chrf": 3.0, "seconds": 0.0}], "test")
    assert "| A | 12.00 ± 2.83 | 24.0 ± 5.7 | 24x | 4.200 ± 0.283 | 2 | 10 |" in table
    assert "| copy | 0.50 | 3.0 | – | – | – | 0 |" in table
    runs[0]["valid_loss"] = []  # a run without a validation: no valid loss for its row
    assert "valid_loss" not in aggregate(runs, ["A"])[0]


@pytest.mark.slow
def test_st_compare_writes_results_with_every_row_and_the_copy_row(tmp_path, mini_corpus, st_data):
    import json

    out, _ = st_data
    ckpt = tmp_path / "pretrained.pt"
    save_speechlm_checkpoint(ckpt, mini_corpus)
    exp = tmp_path / "st"
    cmd = [str(BIN / "speechlm"), "st", "compare", str(out), str(exp), "--row", f"pre-trained={ckpt}",
           "--row", f"random weights=random:{ckpt}", "--seeds", "1", "--jobs", "2", "--cpu",
           "--override", "optimization.max_update=3", "dataset.validate_interval_updates=3", "model.decoder_layers=1",
           "model.decoder_embed_dim=32", "model.decoder_ffn_embed_dim=64", "model.decoder_attention_heads=4",
           "lr_scheduler.warmup_updates=2"]
    log = run(cmd, tmp_path / "compare.log")
    results = json.loads((exp / "results.json").read_text())
    assert [r["name"] for r in results] == ["pre-trained", "random weights", "copy"]
    for r in results:
        assert 0.0 <= r["bleu"] <= 100.0 and 0.0 <= r["chrf"] <= 100.0, r
    assert results[-1]["bleu"] == pytest.approx(copy_source_bleu(str(out / "test.tsv")).score)
    for r in results[:2]:
        assert r["seconds"] > 0 and r["seeds"][0]["seed"] == 1
        run_dir = exp / r["seeds"][0]["run"]
        assert (run_dir / "checkpoint_best.pt").is_file()
        assert list((run_dir / "tb").rglob("events.out.tfevents.*"))
        n_test = len(read_tsv(out / "test.tsv"))
        assert len(re.findall(r"^D-\d+\t", (run_dir / "generate.log").read_text(), flags=re.M)) == n_test
    assert (exp / "results.png").stat().st_size > 1000
    assert "| pre-trained |" in log and "| copy |" in log
    # a second call trains and decodes nothing: same results
    before = (exp / "results.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in exp.glob("runs/*/*") if p.is_file()}
    run(cmd, tmp_path / "compare2.log")
    assert json.loads((exp / "results.json").read_text()) == json.loads(before)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
