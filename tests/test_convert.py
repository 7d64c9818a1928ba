"""`speechlm convert`: checkpoints of the published SpeechLM code give the same outputs here.

The fixtures in tests/fixtures/official/ were made by running the published code (microsoft/unilm
``speechlm/``, outside this repository) on tiny official-layout models; their README says how. Each
expected tensor is what the published implementation returned for the committed input.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import speechlm  # noqa: F401  (registers the components)
from speechlm.convert import ConvertError, convert
from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/official"
BIN = Path(sys.executable).parent
TOL = 1e-4


def _input(exp):
    x = exp["wav"].float()[None] / 32768
    if exp.get("normalize"):
        x = F.layer_norm(x[0], x[0].shape)[None]
    return x


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    paths = {}
    for name in ("base", "large"):
        paths[name] = out / f"pretrained_{name}.pt"
        assert convert(str(FIX / f"pretrained_{name}.pt"), str(paths[name]), dict_ltr=str(FIX / "dict.ltr.txt"),
                       dict_phn=str(FIX / "dict.phn.txt")) == "pretrained"
    paths["asr"] = out / "asr_base.pt"
    assert convert(str(FIX / "asr_base.pt"), str(paths["asr"]), dict_ltr=str(FIX / "dict.ltr.txt")) == "asr"
    paths["st"] = out / "st_base.pt"
    assert convert(str(FIX / "st_base.pt"), str(paths["st"]), dict_st=str(FIX / "dict.st.txt")) == "st"
    return paths


@pytest.mark.parametrize("name", ["base", "large"])
def test_converted_pretrained_model_matches_the_published_outputs(converted, name):
    """extract_features for k = 1..L/2 and the final output, UMLM logits of both outputs, UCTC logits."""
    exp = torch.load(FIX / f"expected_pretrained_{name}.pt", weights_only=True)
    model = SpeechLMModel.from_checkpoint(str(converted[name])).eval()
    x = _input(exp)
    with torch.no_grad():
        n_speech = len(model.speech_encoder.layers)
        assert sorted(k for k in exp["features"] if k != "final") == list(range(1, n_speech + 1)) + [2 * n_speech]
        for k, want in exp["features"].items():
            got, pad = model.extract_features(x, None, output_layer=None if k == "final" else k)
            assert pad is None and got.shape == want.shape
            assert (got - want).abs().max().item() < TOL, (name, k)
        h_speech, _ = model.extract_features(x, None, output_layer=n_speech)
        h_final, _ = model.extract_features(x, None)
        assert (model.umlm_logits(h_speech[0], 0) - exp["umlm_logits_0"]).abs().max().item() < TOL
        assert (model.umlm_logits(h_final[0], 1) - exp["umlm_logits_1"]).abs().max().item() < TOL
        uctc = model.forward_text(exp["text_units"], None, mask=False)["uctc_logits"]
        assert (uctc - exp["uctc_logits"]).abs().max().item() < TOL
    # the letters the UCTC head was trained on travel with the checkpoint
    assert model.cfg.uctc_letters[4:] == list("|ETAOS")


@pytest.mark.parametrize("name", ["base", "large"])
def test_feature_dumper_reads_a_converted_checkpoint(converted, name):
    """`speechlm features dump --checkpoint` / `phone-units --checkpoint` read layer k of the converted
    model: the published features (the task's normalize flag travels with the checkpoint)."""
    from speechlm.tokenizers.features import CheckpointFeatureReader

    exp = torch.load(FIX / f"expected_pretrained_{name}.pt", weights_only=True)
    wav = (exp["wav"].float() / 32768).numpy()
    for k in (1, 2):
        feats = CheckpointFeatureReader(str(converted[name]), layer=k)(wav)
        assert abs(feats - exp["features"][k][0].numpy()).max() < TOL


def _asr_data(tmp_path, mini_corpus, n=3):
    """A fine-tuning data dir over a few mini-corpus utterances, with the fixture's letter dictionary."""
    data = tmp_path / "asr_data"
    data.mkdir()
    lines = (Path(mini_corpus) / "valid.tsv").read_text().splitlines()
    root = lines[0] if os.path.isabs(lines[0]) else str((Path(mini_corpus) / lines[0]).resolve())
    (data / "test.tsv").write_text("\n".join([root] + lines[1: n + 1]) + "\n")
    (data / "test.ltr").write_text("T E A | S O T E |\n" * n)
    (data / "test.wrd").write_text("TEA SOTE\n" * n)
    (data / "dict.ltr.txt").write_text((FIX / "dict.ltr.txt").read_text())
    return data


def test_converted_asr_model_gives_the_published_ctc_logits(converted, mini_corpus, tmp_path):
    from speechlm.cli.infer import load_model_and_task

    exp = torch.load(FIX / "expected_asr_base.pt", weights_only=True)
    model, task, _ = load_model_and_task(str(converted["asr"]), {"data": str(_asr_data(tmp_path, mini_corpus))})
    x = _input(exp)
    with torch.no_grad():
        out = model(source=x, padding_mask=None)
        logits = out["encoder_out"].transpose(0, 1)  # (B,T,V) at 50 Hz
    assert logits.shape == exp["ctc_logits"].shape
    assert (logits - exp["ctc_logits"]).abs().max().item() < TOL
    assert len(task.target_dictionary) == logits.size(-1)


@pytest.mark.slow
def test_converted_asr_checkpoint_decodes_with_speechlm_infer(converted, mini_corpus, tmp_path):
    data = _asr_data(tmp_path, mini_corpus)
    res = tmp_path / "decode"
    cmd = [str(BIN / "speechlm"), "infer", "--config-dir", str(REPO / "examples/mini/config/decode"),
           "--config-name", "infer_viterbi", f"common_eval.path={converted['asr']}", f"task.data={data}",
           "dataset.gen_subset=test", f"common_eval.results_path={res}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    hyps = (res / "test.hypo.wrd").read_text().splitlines()
    refs = (res / "test.ref.wrd").read_text().splitlines()
    assert len(hyps) == len(refs) == 3 and all(r.startswith("TEA SOTE") for r in refs)
    assert "WER" in proc.stdout + proc.stderr


def _st_data(tmp_path, mini_corpus, n=3):
    """A fairseq speech_to_text data dir (raw audio in fairseq's zip storage) over mini-corpus utterances,
    with the fixture's target vocabulary."""
    from speechlm.corpora.st import pack_audio_zip
    from speechlm.data.manifest import num_frames_50hz

    data = tmp_path / "st_data"
    data.mkdir()
    lines = (Path(mini_corpus) / "valid.tsv").read_text().splitlines()
    root = Path(lines[0]) if os.path.isabs(lines[0]) else (Path(mini_corpus) / lines[0]).resolve()
    rows = []
    for i, line in enumerate(lines[1: n + 1]):
        rel, samples = line.split("\t")[:2]
        rows.append({"id": f"utt{i}", "audio": str(root / rel), "n_frames": str(num_frames_50hz(int(samples))),
                     "tgt_text": "a b c d"})  # n_frames: 50 Hz, as `speechlm st prepare` writes
    pack_audio_zip(rows, str(data / "test_audio.zip"))
    tsv = ["id\taudio\tn_frames\ttgt_text"] + [f"{r['id']}\t{r['audio']}\t{r['n_frames']}\t{r['tgt_text']}" for r in rows]
    (data / "test.tsv").write_text("\n".join(tsv) + "\n")
    (data / "dict.st.txt").write_text((FIX / "dict.st.txt").read_text())
    (data / "config.yaml").write_text("use_audio_input: true\nuse_sample_rate: 16000\nstandardize_audio: false\n"
                                      "vocab_filename: dict.st.txt\ninput_channels: 1\ninput_feat_per_channel: 1\n")
    return data


def test_converted_st_model_gives_the_published_decoder_output(converted, mini_corpus, tmp_path):
    from argparse import Namespace

    from fairseq import checkpoint_utils
    from fairseq.tasks.speech_to_text import SpeechToTextTask

    exp = torch.load(FIX / "expected_st_base.pt", weights_only=True)
    task = SpeechToTextTask.setup_task(Namespace(
        data=str(_st_data(tmp_path, mini_corpus)), config_yaml="config.yaml", multitask_config_yaml=None,
        max_source_positions=6000, max_target_positions=1024, seed=1))
    assert list(task.target_dictionary.symbols) == exp["target_symbols"]
    models, _ = checkpoint_utils.load_model_ensemble([str(converted["st"])], task=task)
    model = models[0].eval()
    x = exp["wav"].float()[None] / 32768
    with torch.no_grad():
        enc = model.encoder(x, torch.tensor([x.size(1)]))
        out, _ = model.decoder(exp["prev_output_tokens"], encoder_out=enc)
        # incremental decoding (what beam search runs) gives the same last-step output
        state = {}
        for t in range(exp["prev_output_tokens"].size(1)):
            step, _ = model.decoder(exp["prev_output_tokens"][:, : t + 1], encoder_out=enc, incremental_state=state)
    assert out.shape == exp["decoder_out"].shape
    assert (out - exp["decoder_out"]).abs().max().item() < TOL
    assert (step[:, -1] - exp["decoder_out"][:, -1]).abs().max().item() < TOL


@pytest.mark.slow
def test_converted_st_checkpoint_decodes_with_fairseq_generate(converted, mini_corpus, tmp_path):
    data = _st_data(tmp_path, mini_corpus)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(BIN / "fairseq-generate"), str(data), "--user-dir", str(REPO / "speechlm"), "--task",
           "speech_to_text", "--config-yaml", "config.yaml", "--path", str(converted["st"]), "--gen-subset", "test",
           "--beam", "5", "--max-tokens", "20000", "--max-len-b", "20", "--required-batch-size-multiple", "1",
           "--scoring", "sacrebleu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert len(re.findall(r"^H-\d+\t", out, flags=re.M)) == 3
    assert re.search(r"Generate test with beam=5: BLEU = \d+\.\d+", out), out[-2000:]


def test_converter_errors_name_the_file(tmp_path):
    src = str(FIX / "pretrained_base.pt")
    with pytest.raises(ConvertError, match="--dict-ltr"):
        convert(src, str(tmp_path / "a.pt"), dict_phn=str(FIX / "dict.phn.txt"))
    with pytest.raises(ConvertError, match=r"dict\.phn\.txt.*--dict-phn|--dict-phn"):
        convert(src, str(tmp_path / "a.pt"), dict_ltr=str(FIX / "dict.ltr.txt"))
    short = tmp_path / "dict.phn.txt"
    short.write_text("U0 1\nU1 1\n")
    with pytest.raises(ConvertError, match=rf"{short}: 6 symbols .* trained with 12"):
        convert(src, str(tmp_path / "a.pt"), dict_ltr=str(FIX / "dict.ltr.txt"), dict_phn=str(short))
    # an unknown key is an error, not a warning
    state = torch.load(src, weights_only=True)
    state["model"]["unit_encoder.some_new_module.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ConvertError, match=r"extra\.pt: 1 key\(s\) .*some_new_module"):
        convert(str(tmp_path / "extra.pt"), str(tmp_path / "b.pt"), dict_ltr=str(FIX / "dict.ltr.txt"),
                dict_phn=str(FIX / "dict.phn.txt"))
    # a configuration this plugin does not implement is refused, naming the key
    state = torch.load(src, weights_only=True)
    state["cfg"]["model"]["use_rel_pos_enc"] = False
    torch.save(state, tmp_path / "nopos.pt")
    with pytest.raises(ConvertError, match="use_rel_pos_enc"):
        convert(str(tmp_path / "nopos.pt"), str(tmp_path / "c.pt"), dict_ltr=str(FIX / "dict.ltr.txt"),
                dict_phn=str(FIX / "dict.phn.txt"))
    # a published checkpoint given to the loader directly: the error says to convert it
    with pytest.raises(ValueError, match="speechlm convert"):
        SpeechLMModel.from_checkpoint(src)


@pytest.mark.slow
def test_convert_cli(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ok = subprocess.run([str(BIN / "speechlm"), "convert", str(FIX / "pretrained_large.pt"), str(tmp_path / "l.pt"),
                         "--dict-ltr", str(FIX / "dict.ltr.txt"), "--dict-phn", str(FIX / "dict.phn.txt")],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "pretrained checkpoint" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run([str(BIN / "speechlm"), "convert", str(FIX / "pretrained_large.pt"), str(tmp_path / "m.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "give it with --dict-phn" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("recipe,size", [("speechlm_p_base_librispeech", "Base"),
                                         ("speechlm_h_base_librispeech", "Base"),
                                         ("speechlm_p_large_librilight", "Large")])
def test_recipe_parameter_counts_equal_the_published_models(recipe, size):
    """Official counts: the published model built at the released size (official_param_counts.json)."""
    official = json.loads((FIX / "official_param_counts.json").read_text())[f"official_{size}"]
    fields = {k: v for k, v in OmegaConf.load(REPO / f"examples/librispeech/config/pretrain/{recipe}.yaml")
              ["model"].items() if k != "_name"}
    cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMConfig), fields)
    with torch.device("meta"):
        model = SpeechLMModel(cfg, official["num_units"], 1, official["num_letters"])
    ours = sum(p.numel() for p in model.parameters())
    encoder = model.speech_encoder_parameters()
    print(f"{recipe}: {ours / 1e6:.3f}M parameters (published model: {official['total'] / 1e6:.3f}M, of which "
          f"{official['unused_norm_k']} in norm_k of post-LN layers that its forward never uses); speech "
          f"encoder without pre-training heads {encoder / 1e6:.2f}M")
    assert ours == official["total"] - official["unused_norm_k"]
    assert ours - encoder == official["pretraining_heads"]
