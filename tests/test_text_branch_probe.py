"""scripts/text_branch_probe.py: the text branch of the tiny config trained alone on binarized text."""
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import text_branch_probe  # noqa: E402
from test_pretrain import write_text_dir  # noqa: E402


def _rows(out: str):
    return [tuple(float(x) for x in m) for m in
            re.findall(r"update (\d+) sentences \d+ train_ctc ([\d.]+) valid_letter_error ([\d.]+) %", out)]


@pytest.mark.slow
def test_the_text_branch_alone_learns_letters_from_units(mini_corpus, tmp_path, capsys):
    text = write_text_dir(mini_corpus, tmp_path / "text_bin")
    assert text_branch_probe.main(["--text", str(text), "--frames", "2000", "--updates", "60",
                                   "--log-every", "20", "--mask", "0"]) == 0
    out = capsys.readouterr().out
    assert "text mask p=0.0" in out
    rows = _rows(out)
    assert [r[0] for r in rows] == [20, 40, 60]
    assert rows[-1][1] < rows[0][1], rows  # the CTC loss goes down
    assert all(0.0 <= r[2] <= 100.0 for r in rows)
    branch, whole = map(int, re.search(r"\): (\d+) parameters \(of (\d+) in the model\)", out).groups())
    assert 100_000 < branch < whole  # the branch only, not the speech front end and Speech Transformer


def test_a_missing_text_dir_is_named(tmp_path):
    (tmp_path / "dict.phn.txt").write_text("AA 1\n")
    (tmp_path / "dict.ltr.txt").write_text("A 1\n")
    with pytest.raises(FileNotFoundError, match=r"train\.phn-ltr"):
        text_branch_probe.main(["--text", str(tmp_path), "--updates", "1"])
