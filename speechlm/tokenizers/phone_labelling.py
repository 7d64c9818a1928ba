"""Frame-level phone units of a manifest (one shard): the loop behind ``speechlm phone-units label``.

Per utterance, the recognizer's CTC posteriors (``phone_recognizer.posteriors``) become one phone per 50 Hz
frame by, in order of preference: forced alignment of its transcript (``transcripts=True``: ``SPLIT.wrd``
through the lexicon), CTC beam search with a phone n-gram LM (``phone_lm``: unpaired speech, see
``speechlm.tokenizers.phone_lm``), or the per-frame argmax. For the last two, ``blank_penalty`` is first
subtracted from the blank's log posterior (the recognizer, trained on little data, emits too many blanks:
on the mini corpus a penalty of 2 lowers the PER of both; see examples/librispeech/README.md). Writes ``OUT/{split}.phn`` or, sharded,
``OUT/{split}_{rank}_{nshard}.phn`` atomically.

With a Kaldi-inventory lexicon (``Lexicon.load(..., "kaldi")``) the labels are Kaldi position-dependent
phones taken from the forced alignment and the transcript's word boundaries (``label_with_transcript``),
and ``OUT/dict.phn.txt`` is the Kaldi inventory; every utterance then needs a transcript that aligns
(no word boundaries otherwise): one that does not is a ``LabellingError``.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from speechlm.atomic import atomic_write
from speechlm.tokenizers.lexicon import Lexicon


class LabellingError(ValueError):
    """A transcript that cannot be used with ``strict`` (names the file and line)."""


@dataclass
class LabellingReport:
    out: str
    utterances: int = 0
    aligned: int = 0  # forced alignment of the transcript
    phone_lm: int = 0  # beam search with the phone LM
    posteriors: int = 0  # per-frame argmax
    too_short: int = 0  # transcript did not fit in the frames
    oov_lines: List[Tuple[int, List[str]]] = field(default_factory=list)  # (line in SPLIT.wrd, missing words)


def transcripts_as_phones(corpus: str, split: str, n_rows: int, lexicon: Lexicon):
    """Per row of ``corpus/split.tsv``: the phones of each word of ``split.wrd``, or ``(line, missing)``."""
    from speechlm.data.readers import load_labels
    from speechlm.tokenizers.phone_recognizer import transcript_phones

    lines = load_labels(os.path.join(corpus, f"{split}.wrd"), n_rows, os.path.join(corpus, f"{split}.tsv"))
    out = []
    for i, line in enumerate(lines, start=1):
        wp = transcript_phones(line.split(), lexicon)
        out.append(wp if wp is not None else (i, [w for w in line.split() if lexicon.get(w) is None]))
    return out


def label_split(corpus: str, split: str, model_path: str, out_dir: str, transcripts: bool = False,
                lexicon: Optional[Lexicon] = None, strict: bool = False, phone_lm: Optional[str] = None,
                lm_weight: float = 1.0, insertion: float = 2.0, beam: int = 16, nshard: int = 1,
                rank: int = 0, blank_penalty: float = 0.0) -> LabellingReport:
    """Label rows ``shard_range(n, nshard, rank)`` of ``corpus/split.tsv``; see the module docstring."""
    from speechlm.data.readers import Manifest
    from speechlm.tokenizers import phone_recognizer
    from speechlm.tokenizers.phone_alignment import label_with_transcript, label_without_transcript
    from speechlm.tokenizers.phone_lm import ArpaLM, label_with_phone_lm
    from speechlm.tokenizers.shards import shard_range

    kaldi = lexicon is not None and lexicon.inventory.name == "kaldi"
    if kaldi and not transcripts:
        raise LabellingError("Kaldi position-dependent labels need word boundaries: give --transcripts "
                             f"({corpus}/{split}.wrd)")
    manifest = Manifest.load(os.path.join(corpus, f"{split}.tsv"))
    rows = manifest.rows
    words = transcripts_as_phones(corpus, split, len(rows), lexicon or Lexicon.load()) if transcripts else None
    lm = ArpaLM.load(phone_lm) if phone_lm else None
    model = phone_recognizer.load_recognizer(model_path)
    start, end = shard_range(len(rows), nshard, rank)
    os.makedirs(out_dir, exist_ok=True)
    if kaldi:
        from speechlm.tokenizers.lexicon import LexiconError, ensure_kaldi_dict

        try:
            ensure_kaldi_dict(out_dir)
        except LexiconError as e:
            raise LabellingError(str(e)) from None
    name = split if nshard == 1 else f"{split}_{rank}_{nshard}"
    report = LabellingReport(out=os.path.join(out_dir, f"{name}.phn"))
    with atomic_write(report.out, what="phone labels") as f:
        for i in range(start, end):
            lp = phone_recognizer.posteriors(model, manifest.audio(i))
            labels = None
            if words is not None:
                wp = words[i]
                if isinstance(wp, tuple):
                    if strict or kaldi:
                        raise LabellingError(
                            f"{corpus}/{split}.wrd:{wp[0]}: words not in the lexicon: {wp[1]}; add them "
                            "(--lexicon)" + (" (Kaldi labels need every word aligned)" if kaldi
                                             else " or drop --strict"))
                    report.oov_lines.append(wp)
                else:
                    try:
                        labels = label_with_transcript(lp, wp)
                        report.aligned += 1
                    except ValueError:
                        report.too_short += 1  # transcript does not fit in the frames
                        if kaldi:
                            raise LabellingError(
                                f"{corpus}/{split}.wrd:{i + 1}: the transcript does not fit in the audio's "
                                "frames, so it has no Kaldi position-dependent labels; fix or drop the row")
            if labels is None and blank_penalty:
                lp = lp.copy()
                lp[:, phone_recognizer.BLANK] -= blank_penalty
            if labels is None and lm is not None:
                labels = label_with_phone_lm(lp, lm, lm_weight, insertion, beam)
                report.phone_lm += 1
            if labels is None:
                labels = label_without_transcript(lp)
                report.posteriors += 1
            f.write(" ".join(labels) + "\n")
            report.utterances += 1
    return report
