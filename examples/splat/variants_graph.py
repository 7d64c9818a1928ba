"""The step graph of ``run_variants.py``: every command of the SPLAT comparison and what it waits for.

1. fbank + per-speaker CMVN of the corpus; the mini intent and spoken-QA corpora
2. per seed: MLM adaptation of the language module; speech-module pre-training
3. per seed: alignment, seq / tok x original / MLM-adapted language module
4. per seed, variant and fraction of the training data: intent classification and spoken QA
(5, the geometry, runs in the reporting process: ``variants_report.py``.)
"""
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf
from scheduler import Step

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(HERE, "config")
BIN = os.path.dirname(sys.executable)
VARIANTS = ["scratch", "speech", "seq", "seq_mlm", "tok", "tok_mlm"]
# the steps behind the comparison the paper headlines (Seq-MLM > Speech > Scratch, low-resource intent, QA)
HEADLINE = {"pretrain", "mlm", "align_seq_mlm"} | {
    f"{task}_{v}_{pct}" for v in ("scratch", "speech", "seq_mlm") for task, pct in (("intent", 10), ("qa", 100))}

# tiny speech module for the mini recipe (the paper: 3 x 768 x 12 heads at 100 Hz; here 4 stacked
# frames per position, 25 Hz, so that a CPU trains every variant in minutes)
MINI_SPEECH = [
    "model.encoder_layers=3", "model.encoder_embed_dim=128", "model.encoder_ffn_embed_dim=512",
    "model.encoder_attention_heads=4", "model.input_stride=4",
]
MINI_QA = ["model.qa_layers=2", "model.qa_embed_dim=128", "model.qa_ffn_embed_dim=512",
           "model.qa_attention_heads=4"]


def percent(frac: float) -> int:
    return int(round(frac * 100))


@dataclass
class VariantGraph:
    """The steps and where each variant's models come from.

    ``bert[seed][mlm]``: the language module; ``init[variant, seed]``: ``(speech-module checkpoint, or ""
    for a random one, the steps that make it)``; ``down[variant, fraction, seed]``: ``(intent step, QA step)``.
    """

    work: str
    corpus: str
    seeds: List[int]
    variants: Dict[str, object]
    steps: List[Step] = field(default_factory=list)
    bert: Dict[int, Dict[bool, str]] = field(default_factory=dict)
    init: Dict[Tuple[str, int], Tuple[str, List[Step]]] = field(default_factory=dict)
    down: Dict[Tuple[str, float, int], Tuple[Step, Step]] = field(default_factory=dict)

    @property
    def names(self) -> Dict[str, str]:
        return {v: str(c.name) for v, c in self.variants.items()}

    def logfile(self, name: str) -> str:
        return os.path.join(self.work, "logs", name + ".log")

    def priority(self, seed: int, key: Optional[str] = None) -> int:
        """The steps of the comparison the paper headlines (Seq-MLM / Speech / Scratch on intent with 10%
        of the data and on spoken QA) first, seed by seed; then the other cells, seed by seed."""
        return seed if key in HEADLINE else len(self.seeds) + seed

    def train(self, name: str, config_dir: str, config_name: str, overrides: List[str], after=(),
              priority: int = 0) -> Step:
        """A ``fairseq-hydra-train`` step saving to ``WORK/ckpt/NAME``."""
        save = os.path.join(self.work, "ckpt", name)
        cmd = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", os.path.join(CONFIG, config_dir),
               "--config-name", config_name, f"common.user_dir={os.path.join(REPO, 'speechlm')}",
               f"checkpoint.save_dir={save}", "common.log_interval=10"] + overrides
        return Step(name, cmd, self.logfile(name), os.path.join(save, "done"), after, priority)


def _prep_steps(g: VariantGraph) -> Tuple[List[Step], Optional[Step]]:
    """Step 1: (the SLU corpora and, when not there yet, the corpus's features; the features step or None)."""
    speechlm = [sys.executable, "-m", "speechlm"]
    prep = []
    if not os.path.exists(os.path.join(g.corpus, "valid.fbank.npy")):
        prep.append(Step("features", speechlm + ["splat", "features", g.corpus, "--splits", "train",
                                                 "train_paired", "valid"],
                         g.logfile("features"), os.path.join(g.corpus, "valid.fbank.done")))
    for verb, out in (("slu-corpus", os.path.join(g.work, "intent")), ("qa-corpus", os.path.join(g.work, "qa"))):
        prep.append(Step(verb, speechlm + ["splat", verb, out], g.logfile(verb), os.path.join(out, "done")))
    feats = prep[0] if prep[0].name == "features" else None
    return prep, feats


def _seed_steps(g: VariantGraph, args, seed: int, feats: Optional[Step], slu: List[Step]) -> None:
    """Steps 2 and 3 of one seed: MLM adaptation, pre-training, the alignments; fills ``g.bert``/``g.init``."""
    sfx = f"_s{seed}"
    bert_mlm = os.path.join(g.work, f"bert_mlm{sfx}")
    mlm = Step(f"adapt_bert{sfx}", [sys.executable, "-m", "speechlm",
               "splat", "adapt-bert", args.bert, g.corpus, "--split", args.mlm_split, "--out", bert_mlm,
               "--steps", str(args.mlm_steps), "--batch-size", "16", "--lr", "1e-4", "--seed", str(seed)],
               g.logfile(f"adapt_bert{sfx}"), os.path.join(bert_mlm, "done"), priority=g.priority(seed, "mlm"))
    pre = g.train(f"speech{sfx}", "pretrain", "speech_module", [
        f"task.data={g.corpus}", f"common.seed={seed}", f"optimization.max_update={args.pretrain_updates}",
        "lr_scheduler.warmup_updates=60", "optimization.lr=[0.0005]", "dataset.max_tokens=8000",
        "task.max_frames=800", "checkpoint.save_interval_updates=0"] + MINI_SPEECH,
        after=[feats] if feats else [], priority=g.priority(seed, "pretrain"))
    g.steps.append(pre)
    if any(c.mlm for c in g.variants.values()):
        g.steps.append(mlm)
    speech_ckpt = os.path.join(g.work, "ckpt", f"speech{sfx}", "checkpoint_last.pt")
    g.bert[seed] = {False: args.bert, True: bert_mlm}
    epochs = max(1, args.align_updates // 6)  # ~6 updates per epoch on the 192 train transcripts
    for v, c in g.variants.items():
        if not c.pretrain:
            g.init[v, seed] = ("", list(slu))
            continue
        if c.alignment is None:
            g.init[v, seed] = (speech_ckpt, [pre])
            continue
        name = f"align_{c.alignment}{'_mlm' if c.mlm else ''}{sfx}"
        a = g.train(name, "align", str(c.alignment), [  # validate at the end only
            f"task.data={g.corpus}", f"task.bert_path={g.bert[seed][bool(c.mlm)]}",
            f"task.text_pooling={args.text_pooling}", f"task.center_text={args.center_text}",
            f"task.text_whiten={args.text_whiten}", f"criterion.seq_loss={args.seq_loss}",
            f"model.init_from={speech_ckpt}",
            f"dataset.train_subset={args.align_split}", f"task.idf_split={args.align_split}",
            f"common.seed={seed}", f"optimization.max_update={args.align_updates}",
            f"optimization.max_epoch={epochs + 1}", f"optimization.lr=[{args.align_lr}]",
            "lr_scheduler.warmup_updates=10", f"dataset.validate_interval={epochs + 1}"],
            after=[pre] + ([mlm] if c.mlm else []), priority=g.priority(seed, name[: -len(sfx)]))
        g.steps.append(a)
        g.init[v, seed] = (os.path.join(g.work, "ckpt", name, "checkpoint_last.pt"), [a])


def _downstream_steps(g: VariantGraph, args, seed: int, slu: List[Step]) -> None:
    """Step 4 of one seed: intent and spoken QA of every variant and training-data fraction; fills ``g.down``."""
    intent, qa = os.path.join(g.work, "intent"), os.path.join(g.work, "qa")
    for v in g.variants:
        ckpt, after = g.init[v, seed]
        after = after + slu
        for frac in args.fractions:
            tag = f"{v}_{percent(frac)}pct_s{seed}"
            common = [f"model.init_from={ckpt}", f"task.train_fraction={frac}", f"common.seed={seed}",
                      "dataset.valid_subset='valid,test'", "checkpoint.no_save=true"] + MINI_SPEECH
            si = g.train(f"intent_{tag}", "downstream", "intent", [
                f"task.data={intent}", f"optimization.max_epoch={args.intent_epochs}",
                f"dataset.batch_size={args.intent_batch}", f"optimization.lr=[{args.intent_lr}]",
                "dataset.validate_interval=2"] + common,
                after=after, priority=g.priority(seed, f"intent_{v}_{percent(frac)}"))
            sq = g.train(f"qa_{tag}", "downstream", "spoken_qa", [
                f"task.data={qa}", f"task.bert_path={args.bert}", f"optimization.max_epoch={args.qa_epochs}",
                f"optimization.lr=[{args.qa_lr}]"] + common + MINI_QA, after=after,
                priority=g.priority(seed, f"qa_{v}_{percent(frac)}"))
            g.steps += [si, sq]
            g.down[v, frac, seed] = (si, sq)


def build_graph(args, work: str, corpus: str) -> VariantGraph:
    """Every step of the comparison ``args`` asks for (``run_variants.py``'s options), in ``work``."""
    variants = {v: OmegaConf.load(os.path.join(CONFIG, "variants", f"{v}.yaml")) for v in args.variants}
    g = VariantGraph(work, corpus, list(range(1, args.seeds + 1)), variants)
    prep, feats = _prep_steps(g)
    slu = [s for s in prep if s.name != "features"]
    g.steps += prep
    for seed in g.seeds:
        _seed_steps(g, args, seed, feats, slu)
    for seed in g.seeds:
        _downstream_steps(g, args, seed, slu)
    return g
