"""Shared pytest fixtures.

``mini_corpus``: the embedded synthesized corpus (``speechlm corpus mini``), built once per test
session into a temporary directory: about 4 minutes of 16 kHz audio from 10 training voices plus 2
held-out ones, every split non-empty (train, train_paired, valid, test, test_other), with true
frame-level phone labels (.phn at 50 Hz, .phn100 at 100 Hz), words, letters, speakers, dictionaries
and ``unpaired.wrd``. See manifests/README.md for the formats. Treat it as read-only: other tests
share it (copy it with ``shutil.copytree`` before corrupting anything).
"""
import os
from pathlib import Path

import pytest

MINI_CORPUS_HOURS = 0.06  # ~3.5 min of audio, ~55 utterances; builds in ~30 s on 2 cores
MINI_CORPUS_SEED = 1


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    from speechlm.corpora.mini import build_mini_corpus

    out = tmp_path_factory.mktemp("mini_corpus")
    build_mini_corpus(
        out, hours=MINI_CORPUS_HOURS, seed=MINI_CORPUS_SEED, jobs=os.cpu_count(), verbose=False
    )
    return Path(out)
