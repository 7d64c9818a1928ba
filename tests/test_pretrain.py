"""SpeechLM pre-training on the synthesized mini corpus: data, batching, and a short real training run.

The binarized unpaired text is written here with fairseq's mmap builder from the corpus's
``train_paired``/``valid`` true phone alignments and letters (the same file layout as
``speechlm binarize``), so these tests do not depend on the tokenizers.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import speechlm  # noqa: F401
from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig
from speechlm.data.manifest import num_frames_50hz
from speechlm.data.readers import load_manifest
from speechlm.data.speech_label_dataset import SpeechLabelDataset
from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG_DIR = REPO / "examples" / "mini" / "config" / "pretrain"
MAX_TOKENS = 320000  # samples per speech batch -> 1000 unit frames per text batch


def write_text_dir(corpus: Path, dest: Path, unit: str = "phn", append_eos: bool = True) -> Path:
    """``{split}.{unit}-ltr.{unit,ltr}.{bin,idx}`` for train (from train_paired) and valid."""
    from fairseq.data import Dictionary, indexed_dataset

    dest.mkdir(parents=True, exist_ok=True)
    dicts = {}
    for name in (unit, "ltr"):
        shutil.copy(corpus / f"dict.{name}.txt", dest / f"dict.{name}.txt")
        dicts[name] = Dictionary.load(str(dest / f"dict.{name}.txt"))
    for split, source in (("train", "train_paired"), ("valid", "valid")):
        for name in (unit, "ltr"):
            prefix = str(dest / f"{split}.{unit}-ltr.{name}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(dicts[name]))
            with open(corpus / f"{source}.{name}", encoding="utf-8") as f:
                for line in f:
                    ids = dicts[name].encode_line(line, add_if_not_exist=False, append_eos=append_eos)
                    builder.add_item(ids.long())
            builder.finalize(prefix + ".idx")
        # the completion marker `speechlm binarize` writes last (the loader refuses a split without it)
        stem = f"{split}.{unit}-ltr"
        files = {f"{stem}.{n}.{ext}": os.path.getsize(dest / f"{stem}.{n}.{ext}") for n in (unit, "ltr")
                 for ext in ("bin", "idx")}
        (dest / f"{stem}.summary.json").write_text(json.dumps({"unit": unit, "files": files}))
    return dest


def train_command(corpus, text_dir, save_dir, *overrides):
    """The documented command line (run from the repository root)."""
    return [
        str(Path(sys.executable).parent / "fairseq-hydra-train"),
        "--config-dir", str(TINY_CONFIG_DIR), "--config-name", "speechlm_tiny",
        f"task.data={corpus}", f"task.text_data={text_dir}" if text_dir else "task.text_data=null",
        "task.labels=[phn]", f"common.user_dir={REPO / 'speechlm'}",
        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra", *overrides,
    ]


def train_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def parse_train_log(text: str):
    """Every ``train_inner`` line of a fairseq simple log as a dict of floats."""
    rows = []
    for line in text.splitlines():
        if "[train_inner]" in line:
            rows.append({k: float(v) for k, v in re.findall(r"(\w+)=([-\d.e+]+)", line.split(" - ", 1)[1])})
    return rows


def make_task(corpus, text_dir=None, **kw) -> SpeechLMPretrainingTask:
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig)
    cfg.seed = 1
    cfg.train_subset = "train"
    cfg.data = str(corpus)
    cfg.text_data = str(text_dir) if text_dir else None
    cfg.min_sample_size = 0
    for k, v in kw.items():
        setattr(cfg, k, v)
    return SpeechLMPretrainingTask.setup_task(cfg)


def batches(task, split, num_shards=1, shard_id=0, epoch=1, max_tokens=MAX_TOKENS):
    itr = task.get_batch_iterator(
        task.dataset(split), max_tokens=max_tokens, seed=1, num_shards=num_shards,
        shard_id=shard_id, epoch=epoch, disable_iterator_cache=True,
    )
    # fairseq pads the shorter shard with empty batches (the trainer runs a dummy step on them)
    return [s for s in itr.next_epoch_itr(shuffle=True) if s]


@pytest.fixture(scope="module")
def text_dir(mini_corpus, tmp_path_factory):
    return write_text_dir(Path(mini_corpus), tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def tiny_run(mini_corpus, text_dir, tmp_path_factory):
    """24 updates (update_freq 2) of the tiny config through fairseq-hydra-train."""
    save = tmp_path_factory.mktemp("tiny_run")
    cmd = train_command(
        mini_corpus, text_dir, save, "optimization.max_update=24", "optimization.update_freq=[2]",
        "common.log_interval=2", "checkpoint.save_interval_updates=24", "lr_scheduler.warmup_updates=8",
        "dataset.validate_interval_updates=24",
    )
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return save, log


@pytest.mark.slow
def test_tiny_training_drives_umlm_and_uctc_down(tiny_run, mini_corpus):
    save, log = tiny_run
    rows = parse_train_log(log)
    assert len(rows) >= 5, log[-2000:]
    first, last = rows[0], rows[-1]
    assert first["num_updates"] == 2 and last["num_updates"] == 24
    # the published model's label embeddings start uniform in [0, 1) (nearly parallel), so UMLM leaves
    # chance level more slowly in 24 updates than UCTC does
    for key, drop in (("umlm_loss_0", 0.3), ("umlm_loss_1", 0.3), ("uctc_loss", 1.0)):
        assert last[key] < first[key] - drop, (key, first[key], last[key])
    units = len(open(Path(mini_corpus) / "dict.phn.txt").readlines())
    chance = 100.0 / units
    assert last["umlm_acc_1"] > 2 * chance, (last["umlm_acc_1"], chance)
    assert re.search(r"valid on 'valid' subset .*uctc_loss", log), "validation must see the text split too"
    assert (save / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_pretrained_checkpoint_rebuilds_the_encoder(tiny_run, mini_corpus):
    save, _ = tiny_run
    model = SpeechLMModel.from_checkpoint(str(save / "checkpoint_last.pt")).eval()
    root, rows = load_manifest(Path(mini_corpus) / "valid.tsv")
    from speechlm.data.readers import read_audio

    wav = torch.from_numpy(read_audio(os.path.join(root, rows[0][0])))[None]
    feats, pad = model.extract_features(wav, None)
    assert feats.shape == (1, num_frames_50hz(rows[0][1]), model.cfg.encoder_embed_dim)
    assert torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="not 'speechlm'"):
        state = torch.load(save / "checkpoint_last.pt", weights_only=True)
        state["cfg"]["model"]["_name"] = "hubert"
        torch.save(state, save / "other.pt")
        SpeechLMModel.from_checkpoint(str(save / "other.pt"))


def test_every_step_gets_exactly_one_speech_and_one_text_batch(mini_corpus, text_dir):
    task = make_task(mini_corpus, text_dir)
    task.load_dataset("train")
    n_speech = len(task.dataset("train").speech)
    steps = batches(task, "train")
    seen = []
    for sample in steps:
        speech, text = sample["speech"], sample["text"]
        assert speech["net_input"]["source"].dim() == 2 and text["net_input"]["units"].dim() == 2
        B, S = speech["net_input"]["source"].shape
        assert B * S <= MAX_TOKENS or B == 1
        units = text["net_input"]["units"]
        assert units.numel() <= MAX_TOKENS // 320 or units.size(0) == 1  # text budget = speech / 320
        assert speech["target"].shape == (B, num_frames_50hz(S))
        seen += speech["id"].tolist()
    assert sorted(seen) == list(range(n_speech)), "an epoch covers every utterance exactly once"
    # the text ratio doubles the text budget
    task2 = make_task(mini_corpus, text_dir, text_max_tokens_ratio=2.0)
    task2.load_dataset("train")
    sizes1 = [s["text"]["net_input"]["units"].numel() for s in steps]
    sizes2 = [s["text"]["net_input"]["units"].numel() for s in batches(task2, "train")]
    assert max(sizes2) > MAX_TOKENS // 320 >= max(sizes1)
    # validation pairs the valid speech with the valid text split
    task.load_dataset("valid")
    v = batches(task, "valid")
    assert v and all(s["text"] is not None for s in v)


def test_shards_see_different_batches_and_an_epoch_is_reproducible(mini_corpus, text_dir):
    task = make_task(mini_corpus, text_dir)
    task.load_dataset("train")
    ids = []
    for shard in (0, 1):
        ids.append([tuple(s["speech"]["id"].tolist()) for s in batches(task, "train", 2, shard)])
    assert ids[0] and ids[1]
    assert not set(sum(map(list, ids[0]), [])) & set(sum(map(list, ids[1]), []))
    again = [tuple(s["speech"]["id"].tolist()) for s in batches(task, "train", 2, 0)]
    assert again == ids[0]
    text_again = [s["text"]["id"].tolist() for s in batches(task, "train", 2, 0)]
    text_first = [s["text"]["id"].tolist() for s in batches(task, "train", 2, 0)]
    assert text_again == text_first
    other_epoch = [tuple(s["speech"]["id"].tolist()) for s in batches(task, "train", 2, 0, epoch=2)]
    assert other_epoch != ids[0]


def test_speech_only_ablation_trains_without_text(mini_corpus):
    task = make_task(mini_corpus, None)
    task.load_dataset("valid")
    sample = batches(task, "valid")[0]
    assert sample["text"] is None
    model = SpeechLMModel(SpeechLMConfig(
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", encoder_embed_dim=32,
        encoder_ffn_embed_dim=64, encoder_attention_heads=4, speech_encoder_layers=1,
        shared_encoder_layers=1, conv_pos=16, conv_pos_groups=4, random_swap_prob=0.0,
    ), len(task.unit_dictionary), task.unit_dictionary.pad(), 0)
    crit = SpeechLMCriterion(SpeechLMCriterionConfig(), task)
    loss, sample_size, log = crit(model.train(), sample)
    loss.backward()
    assert sample_size > 0 and "uctc_loss" not in log and log["umlm_count"] == sample_size
    assert model.mask_emb.grad is not None and model.mask_emb.grad.abs().sum() > 0


def test_label_length_mismatch_is_an_error_naming_the_utterance(mini_corpus, tmp_path):
    corpus = Path(mini_corpus)
    shutil.copy(corpus / "valid.tsv", tmp_path / "valid.tsv")
    lines = (corpus / "valid.phn").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:-10])
    (tmp_path / "valid.phn").write_text("\n".join(lines) + "\n")
    shutil.copy(corpus / "dict.phn.txt", tmp_path / "dict.phn.txt")
    _, rows = load_manifest(corpus / "valid.tsv")
    task = make_task(tmp_path)
    with pytest.raises(ValueError, match=rf"valid\.phn:2: utterance {re.escape(rows[1][0])} has"):
        task.load_dataset("valid")
    # within the tolerance: padded with the last label to the frame count
    lines[1] = " ".join((corpus / "valid.phn").read_text().splitlines()[1].split()[:-2])
    (tmp_path / "valid.phn").write_text("\n".join(lines) + "\n")
    task.load_dataset("valid")
    assert len(task.dataset("valid").speech.get_label(1)) == num_frames_50hz(rows[1][1])


def test_100hz_labels_are_brought_to_the_50hz_frames(mini_corpus):
    corpus = Path(mini_corpus)
    task = make_task(corpus)
    d50 = SpeechLabelDataset(str(corpus / "valid.tsv"), str(corpus / "valid.phn"), task.unit_dictionary)
    d100 = SpeechLabelDataset(str(corpus / "valid.tsv"), str(corpus / "valid.phn100"), task.unit_dictionary,
                              label_rate=100, length_tolerance=0)
    for i in range(len(d50)):
        assert torch.equal(d50.get_label(i), d100.get_label(i))


def test_padding_and_cropping_keep_labels_aligned(mini_corpus):
    corpus = Path(mini_corpus)
    task = make_task(corpus)
    kw = dict(manifest_path=str(corpus / "valid.tsv"), label_path=str(corpus / "valid.phn"),
              dictionary=task.unit_dictionary)
    padded = SpeechLabelDataset(**kw, pad_audio=True)
    cropped = SpeechLabelDataset(**kw, pad_audio=False, random_crop=True)
    idx = list(range(min(4, len(padded))))
    b = padded.collater([padded[i] for i in idx])
    lengths = [int(padded.sizes[i]) for i in idx]
    assert b["net_input"]["source"].shape[1] == max(lengths)
    assert (~b["net_input"]["padding_mask"]).sum(1).tolist() == lengths
    for row, i in enumerate(idx):
        n = num_frames_50hz(lengths[row])
        assert torch.equal(b["target"][row, :n], padded.get_label(i))
        assert (b["target"][row, n:] == task.unit_dictionary.pad()).all()
    c = cropped.collater([cropped[i] for i in idx])
    S = min(lengths)
    assert c["net_input"]["source"].shape[1] == S and c["net_input"]["padding_mask"] is None
    for row, i in enumerate(idx):
        full = cropped[i]["source"]
        # the crop starts on a 320-sample frame boundary and the labels follow it
        starts = [s for s in range(0, len(full) - S + 1, 320) if torch.equal(full[s:s + S], c["net_input"]["source"][row])]
        assert starts, "cropped audio is not a frame-aligned window of the utterance"
        f0 = starts[0] // 320
        assert torch.equal(c["target"][row], cropped.get_label(i)[f0:f0 + num_frames_50hz(S)])


def test_fine_tuning_mode_serves_letters(mini_corpus):
    task = make_task(mini_corpus, fine_tuning=True)
    assert task.target_dictionary.symbols == task.letter_dictionary.symbols
    task.load_dataset("valid")
    sample = batches(task, "valid")[0]
    ltr = (Path(mini_corpus) / "valid.ltr").read_text().splitlines()
    i = int(sample["id"][0])
    n = int(sample["target_lengths"][0])
    assert task.letter_dictionary.string(sample["target"][0, :n]) == ltr[i]
    assert sample["net_input"]["padding_mask"] is not None


def test_fine_tuning_never_crops_audio_whose_letters_stay_whole(mini_corpus):
    """max_sample_size (a pre-training crop) must not cut the audio of a whole letter transcript."""
    task = make_task(mini_corpus, fine_tuning=True, max_sample_size=16000, train_subset="train_paired")
    task.load_dataset("train_paired")
    ds = task.datasets["train_paired"]
    longest = int(ds.sizes.max())
    assert longest > 16000
    sample = ds.collater([ds[int(ds.sizes.argmax())]])
    assert sample["net_input"]["source"].shape[1] == longest
    assert ds.num_tokens(int(ds.sizes.argmax())) == longest
    with pytest.raises(ValueError, match="cannot follow a crop"):
        SpeechLabelDataset(str(mini_corpus / "valid.tsv"), str(mini_corpus / "valid.ltr"),
                           task.letter_dictionary, frame_labels=False, max_sample_size=16000)


def test_only_the_train_subset_is_shuffled_and_randomly_cropped(mini_corpus):
    task = make_task(mini_corpus, train_subset="valid", max_sample_size=16000)
    task.load_dataset("valid")
    task.load_dataset("train")  # named like a training split, but not dataset.train_subset
    assert task.datasets["valid"].speech.shuffle and task.datasets["valid"].speech.random_crop
    assert not task.datasets["train"].speech.shuffle and not task.datasets["train"].speech.random_crop


def test_unit_dictionary_mismatch_between_speech_and_text_is_an_error(mini_corpus, text_dir, tmp_path):
    bad = tmp_path / "text"
    shutil.copytree(text_dir, bad)
    d = (bad / "dict.phn.txt").read_text().splitlines()
    (bad / "dict.phn.txt").write_text("\n".join(d[1:] + d[:1]) + "\n")
    with pytest.raises(ValueError, match="dict.phn.txt differs"):
        make_task(mini_corpus, bad)


