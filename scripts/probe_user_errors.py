"""Bad input, as a new user would give it: does each case end as a clean error? (issue 13's probe categories)

Each case corrupts a copy of a corpus's text files (the audio is shared, never modified) or a checkpoint,
calls the user-facing entry (a `speechlm` verb in-process, a task's dataset load as training does, a
model loader, or `fairseq-hydra-train`) and is classified:
  clean   a UserError (printed without a traceback by every entry) or exit 1 with a message, no traceback
  raw     another exception (a traceback at the entry)
  silent  no error at all

    python scripts/probe_user_errors.py CORPUS PRETRAINED.pt WORKDIR [FINETUNED.pt]

CORPUS: a `speechlm corpus mini` directory; PRETRAINED.pt: a `speechlm` checkpoint; FINETUNED.pt (optional):
a `speechlm_ctc` one, for the infer and training-entry cases. Run from the repository root.

Issue 27's classes (decoding dictionary, interrupted and concurrent writes, disk errors, NaN/Inf, convert
arguments, changed configs and old versions, preemption) run at the end; there a case can also be "ok" (a step that must work, e.g. tab-separated transcripts) or "corrupt" (it
ended, but left files a later step would trust wrongly). Disk-error cases mount tiny tmpfs file systems
(root only; skipped otherwise). Goal: 0 silent, 0 corrupt, 0 traceback. Set PROBE_TEXT_DATA=TEXT_DIR (PRETRAINED's task.text_data) for the
resume cases of a SpeechLM (text) checkpoint."""
import contextlib
import io
import os
import shutil
import sys
import traceback
from pathlib import Path

import soundfile as sf
import torch
from omegaconf import OmegaConf

import speechlm  # noqa: F401
from speechlm.cli.main import main as cli
from speechlm.data.readers import load_manifest
from speechlm.errors import UserError
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

CORPUS, CKPT, WORK = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's fairseq-hydra-train
if WORK.exists() and any(WORK.iterdir()):
    sys.exit(f"{WORK}: not empty; give a new directory for the corrupted copies")
WORK.mkdir(parents=True, exist_ok=True)
results = []
n_case = [0]


def copy_corpus():
    n_case[0] += 1
    d = WORK / f"c{n_case[0]}"
    d.mkdir()
    for p in CORPUS.iterdir():
        if p.is_file():
            shutil.copy(p, d / p.name)
    return d


def edit(path, lineno, fn, enc="utf-8"):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_bytes("\n".join(lines).encode(enc))


def load(d, split="valid", **kw):
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(data=str(d), seed=1, train_subset="train", min_sample_size=0, **kw))
    t = SpeechLMPretrainingTask.setup_task(cfg)
    t.load_dataset(split)
    ds = t.dataset(split)
    for i in range(len(ds)):  # what training does: read every item
        (ds[i] if kw.get("fine_tuning") else ds.speech[i])


class Corrupt(Exception):
    """Raised by a case's check: the step left files in a state a later step would trust wrongly."""


def case(category, name, fn, check=None, expect="error"):
    """Run one case. ``expect="error"``: a clean error is right ("clean"); ``expect="ok"``: the step must
    work ("ok"). ``check()`` then inspects what was left on disk; a string it returns (or a ``Corrupt``
    raised by ``fn``) makes the case "corrupt"."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = fn()
        e = err.getvalue()
        if rc is None or rc == 0:
            kind, msg = ("ok", "") if expect == "ok" else ("silent", "")
        else:
            kind = "clean" if "Traceback" not in e else "raw"
            lines = [ln for ln in e.strip().splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
            msg = lines[-1] if lines else f"exit {rc}"
    except Corrupt as e:
        kind, msg = "corrupt", str(e)
    except UserError as e:
        kind, msg = "clean", str(e)
    except SystemExit as e:
        kind, msg = ("clean", str(e.code)) if isinstance(e.code, str) else ("raw", f"exit {e.code}")
    except Exception as e:  # noqa: BLE001
        kind, msg = "raw", f"{type(e).__name__}: {e}\n" + traceback.format_exc().splitlines()[-3]
    if expect == "ok" and kind == "clean":
        kind = "raw"  # an error where the step should have worked: counted with the failures
    if check is not None and kind in ("clean", "ok"):
        bad = check()
        if bad:
            kind, msg = "corrupt", bad
    results.append((category, name, kind, msg[:200]))
    print(f"[{kind:7}] {category:18} {name:38} {msg[:150]}", flush=True)


def with_audio(fn_audio):
    """A manifest whose row 2 points at a file fn_audio(path) wrote (absolute path, the switch on)."""
    d = copy_corpus()
    root, rows = load_manifest(d / "valid.tsv")
    wav, sr = sf.read(os.path.join(root, rows[1][0]), dtype="float32")
    bad = d / "bad.wav"
    n = fn_audio(bad, wav, sr)
    edit(d / "valid.tsv", 3, lambda s: f"{bad}\t{n if n is not None else len(wav)}")
    return d


os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"] = "1"
A = "bad audio"
case(A, "8 kHz file (features dump)", lambda: cli(["features", "dump", str(with_audio(
    lambda p, w, sr: sf.write(p, w[::2], 8000) or len(w) // 2 + len(w) % 2)), "valid", str(WORK / "f1")]))
case(A, "stereo file (training read)", lambda: load(with_audio(
    lambda p, w, sr: sf.write(p, torch.stack([torch.from_numpy(w)] * 2, 1).numpy(), sr)), fine_tuning=True))
case(A, "missing file (features dump)", lambda: cli(["features", "dump", str(with_audio(
    lambda p, w, sr: None)), "valid", str(WORK / "f2")]))
case(A, "0-byte wav (training read)", lambda: load(with_audio(lambda p, w, sr: p.write_bytes(b"")),
                                                    fine_tuning=True))
case(A, "garbage wav (features dump)", lambda: cli(["features", "dump", str(with_audio(
    lambda p, w, sr: p.write_bytes(os.urandom(5000)))), "valid", str(WORK / "f3")]))
case(A, "manifest count off (training read)", lambda: load(with_audio(
    lambda p, w, sr: sf.write(p, w, sr) or len(w) + 1000), fine_tuning=True))
case(A, "truncated wav, stale manifest", lambda: load(with_audio(
    lambda p, w, sr: sf.write(p, w[: len(w) // 2], sr) or len(w)), fine_tuning=True))
case(A, "too short for a frame (eval)", lambda: load(with_audio(
    lambda p, w, sr: sf.write(p, w[:300], sr) or 300), fine_tuning=True))
case(A, "0-sample row (eval)", lambda: load(with_audio(
    lambda p, w, sr: sf.write(p, w[:0], sr) or 0), fine_tuning=True))
del os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"]


def rel_path_case(path):
    d = copy_corpus()
    root, rows = load_manifest(d / "valid.tsv")
    edit(d / "valid.tsv", 2, lambda s: f"{path(root, rows[0][0])}\t{rows[0][1]}")
    return cli(["features", "dump", str(d), "valid", str(WORK / f"f{n_case[0]}")])


case(A, "../ path in manifest", lambda: rel_path_case(lambda root, rel: "../" + os.path.basename(root) + "/" + rel))
case(A, "absolute path in manifest", lambda: rel_path_case(lambda root, rel: os.path.join(root, rel)))


def cut_flac():
    root, rows = load_manifest(CORPUS / "valid.tsv")
    wav, sr = sf.read(os.path.join(root, rows[0][0]), dtype="float32")
    a = WORK / f"flac{n_case[0]}"
    a.mkdir()
    sf.write(a / "x.flac", wav, sr)
    (a / "x.flac").write_bytes((a / "x.flac").read_bytes()[:3000])
    return cli(["manifest", str(a), "--dest", str(a / "m"), "--ext", "flac"])


case(A, "cut-short flac (manifest)", cut_flac)

L = "bad labels"
BOM = "\ufeff"


def bom(name, ft):
    d = copy_corpus()
    p = d / name
    p.write_text(BOM + p.read_text(encoding="utf-8"), encoding="utf-8")
    return load(d, fine_tuning=ft)


for name, ft in (("valid.ltr", True), ("valid.phn", False), ("dict.ltr.txt", True), ("dict.phn.txt", False),
                 ("valid.tsv", True)):
    case(L, f"BOM in {name}", lambda name=name, ft=ft: bom(name, ft))


def lab(name, lineno, fn, enc="utf-8", **kw):
    d = copy_corpus()
    edit(d / name, lineno, fn, enc)
    return load(d, **kw)


case(L, "lowercase .ltr", lambda: lab("valid.ltr", 2, str.lower, fine_tuning=True))
case(L, "unknown phone .phn", lambda: lab("valid.phn", 2, lambda s: "QQ " + s.split(" ", 1)[1]))
case(L, "empty transcript", lambda: lab("valid.ltr", 2, lambda s: "", fine_tuning=True))
case(L, "transcript longer than audio", lambda: lab("valid.ltr", 2, lambda s: " ".join(["A"] * 3000),
                                                    fine_tuning=True))
case(L, "latin-1 byte in .ltr", lambda: lab("valid.ltr", 2, lambda s: s + " \u00c9", "latin-1", fine_tuning=True))
case(L, "label line missing", lambda: lab("valid.ltr", 2, lambda s: s + "\nX |", fine_tuning=True))
case(L, "phn labels 20 frames short", lambda: lab("valid.phn", 2, lambda s: " ".join(s.split()[:-20])))


def km_beyond_k():
    d = copy_corpus()
    (d / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(10)))
    km = [" ".join("3" for _ in ln.split()) for ln in (d / "valid.phn").read_text().splitlines()]
    km[0] = "12 " + km[0].split(" ", 1)[1]
    (d / "valid.km").write_text("\n".join(km) + "\n")
    return load(d, labels=["km"])


case(L, "k-means id >= K", km_beyond_k)
case(L, "dict duplicate symbol", lambda: lab("dict.ltr.txt", 1, lambda s: s + "\nE 5", fine_tuning=True))
case(L, "dict malformed line", lambda: lab("dict.ltr.txt", 1, lambda s: s + " extra words", fine_tuning=True))

C = "bad configs"
case(C, "task.sample_rate=8000", lambda: load(copy_corpus(), sample_rate=8000))
case(C, "two unit labels", lambda: load(copy_corpus(), labels=["phn", "km"]))
case(C, "missing dict.phn.txt", lambda: (os.remove(copy_corpus() / "dict.phn.txt") or load(WORK / f"c{n_case[0]}")))
case(C, "missing split", lambda: load(copy_corpus(), split="nosuch"))
DEC = ["--config-dir", "examples/mini/config/decode", "--config-name", "infer_viterbi"]
case(C, "infer: pre-trained checkpoint", lambda: cli(["infer", *DEC, f"common_eval.path={CKPT}",
                                                      f"task.data={CORPUS}", "dataset.gen_subset=valid"]))
case(C, "infer: missing checkpoint", lambda: cli(["infer", *DEC, "common_eval.path=/nonexistent.pt"]))
case(C, "infer: missing decode config", lambda: cli(["infer", "--config-dir", "examples", "--config-name", "nope"]))


def ctc_kind():
    s = torch.load(CKPT, weights_only=True)
    s["cfg"]["model"]["_name"] = "speechlm_ctc"
    torch.save(s, WORK / "ctc.pt")
    return cli(["features", "dump", str(CORPUS), "valid", str(WORK / "fk"), "--checkpoint", str(WORK / "ctc.pt"),
                "--layer", "1"])


case(C, "features dump: fine-tuned ckpt", ctc_kind)

H = "hostile checkpoints"
ESC = ("[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2 if [c for c in ().__class__.__base__.__subclasses__() "
       f"if c.__name__ == '_wrap_close'][0].__init__.__globals__['system']('touch {WORK}/MARKER') == 0 else []")
s = torch.load(CKPT, weights_only=True)
s["cfg"]["model"]["conv_feature_layers"] = ESC
torch.save(s, WORK / "hostile.pt")
hp = str(WORK / "hostile.pt")
from speechlm.models.speechlm import SpeechLMModel  # noqa: E402
from speechlm.models.speechlm_ctc import read_pretrained  # noqa: E402

case(H, "SpeechLMModel.from_checkpoint", lambda: SpeechLMModel.from_checkpoint(hp))
case(H, "model.w2v_path (ctc/st loader)", lambda: read_pretrained(hp))
case(H, "speechlm infer", lambda: cli(["infer", *DEC, f"common_eval.path={hp}", "dataset.gen_subset=valid"]))
case(H, "features dump", lambda: cli(["features", "dump", str(CORPUS), "valid", str(WORK / "fh"),
                                      "--checkpoint", hp, "--layer", "1"]))
case(H, "phone-units train", lambda: cli(["phone-units", "train", str(CORPUS), "--split", "valid", "--save",
                                          str(WORK / "pr.pt"), "--checkpoint", hp, "--layer", "1"]))
if (WORK / "MARKER").exists():
    results.append((H, "MARKER FILE APPEARED", "raw", ""))

K = "kills / damage"
data = CKPT.read_bytes()
(WORK / "empty.pt").write_bytes(b"")
(WORK / "cut.pt").write_bytes(data[: len(data) // 2])
case(K, "0-byte w2v_path", lambda: read_pretrained(str(WORK / "empty.pt")))
case(K, "truncated w2v_path", lambda: read_pretrained(str(WORK / "cut.pt")))
case(K, "truncated checkpoint in infer", lambda: cli(["infer", *DEC, f"common_eval.path={WORK / 'cut.pt'}"]))
case(K, "truncated checkpoint in features", lambda: cli(["features", "dump", str(CORPUS), "valid", str(WORK / "fc"),
                                                         "--checkpoint", str(WORK / "cut.pt"), "--layer", "1"]))

FT = Path(sys.argv[4]) if len(sys.argv) > 4 else None
if FT:
    import subprocess

    I = "infer / training entry"
    os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"] = "1"
    d8 = with_audio(lambda p, w, sr: sf.write(p, w[::2], 8000) or len(w) // 2 + len(w) % 2)
    case(I, "8 kHz file in infer", lambda: cli(["infer", *DEC, f"common_eval.path={FT}", f"task.data={d8}",
                                                "dataset.gen_subset=valid"]))
    dm = with_audio(lambda p, w, sr: None)
    case(I, "missing file in infer", lambda: cli(["infer", *DEC, f"common_eval.path={FT}", f"task.data={dm}",
                                                  "dataset.gen_subset=valid"]))
    del os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"]
    dx = copy_corpus()
    with open(dx / "dict.ltr.txt", "a") as f:
        f.write("@ 1\n")
    case(I, "dictionary with an extra symbol", lambda: cli(["infer", *DEC, f"common_eval.path={FT}",
                                                            f"task.data={dx}", "dataset.gen_subset=valid"]))
    dl = copy_corpus()
    edit(dl / "valid.ltr", 2, str.lower)
    case(I, "lowercase .ltr in infer", lambda: cli(["infer", *DEC, f"common_eval.path={FT}", f"task.data={dl}",
                                                    "dataset.gen_subset=valid"]))

    def train_lower():
        p = subprocess.run(["fairseq-hydra-train", "--config-dir", "examples/mini/config/finetune", "--config-name",
                            "speechlm_ctc_tiny", "common.user_dir=speechlm", f"task.data={dl}",
                            f"model.w2v_path={CKPT}", f"checkpoint.save_dir={WORK / 'ftl'}",
                            "dataset.valid_subset=valid", "optimization.max_update=2"],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        return p.returncode

    case(I, "lowercase .ltr in fairseq-hydra-train", train_lower)

# ------------------------------------------------------------------ issue 27: trust, second pass
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402

from speechlm import atomic  # noqa: E402
from speechlm.data.unit_text_dataset import load_text_dataset  # noqa: E402
from speechlm.tokenizers.shards import shard_lock, write_sidecar  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/official"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
ULTR = [str(CORPUS / "dict.phn.txt"), str(CORPUS / "dict.ltr.txt")]


def no_temps(d):
    """check: no temporary file left under ``d``."""
    def check():
        left = [str(p) for p in Path(d).rglob("*") if atomic.is_temp(p.name) or p.name.startswith(".train")]
        return f"left temporary files: {left[:3]}" if left else None
    return check


def unchanged(path, before):
    return lambda: None if Path(path).read_bytes() == before else f"{path} was changed"


def reordered(d):
    lines = (d / "dict.ltr.txt").read_text().splitlines()
    (d / "dict.ltr.txt").write_text("\n".join(lines[1:2] + lines[:1] + lines[2:]) + "\n")
    return d


def text_pair(d, n=2000):
    src = d / "in.txt"
    src.write_text("\n".join((CORPUS / "unpaired.wrd").read_text().splitlines()[:n]) + "\n")
    assert cli(["phonemize", str(src), "--out-prefix", str(d / "lm")]) == 0
    return str(d / "lm.phn"), str(d / "lm.ltr")


def dicts():
    from fairseq.data import Dictionary

    return Dictionary.load(ULTR[0]), Dictionary.load(ULTR[1])


D = "decoding tied to the dictionary"
if FT:
    case(D, "infer, dict.ltr.txt reordered", lambda: cli(["infer", *DEC, f"common_eval.path={FT}",
                                                          f"task.data={reordered(copy_corpus())}",
                                                          "dataset.gen_subset=valid"]))

    def loader_reordered():
        from fairseq import checkpoint_utils

        checkpoint_utils.load_model_ensemble_and_task([str(FT)], arg_overrides={"data": str(reordered(copy_corpus()))})

    case(D, "fairseq loader (generate), reordered", loader_reordered)


def labels_dir(sep=" ", extra=""):
    d = copy_corpus()
    rows = (d / "test.tsv").read_text().splitlines()[1:]
    words = (d / "test.wrd").read_text().splitlines()
    (d / "text").write_text("".join(f"{Path(r.split(chr(9))[0]).stem}{sep}{w}{extra}\n" for r, w in zip(rows, words)))
    return d


dl1 = labels_dir()
before = (dl1 / "dict.ltr.txt").read_bytes()
case(D, "labels for test beside train's dict", lambda: cli(["labels", str(dl1 / "test.tsv"), "--transcripts",
                                                             str(dl1 / "text")]),
     unchanged(dl1 / "dict.ltr.txt", before), expect="ok")
dl2 = labels_dir(extra=" 42")
case(D, "labels, digit the dict cannot spell", lambda: cli(["labels", str(dl2 / "test.tsv"), "--transcripts",
                                                             str(dl2 / "text")]),
     unchanged(dl2 / "dict.ltr.txt", before))
dl3 = labels_dir()
(dl3 / "other.txt").write_text("".join(f"{c} 1\n" for c in "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
case(D, "labels, --dict differs from the one there", lambda: cli(["labels", str(dl3 / "test.tsv"), "--transcripts",
                                                                   str(dl3 / "text"), "--dict", str(dl3 / "other.txt")]),
     unchanged(dl3 / "dict.ltr.txt", before))
dl4 = labels_dir(sep="\t")
case(D, "labels, tab-separated transcripts", lambda: cli(["labels", str(dl4 / "test.tsv"), "--transcripts",
                                                           str(dl4 / "text"), "--dict-out", str(dl4 / "d.txt")]),
     lambda: None if (dl4 / "test.wrd").read_text() == (CORPUS / "test.wrd").read_text() else "wrong .wrd",
     expect="ok")

W = "interrupted / concurrent writes"
wd = WORK / "w"
wd.mkdir()
units, letters = text_pair(wd)


def killed_binarize():
    dest = wd / "bin1"
    assert cli(["binarize", "--units", units, "--letters", letters, "--unit-dict", ULTR[0], "--letter-dict", ULTR[1],
                "--dest", str(dest)]) == 0
    real, calls = os.replace, []

    def dying(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b)

    atomic.os.replace = dying
    try:
        from speechlm.tokenizers.binarize import binarize

        binarize(units, letters, *ULTR, str(dest))
    except KeyboardInterrupt:
        pass
    finally:
        atomic.os.replace = real
    load_text_dataset(str(dest), "train", "phn", *dicts())  # what pre-training does


case(W, "binarize killed while renaming, then load", killed_binarize, no_temps(wd / "bin1"))


def cut_bin():
    dest = wd / "bin2"
    assert cli(["binarize", "--units", units, "--letters", letters, "--unit-dict", ULTR[0], "--letter-dict", ULTR[1],
                "--dest", str(dest)]) == 0
    b = dest / "train.phn-ltr.ltr.bin"
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
    load_text_dataset(str(dest), "train", "phn", *dicts())


case(W, "binarized .bin cut short, then load", cut_bin)


def real_kill():
    dest = wd / "bin3"
    big = wd / "big"
    big.mkdir()
    for ext in ("phn", "ltr"):
        (big / f"x.{ext}").write_text(Path(units if ext == "phn" else letters).read_text() * 20)
    p = subprocess.Popen([sys.executable, "-m", "speechlm", "binarize", "--units", str(big / "x.phn"), "--letters",
                          str(big / "x.ltr"), "--unit-dict", ULTR[0], "--letter-dict", ULTR[1], "--dest", str(dest)],
                         env=ENV)
    import time

    for _ in range(1200):
        if (dest.exists() and any(x.name.startswith(".train") for x in dest.iterdir())) or p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    p.wait()
    load_text_dataset(str(dest), "train", "phn", *dicts())


case(W, "binarize SIGKILLed mid-run, then load", real_kill)
(wd / "e.phn").write_text("")
(wd / "e.ltr").write_text("")
case(W, "binarize of an empty text file", lambda: cli(["binarize", "--units", str(wd / "e.phn"), "--letters",
                                                       str(wd / "e.ltr"), "--unit-dict", ULTR[0], "--letter-dict",
                                                       ULTR[1], "--dest", str(wd / "bin4")]))
(wd / "d.phn").write_text("SIL AH SIL\n")
(wd / "d.ltr").write_text("A 1 |\n")
case(W, "binarize, digit outside dict.ltr.txt", lambda: cli(["binarize", "--units", str(wd / "d.phn"), "--letters",
                                                             str(wd / "d.ltr"), "--unit-dict", ULTR[0], "--letter-dict",
                                                             ULTR[1], "--dest", str(wd / "bin5")]))
shard_out = str(wd / "sh" / "lm")


def same_rank_while_locked():
    with shard_lock(shard_out + "_0_2"):
        p = subprocess.run([sys.executable, "-m", "speechlm", "phonemize", str(wd / "in.txt"), "--out-prefix",
                            shard_out, "--nshard", "2", "--rank", "0"], env=ENV, capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    return p.returncode


case(W, "second same-rank phonemize (locked)", same_rank_while_locked)


def concurrent_same_rank():
    ps = [subprocess.Popen([sys.executable, "-m", "speechlm", "phonemize", str(wd / "in.txt"), "--out-prefix",
                            shard_out, "--nshard", "2", "--rank", "0", "--seed", str(s)], env=ENV,
                           stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    errs = [p.communicate()[1] for p in ps]
    if any("Traceback" in e for e in errs):
        sys.stderr.write("".join(errs))
        return 1
    seed = json.loads(Path(shard_out + "_0_2.shard.json").read_text())["options"]["seed"]
    assert cli(["phonemize", str(wd / "in.txt"), "--out-prefix", shard_out, "--nshard", "2", "--rank", "1",
                "--seed", str(seed)]) == 0
    assert cli(["phonemize", "--merge", "--out-prefix", shard_out, "--nshard", "2"]) == 0
    ref = str(wd / "ref" / "lm")
    assert cli(["phonemize", str(wd / "in.txt"), "--out-prefix", ref, "--nshard", "2", "--rank", "0", "--seed",
                str(seed)]) == 0
    if Path(ref + "_0_2.phn").read_text() != Path(shard_out + "_0_2.phn").read_text():
        raise Corrupt("the surviving shard is not what its sidecar's seed produces")
    n = [len(Path(shard_out + f".{e}").read_text().splitlines()) for e in ("phn", "ltr")]
    if n[0] != n[1]:
        raise Corrupt(f"merged .phn/.ltr line counts {n}")


case(W, "two concurrent same-rank runs, merge", concurrent_same_rank, expect="ok")


def rewritten_shard():
    p = Path(shard_out + "_0_2.phn")
    p.write_text(p.read_text() + "SIL\n")
    return cli(["phonemize", "--merge", "--out-prefix", shard_out, "--nshard", "2"])


case(W, "shard rewritten after its sidecar, merge", rewritten_shard)


def uneven_shard():
    write_sidecar(shard_out + "_0_2", "phonemize", 0, 2, {}, {})
    return cli(["phonemize", "--merge", "--out-prefix", shard_out, "--nshard", "2"])


case(W, "shard .phn/.ltr lengths differ, merge", uneven_shard)

E = "disk full / read-only / not a dir"


def tmpfs(name, size, ro=False, fill=None):
    d = WORK / name
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True).returncode:
        return None
    mounts.append(d)
    if fill:
        fill(d)
    if ro:
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
    return d


def fill_up(d):
    """Leave 8 KiB free: every case's output is larger, so the disk is full for each of them."""
    st = os.statvfs(d)
    (d / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 8192))


mounts = []
full = tmpfs("full", "1m", fill=fill_up)
ro = tmpfs("ro", "4m", ro=True, fill=lambda d: [shutil.copyfile(CORPUS / f, d / f) for f in
                                                 ("test.tsv", "dict.ltr.txt")])
(WORK / "afile").write_text("x")
BIN_ARGS = ["--units", units, "--letters", letters, "--unit-dict", ULTR[0], "--letter-dict", ULTR[1]]
targets = [("not a dir", WORK / "afile")]
if full:
    targets.insert(0, ("disk full", full))
if ro:
    targets.insert(1, ("read-only", ro))
for what, base in targets:
    chk = no_temps(base) if base.is_dir() else None
    case(E, f"{what}: phonemize", lambda b=base: cli(["phonemize", str(wd / "in.txt"), "--out-prefix",
                                                      str(b / "p" / "lm")]), chk)
    case(E, f"{what}: binarize", lambda b=base: cli(["binarize", *BIN_ARGS, "--dest", str(b / "bin")]), chk)
    case(E, f"{what}: features dump", lambda b=base: cli(["features", "dump", str(CORPUS), "valid", str(b / "f")]),
         chk)
    case(E, f"{what}: manifest", lambda b=base: cli(["manifest", str(CORPUS / "audio"), "--dest", str(b / "m")]), chk)
    case(E, f"{what}: ngram", lambda b=base: cli(["ngram", str(wd / "in.txt"), "--out", str(b / "lm.arpa")]), chk)
    case(E, f"{what}: corpus mini", lambda b=base: cli(["corpus", "mini", str(b / "c"), "--hours", "0.002"]), chk)
    if FT:
        case(E, f"{what}: infer results_path", lambda b=base: cli(["infer", *DEC, f"common_eval.path={FT}",
                                                                    f"task.data={CORPUS}", "dataset.gen_subset=valid",
                                                                    f"common_eval.results_path={b / 'dec'}"]), chk)
if ro:
    dlr = labels_dir()
    case(E, "read-only: labels beside the manifest", lambda: cli(["labels", str(ro / "test.tsv"), "--transcripts",
                                                                   str(dlr / "text")]))


def ulimit_f():
    import resource

    p = subprocess.run([sys.executable, "-m", "speechlm", "phonemize", str(wd / "in.txt"), "--out-prefix",
                        str(WORK / "ul" / "lm")], env=ENV, capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)))
    sys.stderr.write(p.stderr)
    return p.returncode


case(E, "file size limit (ulimit -f): phonemize", ulimit_f, no_temps(WORK / "ul"))


def train(cfg_dir, name, *over, popen=False):
    cmd = ["fairseq-hydra-train", "--config-dir", cfg_dir, "--config-name", name, f"common.user_dir={REPO / 'speechlm'}",
           *over]
    if popen:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
    return p.returncode


PT = ["examples/mini/config/pretrain", "speechlm_tiny"]
if full:
    case(E, "disk full: training save_dir", lambda: train(*PT, f"task.data={CORPUS}", f"checkpoint.save_dir={full}/ck",
                                                          f"hydra.run.dir={WORK}/h_full", "optimization.max_update=1",
                                                          "dataset.disable_validation=true"), no_temps(full))
if ro:
    case(E, "read-only: training save_dir", lambda: train(*PT, f"task.data={CORPUS}", f"checkpoint.save_dir={ro}/ck",
                                                          f"hydra.run.dir={WORK}/h_ro", "optimization.max_update=1"))

N = "NaN / Inf in audio and weights"
os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"] = "1"


def nan_audio(value):
    def write(p, w, sr):
        w = w.copy()
        w[100] = value
        sf.write(p, w, sr, subtype="FLOAT")
    return write


case(N, "NaN samples (features dump)", lambda: cli(["features", "dump", str(with_audio(nan_audio(np.nan))),
                                                    "valid", str(WORK / "fn1")]))
case(N, "Inf samples (features dump)", lambda: cli(["features", "dump", str(with_audio(nan_audio(np.inf))),
                                                    "valid", str(WORK / "fn2")]))
case(N, "NaN samples (training read)", lambda: load(with_audio(nan_audio(np.nan)), fine_tuning=True))
if FT:
    case(N, "NaN samples (infer)", lambda: cli(["infer", *DEC, f"common_eval.path={FT}",
                                                f"task.data={with_audio(nan_audio(np.nan))}", "dataset.gen_subset=valid"]))
del os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"]
OFF = ["--dict-ltr", str(FIX / "dict.ltr.txt"), "--dict-phn", str(FIX / "dict.phn.txt")]


def bad_weights(fill):
    st = torch.load(FIX / "pretrained_base.pt", weights_only=False)
    for k, v in st["model"].items():
        if v.is_floating_point():
            fill(k, v)
    p = WORK / f"w{n_case[0]}.pt"
    n_case[0] += 1
    torch.save(st, p)
    return p


nan_ck = bad_weights(lambda k, v: v.fill_(float("nan")))
case(N, "convert of an all-NaN checkpoint", lambda: cli(["convert", str(nan_ck), str(WORK / "nan_out.pt"), *OFF]),
     lambda: "written" if (WORK / "nan_out.pt").exists() else None)
first = []
inf_ck = bad_weights(lambda k, v: first or (first.append(k) or v.view(-1).__setitem__(0, float("inf"))))
case(N, "convert, one Inf weight", lambda: cli(["convert", str(inf_ck), str(WORK / "inf_out.pt"), *OFF]))

C = "convert arguments"
rel = WORK / "released.pt"
shutil.copyfile(FIX / "pretrained_base.pt", rel)
rb = rel.read_bytes()
case(C, "convert SRC SRC", lambda: cli(["convert", str(rel), str(rel), *OFF]), unchanged(rel, rb))
(WORK / "rel_link.pt").symlink_to(rel)
case(C, "convert SRC LINK-TO-SRC", lambda: cli(["convert", str(rel), str(WORK / "rel_link.pt"), *OFF]),
     unchanged(rel, rb))
(WORK / "mine.pt").write_bytes(b"other work")
case(C, "convert onto an existing DST", lambda: cli(["convert", str(rel), str(WORK / "mine.pt"), *OFF]),
     unchanged(WORK / "mine.pt", b"other work"))
case(C, "convert, DST is a directory", lambda: cli(["convert", str(rel), str(WORK), *OFF]))
case(C, "convert --overwrite", lambda: cli(["convert", str(rel), str(WORK / "mine.pt"), *OFF, "--overwrite"]),
     expect="ok")

R = "changed config / old version"
old = torch.load(CKPT, weights_only=False)
old["cfg"]["model"]["dropout_features"] = 0.1
old.pop("speechlm_version", None)
torch.save(old, WORK / "old.pt")
case(R, "old-version ckpt (features dump)", lambda: cli(["features", "dump", str(CORPUS), "valid", str(WORK / "fo"),
                                                         "--checkpoint", str(WORK / "old.pt"), "--layer", "1"]))
case(R, "old-version ckpt (model.w2v_path)", lambda: read_pretrained(str(WORK / "old.pt")))
TEXT = Path(os.environ["PROBE_TEXT_DATA"]) if os.environ.get("PROBE_TEXT_DATA") else None  # PRETRAINED's text_data
text_over = [f"task.text_data={TEXT}"] if TEXT else []


def resume_changed(*over, data=CORPUS, text=None):
    save = WORK / f"resume{n_case[0]}"
    n_case[0] += 1
    save.mkdir()
    shutil.copyfile(CKPT, save / "checkpoint_last.pt")
    return train(*PT, f"task.data={data}", f"checkpoint.save_dir={save}", f"hydra.run.dir={save}/h",
                 *(text if text is not None else text_over), "optimization.max_update=100000", *over)


case(R, "resume with another model size", lambda: resume_changed("model.shared_encoder_layers=3"))
if text_over:
    tb = WORK / "text_bin_reordered"
    shutil.copytree(TEXT, tb)
    reordered(tb)
    case(R, "resume with a reordered dict.ltr.txt", lambda: resume_changed(
        data=reordered(copy_corpus()), text=[f"task.text_data={tb}"]))

P = "preemption"


def sigterm_resume():
    save = WORK / "pre"
    over = [f"task.data={CORPUS}", f"checkpoint.save_dir={save}", f"hydra.run.dir={save}/h",
            "dataset.disable_validation=true", "common.log_interval=1", "checkpoint.save_interval_updates=0"]
    p = train(*PT, *over, "optimization.max_update=100000", popen=True)
    out = []
    for line in p.stdout:
        out.append(line)
        m = re.search(r"num_updates=(\d+)", line)
        if m and int(m.group(1)) >= 3:
            p.send_signal(signal.SIGTERM)
            break
    out += p.stdout.readlines()
    rc = p.wait()
    log = "".join(out)
    m = re.search(r"checkpoint_last.pt at update (\d+) and stopping", log)
    if rc != 143 or not m or "Traceback" in log:
        sys.stderr.write(log[-3000:])
        raise Corrupt(f"exit {rc}, nothing saved" if not m else f"exit {rc}")
    n = int(m.group(1))
    if torch.load(save / "checkpoint_last.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] != n:
        raise Corrupt("checkpoint_last.pt is not at the update the log names")
    res = subprocess.run(["fairseq-hydra-train", "--config-dir", PT[0], "--config-name", PT[1],
                          f"common.user_dir={REPO / 'speechlm'}", *over, f"optimization.max_update={n + 1}"],
                         capture_output=True, text=True, env=ENV)
    if f"@ {n} updates)" not in res.stdout + res.stderr:
        raise Corrupt("the resumed run did not start at the saved update")


case(P, "SIGTERM in training, then resume", sigterm_resume, expect="ok")
for d in reversed(mounts):
    subprocess.run(["umount", "-l", str(d)], capture_output=True)

print()
from collections import Counter  # noqa: E402

by = Counter((c, k) for c, _, k, _ in results)
print(f"{'class':34} {'cases':>5} {'clean/ok':>8} {'silent':>6} {'corrupt':>7} {'traceback':>9}")
for c in dict.fromkeys(c for c, _, _, _ in results):
    n = sum(by[(c, k)] for k in ("clean", "ok", "silent", "corrupt", "raw"))
    print(f"{c:34} {n:5} {by[(c, 'clean')] + by[(c, 'ok')]:8} {by[(c, 'silent')]:6} {by[(c, 'corrupt')]:7} "
          f"{by[(c, 'raw')]:9}")
tot = Counter(k for _, _, k, _ in results)
print(f"{'total':34} {len(results):5} {tot['clean'] + tot['ok']:8} {tot['silent']:6} {tot['corrupt']:7} {tot['raw']:9}")
