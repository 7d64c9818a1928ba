"""Synthesized mini SLU corpora for SPLAT's downstream tasks, built with ``speechlm.corpora.synth``.

``build_intent_corpus``: spoken commands in the style of Fluent Speech Commands; the label is
``action_object_location`` (26 intents, four phrasings each), with train / valid / test spoken by
disjoint voices. Files: ``{split}.tsv .spk .wrd .intent``, ``dict.intent.txt``, fbank + ``cmvn.npz``.

``build_qa_corpus``: spoken passages (three facts about two people), TEXT questions about them and the
answer span in seconds taken from the synthesizer's word timings. Files: ``{split}.tsv .spk .wrd``
(passage), ``.question``, ``.answer``, ``.span`` (``start_s end_s``), fbank + ``cmvn.npz``. One manifest row
per question, so a passage's audio appears once per question.
"""
import os
import random
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np

from speechlm.data.fbank import extract_features
from speechlm.data.manifest import SAMPLE_RATE, write_manifest

# ---------------------------------------------------------------------------------------------
# intents

PHRASINGS: Dict[str, Tuple[str, ...]] = {
    "activate": ("TURN ON THE {obj}", "SWITCH ON THE {obj}", "TURN THE {obj} ON", "PLEASE SWITCH THE {obj} ON"),
    "deactivate": ("TURN OFF THE {obj}", "SWITCH OFF THE {obj}", "TURN THE {obj} OFF", "PLEASE SWITCH THE {obj} OFF"),
    "increase": ("TURN UP THE {obj}", "INCREASE THE {obj}", "TURN THE {obj} UP", "PLEASE RAISE THE {obj}"),
    "decrease": ("TURN DOWN THE {obj}", "DECREASE THE {obj}", "TURN THE {obj} DOWN", "PLEASE LOWER THE {obj}"),
    "bring": ("BRING ME MY {obj}", "GET ME THE {obj}", "FETCH MY {obj}", "GO AND GET THE {obj}"),
}
LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
# (action, object, locations it is used with)
INTENT_GRID = (
    [(a, "lights", LOCATIONS) for a in ("activate", "deactivate")]
    + [(a, "heat", LOCATIONS) for a in ("increase", "decrease")]
    + [(a, "volume", ("none",)) for a in ("increase", "decrease")]
    + [(a, o, ("none",)) for a in ("activate", "deactivate") for o in ("music", "lamp")]
    + [("bring", o, ("none",)) for o in ("shoes", "socks", "newspaper", "juice")]
)
# voices: speakers are disjoint between splits, as in Fluent Speech Commands
INTENT_VOICES = {
    "train": ("fl-slt", "fl-awb", "es-us-m3", "es-us-f2", "es-us-m1", "es-us-f4", "es-us-m7"),
    "valid": ("fl-kal16", "es-us-f1"),
    "test": ("fl-rms", "es-sc-f5", "es-us-m2"),
}


def intent_sentences(phrasings: int = 4) -> List[Tuple[str, str]]:
    """(sentence, intent label) for the grid: 26 intents x the first ``phrasings`` phrasings (max 4)."""
    out = []
    for action, obj, locs in INTENT_GRID:
        for loc in locs:
            label = f"{action}_{obj}_{loc}"
            for p in PHRASINGS[action][:phrasings]:
                text = p.format(obj=obj.upper())
                if loc != "none":
                    text += f" IN THE {loc.upper()}"
                out.append((text, label))
    return out


def _voice(name: str):
    from speechlm.corpora.synth import VOICE_BY_NAME

    if name not in VOICE_BY_NAME:
        raise KeyError(f"voice {name!r} is not in speechlm.corpora.synth.VOICES ({sorted(VOICE_BY_NAME)})")
    return VOICE_BY_NAME[name]


def _write_wav(path: str, wav: np.ndarray):
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")


def _write_lines(path: str, lines: Sequence[str]):
    from speechlm.atomic import atomic_write

    with atomic_write(path, what="label file") as f:
        f.write("".join(f"{x}\n" for x in lines))


def build_intent_corpus(out_dir: str, voices_per_sentence: int = 3, seed: int = 1,
                        phrasings: int = 4) -> Dict[str, int]:
    """Synthesize the intent corpus into ``out_dir``; returns utterances per split.

    Each sentence is spoken by ``voices_per_sentence`` random training voices in train, and by one
    voice each in valid and test.
    """
    from speechlm.corpora.synth import synthesize

    rng = random.Random(seed)
    sentences = intent_sentences(phrasings)
    counts = {}
    for split, voices in INTENT_VOICES.items():
        n_voices = voices_per_sentence if split == "train" else 1
        rows, spk, wrd, lab = [], [], [], []
        for k, (text, label) in enumerate(sentences):
            for v in rng.sample(voices, n_voices):
                utt = synthesize(text, _voice(v))
                rel = f"wav/{split}/{k:03d}_{v}.wav"
                _write_wav(os.path.join(out_dir, rel), utt.wav)
                rows.append((rel, len(utt.wav)))
                spk.append(v)
                wrd.append(text)
                lab.append(label)
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), out_dir, rows)
        _write_lines(os.path.join(out_dir, f"{split}.spk"), spk)
        _write_lines(os.path.join(out_dir, f"{split}.wrd"), wrd)
        _write_lines(os.path.join(out_dir, f"{split}.intent"), lab)
        if split == "train":
            c = Counter(lab)
            _write_lines(os.path.join(out_dir, "dict.intent.txt"), [f"{k} {c[k]}" for k in sorted(c)])
        counts[split] = len(rows)
    extract_features(out_dir, list(INTENT_VOICES))
    return counts


# ---------------------------------------------------------------------------------------------
# spoken question answering

NAMES = ("JOHN", "MARY", "PETER", "SARAH", "DAVID", "ANNA", "JAMES", "LUCY")
CITIES = ("LONDON", "PARIS", "BOSTON", "CHICAGO", "DENVER", "BERLIN", "DALLAS", "TORONTO")
JOBS = ("DOCTOR", "TEACHER", "FARMER", "LAWYER", "BAKER", "PAINTER", "DRIVER", "SINGER")
FOODS = ("APPLES", "BREAD", "CHEESE", "FISH", "RICE", "SOUP", "CAKE", "BEANS")
FACTS = (  # (statement, question, slot)
    ("{n} LIVES IN {x}", "WHERE DOES {n} LIVE", CITIES),
    ("{n} WORKS AS A {x}", "WHAT IS THE JOB OF {n}", JOBS),
    ("{n} LIKES TO EAT {x}", "WHAT DOES {n} LIKE TO EAT", FOODS),
)
# voices with word timings (flite's are matched against the CMU dictionary), disjoint between splits
QA_VOICES = {"train": ("fl-slt", "fl-awb"), "valid": ("fl-kal16",), "test": ("fl-rms",)}
QA_PASSAGES = {"train": 40, "valid": 12, "test": 12}


def qa_passage(rng: random.Random):
    """A passage of 3 facts (two about one person, one about another; about 4 s of speech) and a
    (question, answer, answer word index) for each fact."""
    a, b = rng.sample(NAMES, 2)
    facts = []
    for n, k in ((a, 2), (b, 1)):
        for statement, question, slot in rng.sample(FACTS, k):
            facts.append((n, statement, question, rng.choice(slot)))
    rng.shuffle(facts)
    words, qas = [], []
    for n, statement, question, x in facts:
        sent = statement.format(n=n, x=x).split()
        qas.append((question.format(n=n), x, len(words) + sent.index(x)))
        words.extend(sent)
    return " ".join(words), qas


def build_qa_corpus(out_dir: str, seed: int = 1, passages: Dict[str, int] = None) -> Dict[str, int]:
    """Synthesize the spoken-QA corpus into ``out_dir``; returns questions per split."""
    from speechlm.corpora.synth import synthesize

    rng = random.Random(seed)
    passages = passages or QA_PASSAGES
    counts = {}
    for split, voices in QA_VOICES.items():
        rows, spk, wrd, ques, ans, span = [], [], [], [], [], []
        for k in range(passages[split]):
            text, qas = qa_passage(rng)
            for v in voices:
                utt = synthesize(text, _voice(v))
                if utt.words is None or len(utt.words) != len(text.split()):
                    raise RuntimeError(
                        f"voice {v} gave no word timings for {text!r}; spoken QA needs a voice with "
                        "word timings (see speechlm.corpora.synth.Utterance.words)"
                    )
                rel = f"wav/{split}/{k:03d}_{v}.wav"
                _write_wav(os.path.join(out_dir, rel), utt.wav)
                for question, answer, i in qas:
                    _, start, end = utt.words[i]
                    rows.append((rel, len(utt.wav)))
                    spk.append(v)
                    wrd.append(text)
                    ques.append(question)
                    ans.append(answer)
                    span.append(f"{start:.3f} {end:.3f}")
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), out_dir, rows)
        for ext, lines in (("spk", spk), ("wrd", wrd), ("question", ques), ("answer", ans), ("span", span)):
            _write_lines(os.path.join(out_dir, f"{split}.{ext}"), lines)
        counts[split] = len(rows)
    extract_features(out_dir, list(QA_VOICES))
    return counts
