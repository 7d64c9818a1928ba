#!/usr/bin/env bash
# One-time, idempotent set-up: system packages (when root), .venv, torch, fairseq, speechlm.
# Safe to run again: each step checks whether it is already done and is skipped if so.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_VERSION="${SPEECHLM_TORCH_VERSION:-2.13.0}"
FAIRSEQ_SPEC="fairseq-fixed==0.12.3.1"
APT_PACKAGES=(espeak-ng flite bible-kjv sox)
# a one-node Slurm cluster on this machine: scripts/slurm_local.sh and tests/test_slurm_local.py
SLURM_APT_PACKAGES=(slurm-wlm munge)
log() { echo "[setup] $*"; }

# 1. System packages: the embedded corpus's synthesizers and book text; Slurm and munge.
apt_updated=false
apt_install() {  # apt_install PURPOSE PACKAGE...
  local purpose=$1 p
  shift
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    $apt_updated || DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] WARNING: missing Debian packages: ${missing[*]}" >&2
    echo "[setup] Install them as root: sudo apt-get install ${missing[*]}" >&2
    echo "[setup] (needed $purpose)" >&2
  fi
}
apt_install "only to synthesize the embedded mini corpus" "${APT_PACKAGES[@]}"
apt_install "only for scripts/slurm_local.sh; tests/test_slurm_local.py is skipped without them" \
  "${SLURM_APT_PACKAGES[@]}"

# 2. The virtual environment. An already installed torch >= 2.1 (e.g. a CUDA build on a GPU box)
#    is kept by letting the venv see the system site-packages.
if [ ! -x "$PY" ]; then
  BASE_PY="${PYTHON:-python3}"
  if "$BASE_PY" -c 'import sys,torch; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v>=(2,1) else 1)' 2>/dev/null; then
    log "keeping the installed torch: venv with --system-site-packages"
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
  fi
  "$PY" -m pip install -q --upgrade pip setuptools wheel
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check)

# 3. torch: pinned CPU build here; never let pip resolve a bare 'torch' (that pulls GBs of CUDA wheels).
if ! "$PY" -c 'import torch' 2>/dev/null; then
  log "pip install torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi

# 4. fairseq: the 3.11-compatible fork, without its torchaudio requirement, then its real needs.
if ! "$PY" -c 'import fairseq' 2>/dev/null; then
  log "installing fairseq runtime needs"
  "${PIP[@]}" "hydra-core==1.3.2" "omegaconf==2.3.0" bitarray regex sacrebleu cython cffi \
    scikit-learn packaging tqdm numpy
  log "building $FAIRSEQ_SPEC (takes a few minutes, once)"
  "${PIP[@]}" --no-deps --no-build-isolation "$FAIRSEQ_SPEC"
fi

# 5. speechlm itself, editable, with its dependencies and the test extras (ruff, tensorboardX, ...).
#    Re-run when setup.py changed or a declared tool is missing.
stamp="$VENV/.speechlm-installed"
if [ ! -f "$stamp" ] || [ "$REPO/setup.py" -nt "$stamp" ] || [ ! -x "$VENV/bin/ruff" ] \
   || ! "$PY" -c 'import tensorboardX' 2>/dev/null; then
  log "pip install -e .[test]"
  # --no-deps first so pip never re-resolves torch/fairseq, then the declared deps minus those two.
  "${PIP[@]}" --no-deps --no-build-isolation -e "$REPO"
  deps=$("$PY" - "$REPO" <<'PYEOF'
import ast, sys, pathlib
src = pathlib.Path(sys.argv[1], "setup.py").read_text()
tree = ast.parse(src)
reqs = []
for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("INSTALL_REQUIRES", "TEST_REQUIRES"):
        reqs += ast.literal_eval(node.value)
print("\n".join(r for r in reqs if not r.startswith(("torch", "fairseq"))))
PYEOF
)
  # shellcheck disable=SC2086
  "${PIP[@]}" $deps
  touch "$stamp"
fi

# 6. KenLM decoding (pyctcdecode + kenlm, setup.py LM_REQUIRES): --no-deps, because pyctcdecode's numpy<2
#    pin would downgrade numpy under torch; kenlm compiles from source once (a few minutes).
if ! "$PY" -c 'import kenlm, pyctcdecode, hypothesis' 2>/dev/null; then
  lm_deps=$("$PY" -c 'import ast,sys; t=ast.parse(open(sys.argv[1]).read()); print(" ".join(r for n in ast.walk(t) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "LM_REQUIRES" for r in ast.literal_eval(n.value)))' "$REPO/setup.py")
  log "pip install --no-deps $lm_deps (kenlm builds from source)"
  # shellcheck disable=SC2086
  "${PIP[@]}" --no-deps $lm_deps
fi
# 7. s3prl's upstream interfaces for speechlm.s3prl (setup.py S3PRL_REQUIRES): --no-deps, because s3prl 0.4.18
#    requires torchaudio, which has no build for this torch (UpstreamBase and Featurizer need only torch).
if ! "$PY" -c 'import s3prl.upstream.interfaces' 2>/dev/null; then
  s3prl_deps=$("$PY" -c 'import ast,sys; t=ast.parse(open(sys.argv[1]).read()); print(" ".join(r for n in ast.walk(t) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "S3PRL_REQUIRES" for r in ast.literal_eval(n.value)))' "$REPO/setup.py")
  log "pip install --no-deps $s3prl_deps"
  # shellcheck disable=SC2086
  "${PIP[@]}" --no-deps $s3prl_deps
fi
log "ready: $VENV"
