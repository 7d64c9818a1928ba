"""The embedded mini corpus: synthesized English with true phone alignments, and its checker.

``build_mini_corpus(out_dir, hours=1.0, seed=1)`` speaks King James Bible sentences (Debian
``bible-kjv``, public domain) with the voices of ``speechlm.corpora.synth`` and writes fairseq-style
splits (see manifests/README.md for every file format):

- ``train``: speech used without transcripts; ``train_paired``: ~10% of train, transcribed;
- ``valid``, ``test``: other sentences, training voices; ``test_other``: other sentences, voices
  that appear in no training split;
- ``unpaired.wrd``: book sentences never synthesized (>= 20x the speech sentences).

``check_corpus(dir)`` returns every problem found, each naming file and 1-based line.
"""
import json
import multiprocessing
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from speechlm.corpora import synth
from speechlm.data import manifest as mf
from speechlm.data.readers import Manifest, load_labels, read_lines
from speechlm.tokenizers.lexicon import PHONES, cmudict_pronunciations, letters, normalize_text

SPLITS = ("train", "train_paired", "valid", "test", "test_other")
TRAINING_SPLITS = ("train", "train_paired")
LABEL_EXTS = ("wrd", "ltr", "spk", "phn", "phn100")
# Share of the requested hours per split (train_paired is a subset of train, not extra audio).
SPLIT_SHARE = {"train": 0.76, "valid": 0.08, "test": 0.08, "test_other": 0.08}
PAIRED_FRACTION = 0.10
MIN_UTTS_PER_SPLIT = 2
MIN_WORDS, MAX_WORDS = 4, 25  # speakable sentence length
UNPAIRED_RATIO = 20  # unpaired text sentences per synthesized sentence, at least
# Rough speaking time for planning the selection (the real durations are measured after synthesis).
EST_SECONDS_PER_WORD, EST_SECONDS_PER_UTT = 0.25, 0.3
LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'") + ["|"]
DONE_MARKER = "done"


# ------------------------------------------------------------------------------------------------
# text


def _split_long(piece: str, seps: Sequence[str]) -> List[str]:
    """Split ``piece`` at the first separator class that makes chunks of <= MAX_WORDS words."""
    if len(piece.split()) <= MAX_WORDS or not seps:
        return [piece]
    parts = [p for p in re.split(seps[0], piece) if p.strip()]
    chunks, cur = [], ""
    for p in parts:
        if cur and len((cur + " " + p).split()) > MAX_WORDS:
            chunks.append(cur)
            cur = p
        else:
            cur = (cur + " " + p) if cur else p
    if cur:
        chunks.append(cur)
    out = []
    for c in chunks:
        out.extend(_split_long(c, seps[1:]))
    return out


def verse_sentences(verse: str) -> List[str]:
    """Normalized sentences/clauses of MIN_WORDS..MAX_WORDS words from one verse's text."""
    out = []
    for sent in re.split(r"(?<=[.?!])\s+", verse):
        for chunk in _split_long(sent, [r"[;:]", r","]):
            norm = " ".join(normalize_text(chunk)[0])
            if MIN_WORDS <= len(norm.split()) <= MAX_WORDS:
                out.append(norm)
    return out


def book_sentences() -> List[str]:
    """All distinct normalized sentences of the KJV bible, in book order."""
    try:
        res = subprocess.run(
            ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        raise RuntimeError(
            "the `bible` program is missing; install it: sudo apt-get install bible-kjv"
        ) from None
    seen, out = set(), []
    for line in res.stdout.splitlines():
        ref, _, verse = line.partition(" ")
        for s in verse_sentences(verse):
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


# ------------------------------------------------------------------------------------------------
# building


@dataclass(frozen=True)
class _Job:
    uttid: str
    text: str
    voice: str
    path: str  # absolute output path


def _plan(sentences: List[str], hours: float, seed: int):
    """Choose sentences and voices per split; the rest of the book becomes unpaired text."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    plan: Dict[str, List[Tuple[str, str]]] = {s: [] for s in SPLIT_SHARE}
    budget = {s: hours * 3600 * share for s, share in SPLIT_SHARE.items()}
    used = 0
    # held-out splits first so that they exist even for tiny corpora
    for split in ("test_other", "test", "valid", "train"):
        voices = synth.TEST_OTHER_VOICES if split == "test_other" else synth.TRAIN_VOICES
        offset = int(rng.integers(len(voices)))
        spent = 0.0
        while (spent < budget[split] or len(plan[split]) < MIN_UTTS_PER_SPLIT) and used < len(order):
            text = sentences[order[used]]
            used += 1
            voice = voices[(len(plan[split]) + offset) % len(voices)]
            plan[split].append((text, voice))
            spent += len(text.split()) * EST_SECONDS_PER_WORD + EST_SECONDS_PER_UTT
    unpaired = [sentences[i] for i in order[used:]]
    n_speech = sum(len(v) for v in plan.values())
    if len(unpaired) < UNPAIRED_RATIO * n_speech:
        raise ValueError(
            f"--hours {hours} uses {n_speech} of the book's {len(sentences)} sentences, leaving "
            f"{len(unpaired)} for unpaired text (< {UNPAIRED_RATIO}x); use --hours <= "
            f"{hours * len(sentences) / ((UNPAIRED_RATIO + 1) * n_speech):.2f}"
        )
    return plan, unpaired


def _synth_worker(job: _Job):
    import soundfile as sf

    try:
        utt = synth.synthesize(job.text, synth.VOICE_BY_NAME[job.voice])
    except Exception as e:  # name the utterance: the pool would only show the worker's traceback
        raise RuntimeError(f"{job.uttid} ({job.voice}) {job.text!r}: {e}") from e
    os.makedirs(os.path.dirname(job.path), exist_ok=True)
    try:
        sf.write(job.path, utt.wav, mf.SAMPLE_RATE, subtype="PCM_16")
    except RuntimeError as e:  # libsndfile says only "System error.": find out what the disk says
        import errno

        from speechlm.errors import os_error

        d = os.path.dirname(job.path)
        st = os.statvfs(d)
        code = errno.ENOSPC if st.f_bavail * st.f_frsize < 1 << 20 else (0 if os.access(d, os.W_OK) else errno.EACCES)
        if code:
            raise os_error(OSError(code, os.strerror(code), job.path), job.path, "audio file") from None
        raise RuntimeError(f"{job.path}: cannot write the audio ({e}); check the disk") from None
    return job.uttid, len(utt.wav), utt.phones, utt.words, sorted(set(utt.engine_phones))


def _pool_init():
    # The espeak library (initialized, never used for synthesis: see synth._espeak_forked), cmudict.
    synth._espeak()
    cmudict_pronunciations()


def _run_jobs(jobs: List[_Job], n_workers: int):
    _pool_init()  # in the parent, so that forked workers share it (cmudict takes seconds to load)
    if n_workers <= 1:
        return [_synth_worker(j) for j in jobs]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(n_workers) as pool:
        return list(pool.imap_unordered(_synth_worker, jobs, chunksize=4))


def _engine_versions() -> Dict[str, str]:
    out = {}
    for name, cmd in (("espeak-ng", ["espeak-ng", "--version"]), ("flite", ["flite", "--version"])):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
            out[name] = (res.stdout or res.stderr).strip().splitlines()[-1]
        except (OSError, IndexError):
            out[name] = "unknown"
    return out


def build_mini_corpus(
    out_dir: str, hours: float = 1.0, seed: int = 1, jobs: Optional[int] = None, verbose=True
) -> dict:
    """Build the corpus into ``out_dir`` (idempotent); returns the ``corpus.json`` summary."""
    log = print if verbose else (lambda *a, **k: None)
    out_dir = os.path.abspath(str(out_dir))
    key = {"hours": float(hours), "seed": int(seed)}
    done = _finished_corpus(out_dir, key)
    if done is not None:
        log(f"speechlm corpus mini: {out_dir} is already complete ({key}); nothing to do")
        return done
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    sentences = book_sentences()
    plan, unpaired = _plan(sentences, hours, seed)
    audio_root = os.path.join(out_dir, "audio")
    results, meta = _synthesize(plan, audio_root, jobs or os.cpu_count() or 1, log)
    rows = _split_rows(results, meta, seed)
    phone_counts: Counter = Counter()
    summary_splits = {split: _write_split(out_dir, split, rows[split], results, meta, audio_root, phone_counts)
                      for split in SPLITS}
    _write_text_side(out_dir, unpaired, [meta[u][2] for u in rows["train_paired"]], phone_counts, summary_splits)
    summary = {
        "seed": seed,
        "hours_requested": hours,
        "hours": {s: summary_splits[s]["hours"] for s in SPLITS},
        "utterances": {s: summary_splits[s]["utterances"] for s in SPLITS},
        "voices": {s: summary_splits[s]["voices"] for s in SPLITS},
        "unpaired_sentences": len(unpaired),
        "book_sentences": len(sentences),
        "engines": _engine_versions(),
        "engine_phones_seen": sorted({m for r in results.values() for m in r[4]}),
        "words_available": sum(r[3] is not None for r in results.values()),
        "build_seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, DONE_MARKER), "w") as f:
        json.dump(key, f)
    speech_h = sum(summary["hours"][s] for s in SPLITS if s != "train_paired")
    log(
        f"built {out_dir} in {summary['build_seconds']} s: {speech_h:.3f} h of audio "
        + ", ".join(f"{s} {summary['hours'][s]:.3f} h/{summary['utterances'][s]} utts" for s in SPLITS)
        + f"; {len(unpaired)} unpaired sentences"
    )
    return summary


def _finished_corpus(out_dir: str, key: dict) -> Optional[dict]:
    """The summary of a corpus already built in ``out_dir`` with ``key`` (hours, seed), or None when none
    is; ``ValueError`` when one was built there with other settings."""
    marker = os.path.join(out_dir, DONE_MARKER)
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        done = json.load(f)
    if done != key:
        raise ValueError(
            f"{out_dir} holds a corpus built with {done}, not {key}: choose another directory or "
            f"delete {marker} to rebuild"
        )
    with open(os.path.join(out_dir, "corpus.json")) as f:
        return json.load(f)


def _synthesize(plan: Dict[str, list], audio_root: str, jobs: int, log):
    """Synthesize every planned utterance: ``(results by utterance id, meta by utterance id)``; ``meta``
    holds ``(split, path relative to audio_root, text, voice)``."""
    job_list, meta = [], {}
    for split, items in plan.items():
        for k, (text, voice) in enumerate(items):
            uttid = f"{voice}-{split}-{k:05d}"
            rel = f"{split}/{voice}/{uttid}.wav"
            job_list.append(_Job(uttid, text, voice, os.path.join(audio_root, rel)))
            meta[uttid] = (split, rel, text, voice)
    log(f"synthesizing {len(job_list)} utterances with {jobs} worker(s) ...")
    return {r[0]: r for r in _run_jobs(job_list, jobs)}, meta


def _split_rows(results: dict, meta: dict, seed: int) -> Dict[str, list]:
    """Utterance ids per split (sorted), plus ``train_paired``: a seeded ~10% subset of train (the same
    audio files, like LibriSpeech's 100 h inside its 960 h)."""
    rows: Dict[str, list] = {s: [] for s in SPLITS}
    for uttid in sorted(results):
        rows[meta[uttid][0]].append(uttid)
    rng = np.random.default_rng(seed + 1)
    n_paired = max(MIN_UTTS_PER_SPLIT, int(round(PAIRED_FRACTION * len(rows["train"]))))
    pick = rng.choice(len(rows["train"]), size=min(n_paired, len(rows["train"])), replace=False)
    rows["train_paired"] = sorted(rows["train"][i] for i in pick)
    return rows


def _write_split(out_dir: str, split: str, ids: list, results: dict, meta: dict, audio_root: str,
                 phone_counts: Counter) -> dict:
    """``{split}.tsv``, its label files and ``{split}.align.jsonl``; counts train's frame phones into
    ``phone_counts``; returns the split's utterances, hours and voices."""
    files = {ext: open(os.path.join(out_dir, f"{split}.{ext}"), "w") for ext in LABEL_EXTS}
    ali = open(os.path.join(out_dir, f"{split}.align.jsonl"), "w")
    with open(os.path.join(out_dir, f"{split}.tsv"), "w") as tsv:
        tsv.write(audio_root + "\n")
        total = 0
        for uttid in ids:
            _, n, phones, words, _ = results[uttid]
            _, rel, text, voice = meta[uttid]
            total += n
            tsv.write(f"{rel}\t{n}\n")
            files["wrd"].write(text + "\n")
            files["ltr"].write(letters(text) + "\n")
            files["spk"].write(voice + "\n")
            phn = synth.frame_labels(phones, mf.frame_centres_50hz(n))
            files["phn"].write(" ".join(phn) + "\n")
            files["phn100"].write(
                " ".join(synth.frame_labels(phones, mf.frame_centres_100hz(n))) + "\n"
            )
            if split == "train":
                phone_counts.update(phn)
            ali.write(json.dumps({
                "id": uttid,
                "phones": [[p, round(s, 4), round(e, 4)] for p, s, e in phones],
                "words": None if words is None else [[w, round(s, 4), round(e, 4)] for w, s, e in words],
            }) + "\n")
    for f in files.values():
        f.close()
    ali.close()
    return {
        "utterances": len(ids),
        "hours": round(total / mf.SAMPLE_RATE / 3600, 4),
        "voices": sorted({meta[u][3] for u in ids}),
    }


def _write_text_side(out_dir: str, unpaired: list, paired_texts: list, phone_counts: Counter,
                     summary_splits: dict) -> None:
    """``unpaired.wrd``, the letter and phone dictionaries and ``speakers.tsv``."""
    with open(os.path.join(out_dir, "unpaired.wrd"), "w") as f:
        f.writelines(s + "\n" for s in unpaired)
    letter_counts = Counter()
    for s in unpaired + paired_texts:
        letter_counts.update(letters(s).split())
    _write_dict(os.path.join(out_dir, "dict.ltr.txt"), LETTERS, letter_counts)
    _write_dict(os.path.join(out_dir, "dict.phn.txt"), PHONES, phone_counts)
    with open(os.path.join(out_dir, "speakers.tsv"), "w") as f:
        f.write("voice\tengine\tengine_voice\trate\tpitch\tsplits\n")
        for v in synth.VOICES:
            splits = [s for s in SPLITS if v.name in summary_splits[s]["voices"]]
            f.write(f"{v.name}\t{v.engine}\t{v.engine_voice}\t{v.rate}\t{v.pitch}\t{','.join(splits)}\n")


def _write_dict(path: str, symbols: Sequence[str], counts: Counter) -> None:
    """fairseq dictionary: ``symbol count`` per line, most frequent first; every symbol listed."""
    order = sorted(symbols, key=lambda s: (-counts.get(s, 0), s))
    with open(path, "w") as f:
        f.writelines(f"{s} {counts.get(s, 0)}\n" for s in order)


# ------------------------------------------------------------------------------------------------
# checking


def check_corpus(corpus_dir: str, check_audio: bool = True) -> Tuple[List[str], str]:
    """Validate a corpus directory. Returns ``(errors, summary)``; no errors means it is usable."""
    d = os.path.abspath(str(corpus_dir))
    if not os.path.isdir(d):
        return [f"{d}: not a directory; build one with `speechlm corpus mini {d}`"], ""
    summary_path = os.path.join(d, "corpus.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            splits = [s for s in json.load(f)["utterances"]]
    else:
        splits = sorted(
            f[:-4] for f in os.listdir(d) if f.endswith(".tsv") and f != "speakers.tsv"
        )
    if not splits:
        return [f"{d}: no manifests (*.tsv) found"], ""
    errors: List[str] = []
    texts: Dict[str, List[str]] = {}
    voices: Dict[str, List[str]] = {}
    n_rows, n_samples = 0, 0
    for split in splits:
        rows, samples = _check_split(d, split, summary_path, check_audio, texts, voices, errors)
        n_rows += rows
        n_samples += samples
    errors.extend(_held_out_errors(d, texts, voices))
    summary = (
        f"corpus OK: {d}: {len(splits)} splits, {n_rows} utterances"
        + (f", {n_samples / mf.SAMPLE_RATE / 3600:.3f} h of audio" if check_audio else "")
    )
    return errors, summary


def _check_split(d: str, split: str, summary_path: str, check_audio: bool, texts: Dict[str, List[str]],
                 voices: Dict[str, List[str]], errors: List[str]) -> Tuple[int, int]:
    """Check one split's manifest, audio and label files (errors appended to ``errors``; its ``.wrd`` and
    ``.spk`` lines kept in ``texts`` / ``voices``); returns ``(rows, audio samples counted)``."""
    tsv = os.path.join(d, f"{split}.tsv")
    if not os.path.exists(tsv):
        errors.append(f"{tsv}: manifest missing (listed in {summary_path}); rebuild the corpus")
        return 0, 0
    try:
        manifest = Manifest.load(tsv)
    except ValueError as e:
        errors.append(f"{e}; fix or rebuild the manifest")
        return 0, 0
    rows = manifest.rows
    n_samples = 0
    if check_audio:
        for i, (_, n) in enumerate(rows):
            errors.extend(manifest.audio_errors(i))
            if split != "train_paired":  # its files are train's
                n_samples += n
    dict_phn = os.path.join(d, "dict.phn.txt")
    phone_set = None
    if os.path.exists(dict_phn):
        phone_set = {line.split()[0] for line in read_lines(dict_phn) if line.strip()}
    for ext in LABEL_EXTS:
        path = os.path.join(d, f"{split}.{ext}")
        if not os.path.exists(path):
            continue
        try:
            lines = load_labels(path, len(rows), tsv)
        except ValueError as e:
            errors.append(str(e))
            lines = read_lines(path)
        if ext == "wrd":
            texts[split] = lines
        elif ext == "spk":
            voices[split] = lines
        elif ext in ("phn", "phn100"):
            errors.extend(_frame_label_errors(path, ext, lines, rows, phone_set, dict_phn))
    # letters must spell the words
    wrd, ltr = os.path.join(d, f"{split}.wrd"), os.path.join(d, f"{split}.ltr")
    if split in texts and os.path.exists(ltr):
        for i, (w, l) in enumerate(zip(texts[split], read_lines(ltr)), start=1):
            if letters(w) != l.strip():
                errors.append(
                    f"{ltr}:{i}: letters do not spell {wrd}:{i} ({w[:40]!r}); a line is "
                    "missing or out of order in one of them: rebuild both from the manifest"
                )
                break
    return len(rows), n_samples


def _frame_label_errors(path: str, ext: str, lines: List[str], rows, phone_set, dict_phn: str) -> List[str]:
    """Frame counts of a ``.phn`` (50 Hz) / ``.phn100`` file against the audio; phones in the dictionary."""
    errors = []
    count = mf.num_frames_50hz if ext == "phn" else mf.num_frames_100hz
    for i, (line, (rel, n)) in enumerate(zip(lines, rows), start=1):
        labels = line.split()
        if abs(len(labels) - count(n)) > 1:
            errors.append(
                f"{path}:{i}: {len(labels)} frame labels for {rel} ({n} samples) but "
                f"the {'50' if ext == 'phn' else '100'} Hz front end gives {count(n)} "
                "frames; the alignment does not match the audio: rebuild the labels"
            )
            break  # one per file: a shifted file would repeat this for every line
        if phone_set is not None and not phone_set.issuperset(labels):
            bad = sorted(set(labels) - phone_set)
            errors.append(f"{path}:{i}: phones {bad} are not in {dict_phn}")
    return errors


def _held_out_errors(d: str, texts: Dict[str, List[str]], voices: Dict[str, List[str]]) -> List[str]:
    """Test sentences must not be in the training text, test_other's voices not in the training splits."""
    errors = []
    train_text = {}
    for split in TRAINING_SPLITS + ("unpaired",):
        path = os.path.join(d, f"{split}.wrd")
        lines = texts.get(split) or (read_lines(path) if os.path.exists(path) else [])
        for i, s in enumerate(lines, start=1):
            train_text.setdefault(s, f"{path}:{i}")
    for split in ("test", "test_other"):
        for i, s in enumerate(texts.get(split, []), start=1):
            if s in train_text:
                errors.append(
                    f"{os.path.join(d, split + '.wrd')}:{i}: sentence also in training data at "
                    f"{train_text[s]}; held-out sentences must not be trained on: rebuild the corpus"
                )
    train_voices = {v for s in TRAINING_SPLITS for v in voices.get(s, [])}
    for i, v in enumerate(voices.get("test_other", []), start=1):
        if v in train_voices:
            errors.append(
                f"{os.path.join(d, 'test_other.spk')}:{i}: voice {v!r} also speaks in a training "
                "split; test_other must use unseen voices: rebuild the corpus"
            )
    return errors
