"""Every command of README.md that is marked runnable runs as written, on the mini corpus.

Convention: an HTML comment line ``<!-- runnable -->`` directly above a ```` ```bash ```` fence marks that
block (the comment does not show on GitHub). Each marked block runs with ``bash -euo pipefail`` in the
repository root, the package's virtualenv first on ``PATH`` and the repository on ``PYTHONPATH``, and must
exit 0. Two placeholders are substituted first (whole words only):

- ``CORPUS``: the session's mini corpus (``tests/conftest.py`` ``mini_corpus``: manifests, labels and
  dictionaries of ``speechlm corpus mini``, 0.06 h);
- ``EXP``: a fresh empty directory for the block's outputs.

Blocks that need more than the mini corpus (the full recipes, LibriSpeech, a GPU) stay unmarked. The
README read is ``README.md`` at the repository root, or the file ``SPEECHLM_README`` names.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
PLACEHOLDERS = ("CORPUS", "EXP")


def readme_path() -> Path:
    return Path(os.environ.get("SPEECHLM_README") or REPO / "README.md")


def runnable_blocks(text: str):
    """``(line number of the fence, code)`` of every ```bash block directly below a runnable marker."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
            raise AssertionError(f"{readme_path()}:{i + 1}: {MARKER} must stand directly above a ```bash fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{readme_path()}:{i + 2}: the ```bash block is never closed")
        blocks.append((i + 2, "\n".join(lines[i + 2: end]) + "\n"))
    return blocks


def substitute(code: str, corpus: Path, exp: Path) -> str:
    values = {"CORPUS": str(corpus), "EXP": str(exp)}
    return re.sub(r"\b(" + "|".join(PLACEHOLDERS) + r")\b", lambda m: values[m.group(1)], code)


def test_marker_and_placeholders_are_read_as_documented():
    text = "x\n<!-- runnable -->\n```bash\nspeechlm corpus mini --out EXP/c CORPUS_NOT EXPX\n```\n```bash\nno\n```\n"
    (line, code), = runnable_blocks(text)
    assert line == 3 and substitute(code, Path("/c"), Path("/e")) == "speechlm corpus mini --out /e/c CORPUS_NOT EXPX\n"


@pytest.mark.slow
def test_readme_runnable_blocks(mini_corpus, tmp_path):
    readme = readme_path()
    blocks = runnable_blocks(readme.read_text(encoding="utf-8"))
    assert blocks, (f"{readme}: no block is marked runnable; put a line {MARKER} directly above each ```bash "
                    "block that runs on the mini corpus (placeholders CORPUS and EXP, see tests/test_readme.py)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for line, code in blocks:
        exp = tmp_path / f"block_line{line}"
        exp.mkdir()
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", substitute(code, mini_corpus, exp)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=3600)
        assert res.returncode == 0, (f"{readme}:{line}: the block exits {res.returncode}:\n{code}\n"
                                     f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}")
