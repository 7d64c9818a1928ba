"""The pre-training objective equals the published one: same weights, batch, masks -> same losses and gradients.

``tests/fixtures/official/training_parity_base.pt`` holds what the published training model and criterion
(microsoft/unilm ``speechlm/speechlm/models/speechlm.py``, ``criterions/speechlm_criterion.py``, run outside
this repository by ``make_training_parity.py``; see the fixtures' README) computed on the tiny Base-layout
model ``pretrained_base.pt``: one speech batch (3 x 1 s, cropped to one length as ``pad_audio: false``
does) and one text batch (3 binarized sentences, ``</s>`` on both sides, collated by fairseq's
``LanguagePairDataset`` as the published task does), with the speech mask, swap spans and text mask it
drew. Here the converted model replays those draws (``mask_indices``/``swap_indices`` arguments) through
this plugin's criterion, on a text batch made by this plugin's ``UnitTextDataset`` from the same
sentences.

Compared as fairseq's trainer uses them (divided by ``sample_size``, the masked frames): the UMLM loss
at both outputs, the feature penalty, the UCTC term, the total, and the gradient of every parameter;
``sample_size`` itself exactly.
"""
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary, ListDataset

import speechlm  # noqa: F401  (registers the components)
from speechlm.convert import convert, pretrained_key
from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig
from speechlm.data.unit_text_dataset import UnitTextDataset
from speechlm.models.speechlm import SpeechLMModel

FIX = Path(__file__).resolve().parent / "fixtures/official"
TOL = 1e-5


class _Task:
    def __init__(self, letters):
        self.letter_dictionary = letters


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """Our criterion on the published batch with the published draws -> (expected, ours, our grads)."""
    exp = torch.load(FIX / "training_parity_base.pt", weights_only=True)
    path = tmp_path_factory.mktemp("parity") / "pretrained_base.pt"
    convert(str(FIX / "pretrained_base.pt"), str(path), dict_ltr=str(FIX / "dict.ltr.txt"),
            dict_phn=str(FIX / "dict.phn.txt"))
    model = SpeechLMModel.from_checkpoint(str(path))
    model.train()
    # the published head's fixed Dropout(0.1) was off in the fixture run too; every other dropout is 0
    model.uctc_head.dropout.p = 0.0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.cfg.encoder_layerdrop == 0

    units, letters = Dictionary.load(str(FIX / "dict.phn.txt")), Dictionary.load(str(FIX / "dict.ltr.txt"))
    source = exp["speech_source"].float() / 32768
    T = model.feature_extractor.output_lengths(torch.tensor([source.size(1)])).item()
    speech = {
        "id": torch.arange(source.size(0)),
        "net_input": {"source": source, "padding_mask": None,
                      "mask_indices": exp["mask_indices"], "swap_indices": exp["swap_indices"]},
        "target": exp["speech_target"][:, :T],  # the published model keeps the labels of its T frames
        "ntokens": source.size(0) * T, "nsentences": source.size(0),
    }
    sentences = exp["text_sentences"]
    ds = UnitTextDataset(ListDataset([u for u, _ in sentences], [len(u) for u, _ in sentences]),
                         ListDataset([l_ for _, l_ in sentences], [len(l_) for _, l_ in sentences]),
                         units, letters, unit_eos=True)
    text = ds.collater([ds[int(i)] for i in exp["text_ids"]])  # the published batch's order
    text["net_input"]["mask_indices"] = exp["text_mask_indices"]
    criterion = SpeechLMCriterion(SpeechLMCriterionConfig(), _Task(letters))
    loss, sample_size, log = criterion(model, {"speech": speech, "text": text})
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return exp, text, loss.detach(), sample_size, log, grads


def test_text_batch_is_the_published_one(replay):
    """Units keep the binarized </s> (the published input); the divisor counts it (published ntokens)."""
    exp, text, *_ = replay
    assert torch.equal(text["net_input"]["units"], exp["text_units"])
    assert torch.equal(text["net_input"]["padding_mask"], exp["text_units"] == 1)
    assert text["ntokens"] == exp["text_ntokens"] == exp["text_sample_size"]
    # CTC targets: the letters without </s> (the published criterion masks pad and eos out)
    want = exp["text_target"]
    keep = (want != 1) & (want != 2)
    assert text["target_lengths"].tolist() == keep.sum(-1).tolist()
    for b in range(want.size(0)):
        assert text["target"][b, : int(text["target_lengths"][b])].tolist() == want[b][keep[b]].tolist()


def test_losses_match_the_published_criterion(replay):
    exp, _, loss, sample_size, log, _ = replay
    n = exp["sample_size"]
    assert sample_size == n == int(exp["mask_indices"].sum())
    assert abs(log["umlm_loss_0"] - exp["loss_m_0"]) / n < TOL
    assert abs(log["umlm_loss_1"] - exp["loss_m_1"]) / n < TOL
    assert abs(10 * log["features_pen"] - exp["loss_features_pen"]) / n < TOL
    assert abs(log["uctc_loss"] - exp["text_ctc_loss"]) / exp["text_sample_size"] < TOL
    assert abs(loss.item() - exp["loss"]) / n < TOL
    # a real test: every term is there and the swap spans were used
    assert exp["loss_m_0"] > 0 and exp["loss_m_1"] > 0 and exp["text_ctc_loss"] > 0 and exp["swap_indices"].any()


def test_gradients_match_the_published_model(replay):
    exp, _, _, _, _, grads = replay
    n = exp["sample_size"]
    mapped = {}
    for k, g in exp["grads"].items():
        ours, _ = pretrained_key(k, pre_ln=False)
        if ours is not None:
            mapped[ours] = g
    assert set(grads) == set(mapped), set(grads) ^ set(mapped)
    worst = max(((grads[k] - mapped[k]).abs().max().item() / n, k) for k in grads)
    assert worst[0] < TOL, worst
    assert all(mapped[k].abs().max() > 0 for k in mapped)  # every parameter took part
