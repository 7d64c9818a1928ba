"""Mini-SUPERB (examples/superb/run.py, speechlm.superb): the protocol's pieces and a tiny end-to-end run."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm import superb

REPO = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("superb_run", REPO / "examples/superb/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_weighted_layer_sum_is_a_softmax_over_layers():
    f = superb.WeightedLayerSum(3)
    states = torch.randn(3, 2, 5, 4)
    assert torch.allclose(f(states), states.mean(0), atol=1e-6)  # weights start at 0: the mean
    with torch.no_grad():
        f.weights.copy_(torch.tensor([0.0, 50.0, 0.0]))
    assert torch.allclose(f(states), states[1], atol=1e-5)


def test_phone_sequences_and_ctc_scoring():
    assert superb.phone_sequence("SIL SIL DH DH AH AH SIL K K AE T T SIL") == ["DH", "AH", "K", "AE", "T"]
    logits = torch.full((1, 6, 4), -5.0)
    for t, k in enumerate([0, 2, 2, 0, 3, 1]):
        logits[0, t, k] = 5.0
    assert superb.greedy_ctc(logits, torch.tensor([6]), blank=0) == [[2, 3, 1]]
    assert superb._edit_rate([[2, 3, 1]], [[2, 3]]) == 50.0


def test_heads_learn_a_separable_toy_task():
    """SID-style mean pooling + linear on states whose layer 1 carries the class: accuracy 100 %, and the
    learned weights favour that layer."""
    rng = np.random.default_rng(0)
    states, labels = [], []
    for i in range(40):
        y = i % 2
        s = rng.standard_normal((3, 30, 8)).astype(np.float16)
        s[1, :, 0] += 3.0 if y else -3.0
        states.append(s)
        labels.append(y)
    split = superb.Split(states, labels)
    cfg = superb.HeadConfig()
    score, weights = superb.train_head("IC", split, split, 2, seed=1, cfg=cfg)
    assert score == 100.0 and len(weights) == 3 and abs(sum(weights) - 1) < 1e-4


def test_missing_demo_checkpoint_is_refused_with_the_command(tmp_path, capsys):
    (tmp_path / "mini" / "corpus").mkdir(parents=True)
    (tmp_path / "mini" / "corpus" / "done").write_text("")
    rc = _runner().main(["--exp", str(tmp_path / "superb"), "--mini-exp", str(tmp_path / "mini"),
                         "--upstreams", "SpeechLM-P", "--tasks", "PR"])
    err = capsys.readouterr().err
    assert rc == 1 and "SpeechLM-P checkpoint is missing" in err
    assert "examples/mini/run.sh --full --seeds 1" in err and "--skip-missing" in err
    rc = _runner().main(["--exp", str(tmp_path / "superb"), "--mini-exp", str(tmp_path / "none"), "--tasks", "PR"])
    assert rc == 1 and "no corpus" in capsys.readouterr().err


@pytest.mark.slow
def test_superb_runner_on_the_mini_corpus(mini_corpus, tmp_path):
    exp = tmp_path / "superb"
    rc = _runner().main(["--exp", str(exp), "--corpus", str(mini_corpus), "--upstreams", "fbank", "random",
                         "--seeds", "1", "2", "--tasks", "PR", "SID", "--train-split", "train",
                         "--test-split", "test", "--epochs", "0.5", "--jobs", "1"])
    assert rc == 0
    res = json.loads((exp / "results.json").read_text())
    assert res["upstreams"] == ["FBANK", "random weights"] and set(res["tasks"]) == {"PR", "SID"}
    for task, rows in res["tasks"].items():
        for up, entry in rows.items():
            assert len(entry["scores"]) == 2 and entry["mean"] == pytest.approx(np.mean(entry["scores"]), abs=0.01)
            assert entry["spread"] >= 0
            assert entry["num_layers"] == (1 if up == "FBANK" else 5)
            for w in entry["layer_weights"]:
                assert len(w) == entry["num_layers"] and abs(sum(w) - 1) < 1e-3
    chance = 100.0 / res["data"]["SID"]["classes"]
    assert max(e["mean"] for e in res["tasks"]["SID"].values()) > chance + 10  # a trained head beats chance
    assert (exp / "layer_weights.png").stat().st_size > 1000
    assert res["cpu_seconds_total"] > 0 and set(res["cpu_seconds"]) == {"FBANK", "random weights"}
