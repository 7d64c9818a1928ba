"""Speech-translation data in fairseq's ``speech_to_text`` format, with raw audio input.

``prepare_st_data`` turns fairseq audio manifests (``{split}.tsv``) plus one target sentence per row
into what ``--task speech_to_text`` reads:

- ``{split}.tsv``: columns ``id audio n_frames tgt_text src_text speaker``; ``audio`` points into
  ``{split}_audio.zip`` (below). ``n_frames`` is the number of 50 Hz frames the encoder will see
  (``num_frames_50hz``), not samples: fairseq uses it only for length filtering and batching, so
  ``--max-tokens`` counts encoder frames and the task's default ``--max-source-positions 6000``
  admits utterances up to 120 s, with no extra flag to fairseq-generate;
- ``{split}_audio.zip``: the waveforms as float32 ``.npy`` arrays in an uncompressed zip, fairseq's
  own S2T storage (``audio`` = ``zip:byte_offset:byte_size``). fairseq reads ``.wav`` through
  ``torchaudio`` even when nothing needs converting, and no torchaudio build exists for every torch;
  ``.npy`` entries in a zip are read with numpy alone, and decoded audio is read once per epoch
  without a decoder;
- ``spm_char.model`` / ``spm_char.vocab``: a character SentencePiece model trained on the training
  targets, and ``spm_char.txt``, the matching fairseq dictionary (``piece 1`` per line);
- ``config.yaml``: ``use_audio_input: true``, the vocabulary and the SentencePiece tokenizer.
"""
import csv
import io
import logging
import os
import struct
import zipfile
from typing import Dict, List, Sequence

import numpy as np

from speechlm.data.manifest import num_frames_50hz
from speechlm.data.readers import load_labels, load_manifest, read_audio
from speechlm.errors import UserError

logger = logging.getLogger(__name__)

SPM_PREFIX = "spm_char"
# fairseq's Dictionary reserves <s>=0 <pad>=1 </s>=2 <unk>=3; SentencePiece must use the same ids so
# that the model's pieces line up with the dictionary written next to it.
SPM_SPECIAL_IDS = dict(bos_id=0, pad_id=1, eos_id=2, unk_id=3)
SPECIAL_PIECES = {"<s>", "<pad>", "</s>", "<unk>"}
TSV_COLUMNS = ["id", "audio", "n_frames", "tgt_text", "src_text", "speaker"]


def utterance_id(rel_path: str) -> str:
    """``spk1/utt001.wav`` -> ``spk1_utt001``: unique as long as the relative paths are."""
    stem = os.path.splitext(rel_path)[0]
    return stem.replace(os.sep, "_").replace("/", "_")


def build_rows(
    manifest_path: str,
    targets: Sequence[str],
    sources: Sequence[str],
    speakers: Sequence[str] = None,
    target_path: str = "targets",
) -> List[Dict[str, str]]:
    """One ``speech_to_text`` row per manifest row.

    Raises ``ValueError`` naming the file and line for an empty target or an utterance too short for
    the conv front end (fewer than 400 samples), and for duplicate utterance ids.
    """
    root, rows = load_manifest(manifest_path)
    if len(targets) != len(rows) or len(sources) != len(rows):
        raise UserError(
            f"{target_path}: has {len(targets)} lines but {manifest_path} has {len(rows)} rows; "
            "give exactly one target sentence per manifest row"
        )
    out, seen = [], {}
    for i, (rel, n) in enumerate(rows):
        uid = utterance_id(rel)
        if uid in seen:
            raise UserError(
                f"{manifest_path}:{i + 2}: utterance id {uid!r} (from {rel!r}) repeats line "
                f"{seen[uid] + 2}; give the audio files distinct names"
            )
        seen[uid] = i
        if not targets[i].strip():
            raise UserError(
                f"{target_path}:{i + 1}: empty target sentence for utterance {uid!r}; remove the "
                "utterance from the manifest or give it a translation"
            )
        if num_frames_50hz(n) == 0:
            raise UserError(
                f"{manifest_path}:{i + 2}: utterance {uid!r} has {n} samples, too short for the "
                "conv front end (needs >= 400); remove it from the manifest"
            )
        out.append(
            {
                "id": uid,
                "audio": os.path.abspath(os.path.join(root, rel)),
                "n_frames": str(num_frames_50hz(n)),
                "tgt_text": " ".join(targets[i].split()),
                "src_text": " ".join(sources[i].split()),
                "speaker": speakers[i].strip() if speakers else "None",
            }
        )
    return out


def pack_audio_zip(rows: List[Dict[str, str]], zip_path: str) -> None:
    """Store each row's audio as ``{id}.npy`` (float32 in [-1, 1]) in an uncompressed zip and point
    its ``audio`` field at it (``zip_path:byte_offset:byte_size``, what fairseq's S2T datasets read).
    """
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as z:
        for r in rows:
            buf = io.BytesIO()
            wav = read_audio(r["audio"])
            if str(num_frames_50hz(len(wav))) != r["n_frames"]:
                raise UserError(
                    f"{r['audio']}: has {len(wav)} samples ({num_frames_50hz(len(wav))} frames), not what "
                    f"the manifest says ({r['n_frames']} frames); regenerate the manifest "
                    "(`speechlm manifest`) from the audio as it is now"
                )
            np.save(buf, wav.astype(np.float32))
            z.writestr(r["id"] + ".npy", buf.getvalue())
    zip_abs = os.path.abspath(zip_path)
    with zipfile.ZipFile(zip_path) as z, open(zip_path, "rb") as f:
        where = {}
        for info in z.infolist():
            f.seek(info.header_offset)
            header = f.read(30)  # local file header: name and extra-field lengths at bytes 26..29
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            where[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    for r in rows:
        offset, size = where[r["id"] + ".npy"]
        r["audio"] = f"{zip_abs}:{offset}:{size}"


def write_tsv(path: str, rows: List[Dict[str, str]]) -> None:
    """fairseq's speech_to_text TSV (tab-separated, header line, no quoting)."""
    from speechlm.atomic import atomic_write

    with atomic_write(path, what="speech_to_text TSV") as f:
        w = csv.DictWriter(
            f, fieldnames=TSV_COLUMNS, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE,
            lineterminator="\n", escapechar="\\",
        )
        w.writeheader()
        w.writerows(rows)


def read_tsv(path: str) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(
            csv.DictReader(f, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE,
                           escapechar="\\")
        )


def train_char_spm(texts: Sequence[str], out_dir: str) -> str:
    """Train a character SentencePiece model on ``texts``; write ``spm_char.{model,vocab,txt}``.

    Returns the path of the ``.model``. The ``.txt`` file is the fairseq dictionary of its pieces.
    """
    import sentencepiece as spm

    prefix = os.path.join(out_dir, SPM_PREFIX)
    chars = {c for t in texts for c in t.replace(" ", "\u2581")}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_prefix=prefix,
        model_type="char",
        vocab_size=len(chars) + len(SPECIAL_PIECES),
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **SPM_SPECIAL_IDS,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    from speechlm.atomic import atomic_write

    with atomic_write(prefix + ".txt", what="SentencePiece dictionary") as f:
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if piece not in SPECIAL_PIECES:
                f.write(f"{piece} 1\n")
    return prefix + ".model"


def write_config(out_dir: str, spm_model: str) -> str:
    """``config.yaml`` for ``--task speech_to_text`` with raw 16 kHz audio input."""
    from speechlm.atomic import atomic_write

    path = os.path.join(out_dir, "config.yaml")
    with atomic_write(path, what="speech_to_text config") as f:
        f.write(
            "# written by `speechlm st prepare`: raw 16 kHz audio input, character SentencePiece\n"
            "input_channels: 1\n"
            "use_audio_input: true\n"
            "standardize_audio: false\n"
            f"vocab_filename: {SPM_PREFIX}.txt\n"
            "bpe_tokenizer:\n"
            "  bpe: sentencepiece\n"
            f"  sentencepiece_model: {os.path.abspath(spm_model)}\n"
        )
    return path


def prepare_st_data(
    data_dir: str,
    out_dir: str,
    splits: Sequence[str],
    train_split: str,
    target_ext: str = None,
    synthetic: str = None,
    source_ext: str = "wrd",
) -> Dict[str, int]:
    """Write ``{split}.tsv``, the char SentencePiece model of ``train_split`` and ``config.yaml``.

    Targets come from ``{data_dir}/{split}.{target_ext}`` (one sentence per manifest row) or, with
    ``synthetic`` (a key of ``speechlm.corpora.st_synthetic.TARGET_LANGUAGES``), are derived from the
    transcripts ``{split}.{source_ext}``. Returns ``{split: number of rows}``.
    """
    from speechlm.corpora.st_synthetic import TARGET_LANGUAGES

    if (target_ext is None) == (synthetic is None):
        raise UserError("give exactly one of target_ext (real translations) or synthetic")
    if synthetic is not None and synthetic not in TARGET_LANGUAGES:
        raise UserError(
            f"unknown synthetic target language {synthetic!r}; choose from "
            f"{sorted(TARGET_LANGUAGES)}"
        )
    if train_split not in splits:
        raise UserError(f"train split {train_split!r} is not among the splits {list(splits)}")
    os.makedirs(out_dir, exist_ok=True)
    all_rows = {}
    for split in splits:
        tsv = os.path.join(data_dir, f"{split}.tsv")
        if not os.path.isfile(tsv):
            raise FileNotFoundError(f"{tsv}: manifest not found (is {data_dir} a corpus dir?)")
        _, rows = load_manifest(tsv)
        src_path = os.path.join(data_dir, f"{split}.{source_ext}")
        sources = load_labels(src_path, len(rows), tsv)
        if synthetic is not None:
            tgt_path = src_path
            targets = [TARGET_LANGUAGES[synthetic](s) for s in sources]
        else:
            tgt_path = os.path.join(data_dir, f"{split}.{target_ext}")
            targets = load_labels(tgt_path, len(rows), tsv)
        spk_path = os.path.join(data_dir, f"{split}.spk")
        speakers = load_labels(spk_path, len(rows), tsv) if os.path.isfile(spk_path) else None
        all_rows[split] = build_rows(tsv, targets, sources, speakers, tgt_path)
        pack_audio_zip(all_rows[split], os.path.join(out_dir, f"{split}_audio.zip"))
        write_tsv(os.path.join(out_dir, f"{split}.tsv"), all_rows[split])
        logger.info("%s: %d utterances", split, len(all_rows[split]))
    spm_model = train_char_spm([r["tgt_text"] for r in all_rows[train_split]], out_dir)
    write_config(out_dir, spm_model)
    return {s: len(r) for s, r in all_rows.items()}


def copy_source_bleu(tsv_path: str, lowercase: bool = True):
    """sacrebleu BLEU of copying ``src_text`` as the translation of each row of an ST TSV.

    The source is lower-cased by default (the synthetic target is lower-case): the stronger baseline.
    """
    import sacrebleu

    rows = read_tsv(tsv_path)
    hyps = [r["src_text"].lower() if lowercase else r["src_text"] for r in rows]
    refs = [r["tgt_text"] for r in rows]
    return sacrebleu.corpus_bleu(hyps, [refs])
