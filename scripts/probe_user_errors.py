"""Bad input, as a new user would give it: does each case end as a clean error? (issue 13's probe categories)

Each case corrupts a copy of a corpus's text files (the audio is shared, never modified) or a checkpoint,
calls the user-facing entry (a `speechlm` verb in-process, a task's dataset load as training does, a
model loader, or `fairseq-hydra-train`) and is classified:
  clean   a UserError (printed without a traceback by every entry) or exit 1 with a message, no traceback
  raw     another exception (a traceback at the entry)
  silent  no error at all

    python scripts/probe_user_errors.py CORPUS PRETRAINED.pt WORKDIR [FINETUNED.pt]

CORPUS: a `speechlm corpus mini` directory; PRETRAINED.pt: a `speechlm` checkpoint; FINETUNED.pt (optional):
a `speechlm_ctc` one, for the infer and training-entry cases. Run from the repository root."""
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


def case(category, name, fn):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = fn()
        if rc is None or rc == 0:
            kind, msg = "silent", ""
        else:
            e = err.getvalue()
            kind = "clean" if "Traceback" not in e else "raw"
            msg = e.strip().splitlines()[-1] if e.strip() else f"exit {rc}"
    except UserError as e:
        kind, msg = "clean", str(e)
    except SystemExit as e:
        kind, msg = ("clean", str(e.code)) if isinstance(e.code, str) else ("raw", f"exit {e.code}")
    except Exception as e:  # noqa: BLE001
        kind, msg = "raw", f"{type(e).__name__}: {e}\n" + traceback.format_exc().splitlines()[-3]
    results.append((category, name, kind, msg[:200]))
    print(f"[{kind:6}] {category:18} {name:38} {msg[:150]}", flush=True)


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

print()
from collections import Counter  # noqa: E402

by = Counter((c, k) for c, _, k, _ in results)
for c in dict.fromkeys(c for c, _, _, _ in results):
    print(f"{c:20} clean {by[(c, 'clean')]:3}  raw {by[(c, 'raw')]:3}  silent {by[(c, 'silent')]:3}")
print("total", len(results), "clean", sum(k == "clean" for _, _, k, _ in results))
