"""Per-rank randomness: two gloo ranks on CPU draw different masks, swaps and layerdrop for the same batch;
a rerun draws the same.

Each rank is a process of its own in a real ``torch.distributed`` gloo group (DESIGN.md §2) and runs
``SpeechLMPretrainingTask.train_step`` (fairseq's step: forward, criterion, backward) on the *same* speech
batch, for two updates of two micro-batches each. It records the mask and swap spans the model drew,
which Speech Transformer layers ran (layerdrop 0.5) and the loss.
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # four processes importing fairseq

WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from omegaconf import OmegaConf
import speechlm  # noqa
from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig
from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

corpus, port, rank, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
cfg = OmegaConf.structured(SpeechLMPretrainingConfig)
cfg.data, cfg.seed, cfg.train_subset, cfg.text_data = corpus, 7, "train", None
task = SpeechLMPretrainingTask.setup_task(cfg)
torch.manual_seed(0)  # the same weights and batch on both ranks
mcfg = SpeechLMConfig(conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", encoder_embed_dim=16,
                      encoder_ffn_embed_dim=32, encoder_attention_heads=2, speech_encoder_layers=4,
                      shared_encoder_layers=2, conv_pos=8, conv_pos_groups=4, final_dim=8, encoder_layerdrop=0.5)
units = task.unit_dictionary
model = SpeechLMModel(mcfg, len(units), units.pad(), 0)
criterion = SpeechLMCriterion(SpeechLMCriterionConfig(), task)
source = torch.randn(2, 16000)
T = model.feature_extractor.output_lengths(torch.tensor([16000])).item()
sample = {"speech": {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": None},
                     "target": torch.randint(4, len(units), (2, T)), "ntokens": 2 * T, "nsentences": 2},
          "text": None}
drawn, ran = [], []
model.register_forward_hook(lambda m, i, o: drawn.append((o["mask_indices"].int().tolist(),
                                                          o["swap_indices"].int().tolist())))
for k, layer in enumerate(model.speech_encoder.layers):
    layer.register_forward_hook(lambda m, i, o, k=k: ran.append(k))

class Backward:  # what fairseq's train_step asks of its optimizer
    def backward(self, loss):
        loss.backward()

steps = []
for update in (3, 4):
    for micro in (0, 1):
        ran.clear()
        loss, _, _ = task.train_step(sample, model, criterion, Backward(), update)
        mask, swap = drawn[-1]
        steps.append({"update": update, "micro": micro, "mask": mask, "swap": swap, "layers": list(ran),
                      "loss": loss.item()})
json.dump(steps, open(out, "w"))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(corpus, out: Path):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(corpus), str(port), str(r), str(out / f"rank{r}.json")],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_draw_differently_and_a_rerun_draws_the_same(mini_corpus, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_two_ranks(mini_corpus, tmp_path / "a")
    again = run_two_ranks(mini_corpus, tmp_path / "b")
    rank0, rank1 = first
    assert len(rank0) == len(rank1) == 4
    for s0, s1 in zip(rank0, rank1):
        # the same batch and weights: only the rank differs
        assert s0["mask"] != s1["mask"], s0["update"]
        assert s0["swap"] != s1["swap"]
        assert any(s["mask"] and sum(map(sum, s["mask"])) > 0 for s in (s0, s1))
    assert [s["layers"] for s in rank0] != [s["layers"] for s in rank1]  # layerdrop 0.5 of 4 layers
    # the micro-batches of one update draw differently too
    assert rank0[0]["mask"] != rank0[1]["mask"] and rank0[2]["mask"] != rank0[3]["mask"]
    # a rerun: the same draws and the same losses on each rank
    assert again == first
    assert rank0[0]["loss"] != rank1[0]["loss"]
