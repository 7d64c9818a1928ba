"""Offline English speech synthesis with TRUE phone (and word) alignments: espeak-ng and flite.

Provenance: both synthesizers are Debian packages (``apt-get install espeak-ng flite``).

- espeak-ng is driven through its C library (``libespeak-ng.so.1``) with ctypes: it reports a PHONEME
  event (espeak mnemonic, start sample) for every phone and a WORD event for every word. Audio is
  22050 Hz and is resampled to 16 kHz with a fixed polyphase filter (deterministic).
- flite runs as a subprocess; ``-psdur`` prints each phone's END time (lowercase ARPAbet + ``pau``).
  Word times come from matching its phones against the CMU dictionary (``None`` if that fails).

Phones are mapped to 39 ARPAbet phones without stress plus ``SIL`` by explicit tables that raise
``UnknownPhoneError`` on a mnemonic they do not know: a new espeak-ng version must not silently produce
wrong labels.

    utt = synthesize("AND GOD SAID LET THERE BE LIGHT", VOICE_BY_NAME["es-us-m3"])
    utt.wav        # int16 (num_samples,) at 16 kHz
    utt.phones     # [("AE", 0.0, 0.078), ("N", 0.078, 0.151), ...] contiguous, SIL-padded
    utt.words      # [("AND", 0.0, 0.222), ("GOD", 0.222, ...), ...] or None
"""
import ctypes
import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import editdistance
import numpy as np

from speechlm.data.manifest import SAMPLE_RATE
from speechlm.tokenizers.lexicon import ARPABET, SIL, cmudict_pronunciations

Phone = Tuple[str, float, float]  # (ARPAbet or SIL, start_s, end_s)
Word = Tuple[str, float, float]  # (word as in the input text, start_s, end_s)


class UnknownPhoneError(KeyError):
    """A synthesizer produced a phone mnemonic that the mapping table does not cover."""


# espeak-ng English mnemonics (phsource/ph_english*, as reported by PHONEME events) -> ARPAbet.
# Covers every mnemonic espeak-ng 1.51 produces for the whole KJV bible with the en-us and
# en-gb-scotland voices (the dialects used here; both rhotic, so r-coloured vowels keep their R).
# A tuple of two phones splits the espeak phone's duration evenly; an empty tuple gives the
# duration to the phone before it.
ESPEAK_TO_ARPABET: Dict[str, Tuple[str, ...]] = {
    # pauses
    "_": (SIL,), "_:": (SIL,), "_!": (SIL,), "_^_": (SIL,),
    # plosives, affricates
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",),
    "t#": ("T",),   # en-us flapped t (water)
    "t2": ("T",),   # t before a reduced vowel
    "t[": ("T",), "d#": ("D",),
    "?": ("T",),    # glottal stop for t (button): CMU writes T
    "tS": ("CH",), "dZ": ("JH",),
    # fricatives
    "f": ("F",), "v": ("V",), "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",),
    "S": ("SH",), "Z": ("ZH",), "h": ("HH",), "x": ("K",),  # loch: CMU writes K
    # nasals, liquids, glides
    "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",), "r-": ("R",),
    "w": ("W",), "w#": ("W",),  # Scottish voiceless "wh"
    "j": ("Y",),
    ";": (),  # y-glide after an i vowel before another vowel ("the earth", "serious"): the i's tail
    "n-": ("AH", "N"),  # syllabic n (eaten): CMU writes AH N
    "@L": ("AH", "L"),  # syllabic l (little): CMU writes AH L
    # monophthongs
    "a": ("AE",), "aa": ("AE",), "a#": ("AE",),  # trap / bath vowels in en-us
    "A:": ("AA",), "0": ("AA",), "V": ("AH",),
    "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@-": ("AH",), "a2": ("AH",),
    "3": ("ER",), "3:": ("ER",), "IR": ("ER",), "VR": ("ER",),  # Scottish r-coloured vowels
    "E": ("EH",), "e": ("EH",), "E2": ("EH",),
    "I": ("IH",), "I2": ("IH",), "I#": ("IH",), "i": ("IY",), "i:": ("IY",),
    "O:": ("AO",), "O": ("AO",), "O2": ("AO",),
    "U": ("UH",), "u:": ("UW",),
    # diphthongs
    "eI": ("EY",), "aI": ("AY",), "aI2": ("AY",), "aU": ("AW",), "OI": ("OY",), "oU": ("OW",),
    # r-coloured (rhotic dialects)
    "A@": ("AA", "R"), "O@": ("AO", "R"), "o@": ("AO", "R"), "e@": ("EH", "R"),
    "i@": ("IH", "R"), "i@3": ("IH", "R"), "U@": ("UH", "R"),
    "aI@": ("AY", "ER"), "aI3": ("AY", "ER"), "aU@": ("AW", "ER"),
}

# en-gb-scotland writes the r of "more", "there", "dark" as a phoneme of its own after the vowel.
ESPEAK_SCOTTISH_OVERRIDES: Dict[str, Tuple[str, ...]] = {
    "A@": ("AA",), "O@": ("AO",), "o@": ("AO",), "e@": ("EH",), "i@": ("IH",), "i@3": ("IH",),
    "aI@": ("AY", "AH"),
}

# flite (cmulex) phones: lowercase ARPAbet without stress, plus pau.
FLITE_TO_ARPABET: Dict[str, Tuple[str, ...]] = {p.lower(): (p,) for p in ARPABET}
FLITE_TO_ARPABET.update({"pau": (SIL,), "ax": ("AH",)})


def map_phone(engine: str, mnemonic: str, engine_voice: str = "") -> Tuple[str, ...]:
    """Map one engine phone mnemonic to ARPAbet phones; raise ``UnknownPhoneError`` if unmapped."""
    if engine == "espeak-ng" and engine_voice.startswith("en-gb-scotland"):
        if mnemonic in ESPEAK_SCOTTISH_OVERRIDES:
            return ESPEAK_SCOTTISH_OVERRIDES[mnemonic]
    table = ESPEAK_TO_ARPABET if engine == "espeak-ng" else FLITE_TO_ARPABET
    try:
        return table[mnemonic]
    except KeyError:
        raise UnknownPhoneError(
            f"{engine} produced phone {mnemonic!r}, which speechlm.corpora.synth has no ARPAbet "
            f"mapping for; add it to {'ESPEAK' if engine == 'espeak-ng' else 'FLITE'}_TO_ARPABET"
        ) from None


@dataclass(frozen=True)
class Voice:
    """One corpus speaker: a synthesizer voice at a fixed speaking rate and pitch.

    ``rate`` is a speed factor relative to the engine default (1.1 = 10% faster).
    ``pitch`` is in engine units: espeak-ng pitch 0..99 (default 50); flite target f0 mean in Hz.
    """

    name: str
    engine: str  # "espeak-ng" | "flite"
    engine_voice: str
    rate: float = 1.0
    pitch: int = 50


# Ten training voices and two held-out ones (test_other): flite rms and a Scottish espeak-ng voice.
VOICES: Tuple[Voice, ...] = (
    Voice("fl-slt", "flite", "slt", 1.0, 175),
    Voice("fl-awb", "flite", "awb", 1.05, 110),
    Voice("fl-kal16", "flite", "kal16", 0.95, 105),
    Voice("es-us-m3", "espeak-ng", "en-us+m3", 1.0, 45),
    Voice("es-us-f2", "espeak-ng", "en-us+f2", 0.95, 55),
    Voice("es-us-m1", "espeak-ng", "en-us+m1", 1.1, 35),
    Voice("es-us-f4", "espeak-ng", "en-us+f4", 1.05, 65),
    Voice("es-us-m7", "espeak-ng", "en-us+m7", 0.9, 50),
    Voice("es-us-f1", "espeak-ng", "en-us+f1", 1.15, 60),
    Voice("es-us-m2", "espeak-ng", "en-us+m2", 1.0, 30),
    Voice("fl-rms", "flite", "rms", 1.0, 100),
    Voice("es-sc-f5", "espeak-ng", "en-gb-scotland+f5", 1.0, 55),
)
VOICE_BY_NAME: Dict[str, Voice] = {v.name: v for v in VOICES}
TEST_OTHER_VOICES: Tuple[str, ...] = ("fl-rms", "es-sc-f5")
TRAIN_VOICES: Tuple[str, ...] = tuple(v.name for v in VOICES if v.name not in TEST_OTHER_VOICES)


@dataclass
class Utterance:
    """A synthesized utterance.

    wav: int16 array (num_samples,) at 16 kHz mono.
    phones: contiguous (ARPAbet|SIL, start_s, end_s) covering [0, num_samples / 16000].
    words: (word, start_s, end_s) for each word of the input text, or None if unavailable.
    engine_phones: the raw engine mnemonics in order (for checking the mapping tables).
    """

    wav: np.ndarray
    phones: List[Phone]
    words: Optional[List[Word]]
    engine_phones: List[str]

    @property
    def duration(self) -> float:
        return len(self.wav) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------
# espeak-ng through ctypes

_ESPEAK_DEFAULT_WPM = 175  # espeak-ng's default speaking rate, words per minute
_ESPEAK_EVENT_WORD = 1
_ESPEAK_EVENT_PHONEME = 7
_ESPEAK_EVENT_LIST_TERMINATED = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Espeak:
    """Process-wide handle on libespeak-ng (the library is a singleton and not thread-safe)."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise RuntimeError(
                f"cannot load libespeak-ng.so.1 ({e}); install it: sudo apt-get install espeak-ng"
            ) from None
        # AUDIO_OUTPUT_SYNCHRONOUS=2, 100 ms buffers, default data path, espeakINITIALIZE_PHONEME_EVENTS=1
        self.sample_rate = self.lib.espeak_Initialize(2, 100, None, 1)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed; is espeak-ng-data installed?")
        self.chunks: List[np.ndarray] = []
        self.events: list = []
        self._cb = _SYNTH_CALLBACK(self._callback)  # keep a reference: ctypes would free it
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def _callback(self, wav, numsamples, events):
        if numsamples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events[i].type != _ESPEAK_EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _ESPEAK_EVENT_PHONEME:
                self.events.append(("phoneme", e.id.string.decode("ascii"), e.sample))
            elif e.type == _ESPEAK_EVENT_WORD:
                self.events.append(("word", (e.text_position, e.length), e.sample))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice):
        if self.lib.espeak_SetVoiceByName(voice.engine_voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.engine_voice!r} (see espeak-ng --voices)")
        self.lib.espeak_SetParameter(1, int(round(_ESPEAK_DEFAULT_WPM * voice.rate)), 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, int(voice.pitch), 0)  # espeakPITCH
        self.chunks, self.events = [], []
        data = text.encode("utf-8")
        # position 0, POS_CHARACTER=1, no end, espeakCHARS_AUTO=0
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err} for {text!r}")
        self.lib.espeak_Synchronize()
        wav = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return wav.astype(np.int16), list(self.events)


_ESPEAK: Optional[_Espeak] = None


def _espeak() -> _Espeak:
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


def _espeak_forked(text: str, voice: Voice):
    """Synthesize in a forked child of an initialized but unused engine.

    libespeak-ng carries wave-generator state from one utterance to the next (the same text comes
    out a few samples different after another one), so every utterance starts from the same pristine
    state: the parent initializes the library once and never synthesizes. A fork costs a few ms.
    Returns (int16 wav at the engine rate, events, sample_rate).
    """
    import pickle

    eng = _espeak()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: synthesize, send the result, leave without running any cleanup
        os.close(r)
        try:
            data = pickle.dumps(("ok", eng.synth(text, voice)))
        except BaseException as e:  # noqa: B036 - the parent re-raises it
            data = pickle.dumps(("error", RuntimeError(f"espeak-ng child failed: {e!r}")))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"espeak-ng child process died while synthesizing {text!r}")
    status, result = pickle.loads(data)
    if status != "ok":
        raise result
    wav, events = result
    return wav, events, eng.sample_rate


def resample_to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Polyphase resampling of int16 audio to 16 kHz (deterministic: fixed FIR, no dithering)."""
    if sr == SAMPLE_RATE:
        return wav.astype(np.int16)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, sr)
    y = resample_poly(wav.astype(np.float64), SAMPLE_RATE // g, sr // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _word_spans(text: str) -> List[Tuple[int, int, str]]:
    """(start_char, end_char, word) for the whitespace-separated words of ``text``, 0-based."""
    spans, pos = [], 0
    for w in text.split():
        start = text.index(w, pos)
        spans.append((start, start + len(w), w))
        pos = start + len(w)
    return spans


def _synth_espeak(text: str, voice: Voice) -> Utterance:
    # espeak reads all-caps words as abbreviations ("SAID" -> S A I D): speak lower case.
    wav22, events, sr = _espeak_forked(text.lower(), voice)
    total = len(wav22) / sr
    spans = _word_spans(text)
    # (mnemonic, start_s, index of the word whose WORD event precedes it)
    raw, cur_word = [], None
    for kind, val, sample in events:
        if kind == "word":
            start_char = val[0] - 1  # espeak's text_position is 1-based
            cur_word = next((i for i, s in enumerate(spans) if s[0] <= start_char < s[1]), cur_word)
        else:
            raw.append((val, min(sample / sr, total), cur_word))
    segs = []  # (arpabet, start_s, end_s, word event index)
    if raw and raw[0][1] > 0:  # audio before the first phoneme event
        segs.append((SIL, 0.0, raw[0][1], None))
    for i, (mnem, start, w) in enumerate(raw):
        end = raw[i + 1][1] if i + 1 < len(raw) else total
        arpa = map_phone("espeak-ng", mnem, voice.engine_voice)
        if len(arpa) == 2 and arpa[1] == "R" and i + 1 < len(raw):
            # an r-coloured vowel followed by its own r ("serious": i@3 r) keeps one R
            if map_phone("espeak-ng", raw[i + 1][0], voice.engine_voice) == ("R",):
                arpa = arpa[:1]
        if end <= start:
            continue
        if not arpa:  # belongs to the phone before it
            if segs:
                segs[-1] = segs[-1][:2] + (end,) + segs[-1][3:]
            else:
                segs.append((SIL, start, end, None))
            continue
        step = (end - start) / len(arpa)
        segs.extend((p, start + k * step, start + (k + 1) * step, w) for k, p in enumerate(arpa))
    wav = resample_to_16k(wav22, sr)
    phones = _normalize_alignment([s[:3] for s in segs], len(wav) / SAMPLE_RATE)
    words = _espeak_words(spans, segs)
    return Utterance(wav, phones, words, [m for m, _, _ in raw])


def _espeak_words(spans, segs) -> Optional[List[Word]]:
    """Word times from espeak WORD events.

    espeak speaks some pairs as one unit ("of the", "from the", "that it") and then reports a
    WORD event for the first word only; the trailing words get as many of the unit's last phones
    as their CMU dictionary pronunciation has. Returns None where that does not add up.
    """
    starts = sorted({w for *_, w in segs if w is not None})
    if not starts or starts[0] != 0:
        return None
    lex = cmudict_pronunciations()
    words: List[Word] = []
    for gi, first in enumerate(starts):
        last = (starts[gi + 1] if gi + 1 < len(starts) else len(spans)) - 1
        ph = [s for s in segs if s[3] == first and s[0] != SIL]
        tail = []
        for w in range(last, first, -1):  # peel the joined words off the end
            prons = lex.get(spans[w][2].upper())
            n = len(prons[0]) if prons else 0
            if n == 0 or n >= len(ph):
                return None
            tail.append((spans[w][2], ph[-n][1], ph[-1][2]))
            ph = ph[:-n]
        if not ph:
            return None
        words.append((spans[first][2], ph[0][1], ph[-1][2]))
        words.extend(reversed(tail))
    return words if len(words) == len(spans) else None


# ---------------------------------------------------------------------------------------------
# flite through a subprocess

def _flite_words(text: str, phones: List[Phone]) -> Optional[List[Word]]:
    """Word times from flite's phones, split where they best match CMU dictionary pronunciations.

    flite's lexicon and post-lexical rules differ from cmudict now and then ("poor": P UH R vs
    P UW R), so each word may take its pronunciation's length +-1 phones at edit-distance cost;
    a word missing from cmudict may take 1..len+2 phones at a flat cost. None if the best
    segmentation still disagrees with the dictionary on more than ~1 phone in 5.
    """
    lex = cmudict_pronunciations()
    seq = [p for p in phones if p[0] != SIL]
    labels = [p for p, _, _ in seq]
    words = text.split()
    n = len(seq)
    best = {0: (0.0, None)}  # position -> (cost, backpointer) after the words so far
    trail = []
    for w in words:
        prons = set(lex.get(w.upper(), []))
        nxt = {}
        for pos, (cost, _) in best.items():
            options = []
            if prons:
                for length in sorted({len(p) + d for p in prons for d in (-1, 0, 1)}):
                    if 1 <= length <= n - pos:
                        seg = labels[pos:pos + length]
                        options.append((length, min(editdistance.eval(seg, p) for p in prons)))
            else:
                options = [(k, 1.0) for k in range(1, min(len(w) + 2, n - pos) + 1)]
            for length, c in options:
                end = pos + length
                if end not in nxt or cost + c < nxt[end][0]:
                    nxt[end] = (cost + c, pos)
        if not nxt:
            return None
        trail.append(nxt)
        best = nxt
    if n not in best or best[n][0] > 1 + 0.2 * n:
        return None
    bounds, pos = [], n
    for nxt in reversed(trail):
        prev = nxt[pos][1]
        bounds.append((prev, pos))
        pos = prev
    bounds.reverse()
    return [(w, seq[a][1], seq[b - 1][2]) for w, (a, b) in zip(words, bounds)]


def _synth_flite(text: str, voice: Voice) -> Utterance:
    import soundfile as sf

    fd, path = tempfile.mkstemp(suffix=".wav", prefix="speechlm-flite-")
    os.close(fd)
    try:
        cmd = [
            "flite", "-voice", voice.engine_voice,
            "--setf", f"duration_stretch={1.0 / voice.rate:.4f}",
            "--setf", f"int_f0_target_mean={voice.pitch}",
            "-psdur", "-t", text.lower(), "-o", path,
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        except FileNotFoundError:
            raise RuntimeError("flite not found; install it: sudo apt-get install flite") from None
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"flite failed for {text!r}: {e.stderr.strip()}") from None
        wav, sr = sf.read(path, dtype="int16")
    finally:
        os.unlink(path)
    wav = resample_to_16k(wav, sr)
    phones: List[Phone] = []
    engine_phones = []
    t_prev = 0.0
    for tok in res.stdout.split():
        mnem, _, end = tok.rpartition(":")
        end = float(end)
        engine_phones.append(mnem)
        arpa = map_phone("flite", mnem)
        if end > t_prev:
            step = (end - t_prev) / len(arpa)
            for k, p in enumerate(arpa):
                phones.append((p, t_prev + k * step, t_prev + (k + 1) * step))
            t_prev = end
    phones = _normalize_alignment(phones, len(wav) / SAMPLE_RATE)
    return Utterance(wav, phones, _flite_words(text, phones), engine_phones)


def _normalize_alignment(phones: List[Phone], duration: float) -> List[Phone]:
    """Clip to [0, duration], drop empty phones, merge adjacent SILs, stretch the last to the end.

    flite's diphone voice (kal16) trims the final pause in the audio, so its phone times may run
    past the end of the waveform; espeak's events stop at the last phone start.
    """
    out: List[Phone] = []
    for p, s, e in phones:
        s, e = max(0.0, min(s, duration)), max(0.0, min(e, duration))
        if e <= s:
            continue
        if out and out[-1][0] == SIL and p == SIL:
            out[-1] = (SIL, out[-1][1], e)
        else:
            out.append((p, s, e))
    if not out:
        return [(SIL, 0.0, duration)]
    if out[-1][2] < duration:
        if out[-1][0] == SIL:
            out[-1] = (SIL, out[-1][1], duration)
        else:
            out.append((SIL, out[-1][2], duration))
    return out


def synthesize(text: str, voice: Voice) -> Utterance:
    """Speak ``text`` (normalized words, e.g. "AND GOD SAID") with ``voice``; 16 kHz, aligned."""
    if isinstance(voice, str):
        voice = VOICE_BY_NAME[voice]
    if voice.engine == "espeak-ng":
        return _synth_espeak(text, voice)
    if voice.engine == "flite":
        return _synth_flite(text, voice)
    raise ValueError(f"unknown engine {voice.engine!r} for voice {voice.name!r}")


def frame_labels(phones: Sequence[Phone], centres_s: np.ndarray) -> List[str]:
    """The phone covering each frame centre (seconds); centres past the end get the last phone."""
    ends = np.array([e for _, _, e in phones])
    idx = np.searchsorted(ends, centres_s, side="right")
    idx = np.minimum(idx, len(phones) - 1)
    return [phones[i][0] for i in idx]
