"""The recipes stay thin: no Python inside the shell scripts of examples/ (a stage calls a `speechlm` verb or a
small Python entry point). (No function over 120 lines in examples/: tests/test_architecture.py.)"""
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# a Python interpreter ("$PY", ${PY}, python3, .venv/bin/python) given code on its command line (-c) or on
# its standard input (-, or a heredoc)
_PYTHON = r'(?:"\$\{?PY\}?"|\$\{?PY\}?|(?<![\w-])[\w./-]*python[0-9.]*)'
INLINE_PYTHON = re.compile(_PYTHON + r"""(?:\s+(?:-c\b|-(?=\s|$))|[^#]*<<)""")


def inline_python(text: str):
    """Line numbers of ``text`` (a shell script) that hand Python its code inline."""
    return [n for n, line in enumerate(text.splitlines(), 1)
            if INLINE_PYTHON.search(line.split(" #")[0]) and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("line, inline", [
    ('best=$("$PY" -c \'import csv, sys', True),
    ('"$PY" - "$out" <<\'EOF\'', True),
    ('python3 -c "print(1)"', True),
    ('  .venv/bin/python - <<EOF', True),
    ('"${PY}" -c "import torch"', True),
    ('cat > x <<EOF', False),
    ('"$PY" -m speechlm infer --config-dir x', False),
    ('"$PY" "$REPO/scripts/mini_summary.py" --exp "$exp"', False),
    ('speechlm phone-units label "$corpus" train --phone-lm lm -c', False),
    ('# "$PY" -c was here once', False),
])
def test_the_detector_sees_inline_python(line, inline):
    assert bool(inline_python(line)) is inline


def test_no_inline_python_in_the_recipe_scripts():
    scripts = sorted(EXAMPLES.rglob("*.sh"))
    assert len(scripts) >= 5  # mini/run.sh, mini/hidden_units.sh, librispeech, tokenizers, common/recipe.sh
    bad = [f"{p.relative_to(EXAMPLES.parent)}:{n}" for p in scripts for n in inline_python(p.read_text())]
    assert not bad, "Python inside shell (make it a speechlm verb or an entry point):\n" + "\n".join(bad)
