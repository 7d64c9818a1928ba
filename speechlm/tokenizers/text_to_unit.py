"""Text -> hidden units with a trained ``text_to_unit`` model (the Python API behind ``speechlm t2u``).

    model, task = load_model("EXP/checkpoint_best.pt")
    units = generate(model, task, ["SIL DH DH AH AH ..."])            # one unit string per line
    n, n_unk = generate_file(model, task, "lm.phn", "lm.ltr", "out/lm_km")  # out/lm_km.km, out/lm_km.ltr

Each output line has one unit per 50 Hz frame of the input's upsampled phone line: the durations the
phonemizer sampled are kept (``predicted=True`` uses the model's duration predictor instead). Greedy
(argmax) decoding: deterministic, so 1 shard and N shards merged give identical files.
"""
import os
from typing import List, Optional, Tuple

GENERATE_CHUNK_LINES = 10000  # lines read, sorted by length and batched at a time


def load_model(checkpoint: str, data: Optional[str] = None, device: str = "cpu"):
    """``(model in eval mode on device, task)`` of a ``text_to_unit`` checkpoint; ``data`` overrides the
    directory holding ``dict.phn.txt``/``dict.km.txt`` (default: the checkpoint's ``task.data``)."""
    from fairseq import checkpoint_utils

    import speechlm
    from speechlm.checkpoint import read_checkpoint

    speechlm.register()
    overrides = {"data": os.path.abspath(data)} if data else {}
    state = read_checkpoint(checkpoint, arg_overrides=overrides)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides,
                                                                    state=state)
    return models[0].eval().to(device), task


def generate(model, task, phone_lines: List[str], max_frames: int = 20000, predicted: bool = False,
             device: str = "cpu") -> List[str]:
    """Unit strings for each upsampled phone line, in input order (batches of <= ``max_frames`` frames)."""
    ds = task.build_inference_dataset(phone_lines)
    order = sorted(range(len(ds)), key=lambda i: (ds.sizes[i], i))
    results = [None] * len(ds)
    unit_dict = task.target_dictionary
    batch, frames = [], 0
    batches = []
    for i in order:
        if batch and (len(batch) + 1) * max(frames, ds.sizes[i]) > max_frames:
            batches.append(batch)
            batch, frames = [], 0
        batch.append(i)
        frames = max(frames, ds.sizes[i])
    if batch:
        batches.append(batch)
    for b in batches:
        s = ds.collater([ds[i] for i in b])
        net = {k: v.to(device) for k, v in s["net_input"].items()}
        outs = model.generate(net["src_tokens"], net["src_lengths"], None if predicted else net["durations"])
        for i, u in zip(b, outs):
            results[i] = " ".join(unit_dict[int(x)] for x in u.tolist())
    return results


def generate_file(model, task, units_path: str, letters_path: str, prefix: str, start: int = 0,
                  end: Optional[int] = None, max_frames: int = 20000, predicted: bool = False,
                  device: str = "cpu") -> Tuple[int, int]:
    """Lines ``[start, end)`` of the line-aligned ``units_path``/``letters_path`` -> ``prefix.km`` and
    ``prefix.ltr``, streamed (a shard of a 40M-line file never sits in RAM) and written atomically.

    Returns ``(lines written, lines holding a phone outside the model's phone dictionary)``."""
    phone_dict = task.source_dictionary
    n_lines = n_unk_lines = 0
    from speechlm.atomic import AtomicGroup

    with AtomicGroup(what="t2u output") as g, \
            open(units_path, encoding="utf-8") as fin_p, open(letters_path, encoding="utf-8") as fin_l, \
            open(g.path(prefix + ".km"), "w", encoding="utf-8") as fk, \
            open(g.path(prefix + ".ltr"), "w", encoding="utf-8") as fl:
        chunk_p, chunk_l = [], []

        def flush():
            for u, ltr in zip(generate(model, task, chunk_p, max_frames, predicted, device), chunk_l):
                fk.write(u + "\n")
                fl.write(ltr + "\n")
            chunk_p.clear()
            chunk_l.clear()

        for i, (p, l) in enumerate(zip(fin_p, fin_l)):
            if i < start:
                continue
            if end is not None and i >= end:
                break
            p = p.rstrip("\n")
            chunk_p.append(p)
            chunk_l.append(l.rstrip("\n"))
            n_lines += 1
            n_unk_lines += any(phone_dict.index(x) == phone_dict.unk() for x in set(p.split()))
            if len(chunk_p) == GENERATE_CHUNK_LINES:
                flush()
        flush()
    return n_lines, n_unk_lines
