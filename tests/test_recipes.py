"""The recipes' shared pieces: examples/common/recipe.sh (options, timing, jobs) and its Python half
examples/common/recipe.py, the small entry points the recipe scripts call instead of inline Python
(scripts/mini_summary.py meta / tokenizer / hidden-units, `speechlm features check`), and the step graph of
examples/splat/run_variants.py. Fast: no training; the recipes themselves run in test_demo.py,
test_mini_hidden_units.py and test_librispeech_recipe.py."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechlm.cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[1]
RECIPE_SH = REPO / "examples/common/recipe.sh"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load("recipe", REPO / "examples/common/recipe.py")
sys.path.insert(0, str(REPO / "scripts"))
import mini_summary  # noqa: E402


def bash(script: str, *args, cwd=None):
    """Run ``script`` after sourcing recipe.sh (as a recipe does), with the test's Python as $PY."""
    code = f'set -euo pipefail\nsource "{RECIPE_SH}"\n{script}'
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", "-c", code, "recipe-test", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_parse_options_sets_the_variables_the_script_declared():
    r = bash('stage=0; stop_stage=7; full=false; seeds=""; pretrain_updates=""\n'
             'parse_options "$@"\n'
             'echo "$stage|$stop_stage|$full|$seeds|$pretrain_updates|${positional[*]}"',
             "--stage", "3", "--full", "--seeds", "1 2", "corpus", "--pretrain-updates=6", "out", "--stop-stage", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3|5|true|1 2|6|corpus out"
    r = bash('full=true\nparse_options "$@"\necho "$full"', "--full", "false")
    assert r.stdout.strip() == "false"


@pytest.mark.parametrize("args, message", [
    (["--bogus", "1"], "unknown option --bogus (see --help)"),
    (["--PATH", "x"], "unknown option --PATH"),  # only the script's lower-case variables
    (["--stage"], "--stage needs a value"),
])
def test_parse_options_refuses_what_the_script_did_not_declare(args, message):
    r = bash('stage=0\nparse_options "$@"\necho parsed', *args)
    assert r.returncode == 2 and message in r.stderr and "parsed" not in r.stdout, r.stderr


def test_expect_positional_and_help(tmp_path):
    r = bash('parse_options "$@"\nexpect_positional 2\necho ok', "a")
    assert r.returncode == 2 and "expected 2 argument(s) besides the options, got 1" in r.stderr
    script = tmp_path / "run.sh"
    script.write_text(f'#!/usr/bin/env bash\n# The demo.\n#   bash run.sh [--stage N]\nset -e\n'
                      f'source "{RECIPE_SH}"\nstage=0\nparse_options "$@"\necho ran\n')
    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "The demo.\n  bash run.sh [--stage N]\n"
    for recipe_script in ("mini/run.sh", "mini/hidden_units.sh", "librispeech/run.sh", "tokenizers/run.sh"):
        r = subprocess.run(["bash", str(REPO / "examples" / recipe_script), "--help"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "bash examples/" + recipe_script in r.stdout, (recipe_script, r.stderr)


def test_timed_records_seconds_or_shows_the_failure(tmp_path):
    r = bash('timed "$1/step" bash -c "echo out; echo err >&2"', str(tmp_path))
    assert r.returncode == 0 and r.stdout == ""
    assert (tmp_path / "step.log").read_text() == "out\nerr\n"
    t = json.loads((tmp_path / "time.step").read_text())
    assert set(t) == {"wall", "user", "sys"} and t["wall"] >= 0
    assert mini_summary.read_time([str(tmp_path / "time.step")])["cpu"] >= 0
    r = bash('timed "$1/bad" bash -c "echo why; exit 3" || echo "rc=$?"', str(tmp_path))
    assert "FAILED: bash -c echo why; exit 3" in r.stdout and "why" in r.stdout and "rc=1" in r.stdout
    assert not (tmp_path / "time.bad").exists() and not (tmp_path / "time.bad.tmp").exists()
    # TIMES_TSV: the output stays on the console, one line per call is appended whatever the outcome
    r = bash('TIMES_TSV="$1/cpu.tsv"\ntimed one bash -c "echo out; echo err >&2"\n'
             'timed two bash -c "exit 4" || echo "rc=$?"', str(tmp_path))
    assert r.stdout == "out\nrc=4\n" and r.stderr == "err\n"
    rows = [line.split("\t") for line in (tmp_path / "cpu.tsv").read_text().splitlines()]
    assert [row[0] for row in rows] == ["one", "two"] and all(len(row) == 4 for row in rows)
    assert all(float(x) >= 0 for row in rows for x in row[1:])


def test_spawn_runs_jobs_at_a_time_and_run_shards_appends_the_ranks(tmp_path):
    r = bash('jobs=2\nfor i in 1 2 3; do spawn bash -c "sleep 0.3; echo $i >> $1/order"; done\n'
             'wait_all && echo all-ok\nspawn bash -c "exit 1"\nwait_all || echo one-failed', str(tmp_path))
    assert r.stdout.split() == ["all-ok", "one-failed"], r.stderr
    assert sorted((tmp_path / "order").read_text().split()) == ["1", "2", "3"]
    r = bash('run_shards 3 echo shard\nrun_shards 2 bash -c \'[ "$4" = 0 ]\' x || echo failed')
    assert sorted(r.stdout.splitlines()) == sorted(["shard --nshard 3 --rank 0", "shard --nshard 3 --rank 1",
                                                    "shard --nshard 3 --rank 2", "failed"]), r.stderr


def test_await_returns_on_the_marker_or_the_failure(tmp_path):
    (tmp_path / "failed").touch()
    r = bash('await "$1/done" "$1/failed" && echo done || echo failed', str(tmp_path))
    assert r.stdout.strip() == "failed"
    (tmp_path / "done").touch()
    r = bash('await "$1/done" "$1/failed" && echo done || echo failed', str(tmp_path))
    assert r.stdout.strip() == "done"


def test_stage_times_count_the_children_cpu_seconds(tmp_path):
    burn = f'"{sys.executable}" -c "import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"'
    r = bash(f'exp="$1"\nstage_begin\n{burn}\nstage_end 2\nstage_begin\nstage_end 3', str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in (tmp_path / "stage_times.tsv").read_text().splitlines()]
    assert [row[0] for row in rows] == ["2", "3"]
    assert float(rows[0][2]) >= 0.3 and float(rows[1][2]) < 0.3  # the second stage ran nothing of its own


def test_parse_times_reads_bash_times_and_names_bad_input():
    assert recipe.parse_times("0m0.010s 0m0.002s\n1m2.500s 0m0.500s\n") == (62.5, 0.5)
    with pytest.raises(ValueError, match=r"f:2: expected 'XmY.YYYs XmY.YYYs', got '1:02 0:00'"):
        recipe.parse_times("0m0s 0m0s\n1:02 0:00\n", "f")
    with pytest.raises(ValueError, match="expected the two lines"):
        recipe.parse_times("0m0s 0m0s\n", "f")


def test_config_value_and_phone_dict(tmp_path, capsys):
    cfg = REPO / "examples/mini/config/pretrain/speechlm_tiny.yaml"
    assert recipe.main(["config-value", str(cfg), "model.speech_encoder_layers"]) == 0
    layers = int(capsys.readouterr().out)
    assert 1 <= layers <= 12
    assert recipe.main(["config-value", str(cfg), "model.no_such_key"]) == 1
    assert "no 'model.no_such_key' (missing 'no_such_key')" in capsys.readouterr().err
    from speechlm.tokenizers.lexicon import PHONES

    assert recipe.main(["phone-dict", str(tmp_path / "dict.phn.txt")]) == 0
    assert (tmp_path / "dict.phn.txt").read_text().splitlines() == [f"{p} 1" for p in PHONES]


def test_mini_summary_meta_is_what_collect_reads(tmp_path):
    assert mini_summary.main(["meta", "--exp", str(tmp_path), "--run", "P.s2", "--name", "SpeechLM-P",
                              "--seed", "2", "--order", "3", "--pretrain-updates", "6"]) == 0
    assert mini_summary.main(["meta", "--exp", str(tmp_path), "--run", "Z.s2", "--name", "zero-shot", "--seed", "2",
                              "--order", "4", "--pretrain-updates", "6", "--time-from", "runs/P.s2/time.pretrain"]) == 0
    assert mini_summary.main(["meta", "--exp", str(tmp_path), "--run", "R.s2", "--name", "random", "--seed", "2",
                              "--order", "1", "--pretrain-updates", "0"]) == 0
    meta = {r: json.loads((tmp_path / "runs" / r / "meta.json").read_text()) for r in ("P.s2", "Z.s2", "R.s2")}
    assert meta["P.s2"] == {"name": "SpeechLM-P", "seed": 2, "order": 3, "pretrain_updates": 6,
                            "tensorboard": "runs/P.s2/tb/pretrain", "decode": "runs/P.s2/decode", "time_from": []}
    assert meta["Z.s2"]["tensorboard"] is None and meta["Z.s2"]["time_from"] == ["runs/P.s2/time.pretrain"]
    assert meta["R.s2"]["tensorboard"] is None and meta["R.s2"]["time_from"] == []


def test_mini_summary_tokenizer_and_hidden_units(tmp_path, capsys):
    (tmp_path / "units").mkdir()
    (tmp_path / "units/score.train.json").write_text(json.dumps({"frame_accuracy": 0.8125, "phone_error_rate": 0.25}))
    assert mini_summary.main(["tokenizer", "--exp", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ("  phone-units tokenizer (trained on train_paired) on `train` speech, against "
                                       "the true alignments: frame accuracy 81.2 %, PER 25.0 %\n")
    out = tmp_path / "hidden"
    for d in ("km", "logs", "t2u_data"):
        (out / d).mkdir(parents=True)
    (out / "km/score.valid.json").write_text(json.dumps({"phone_purity": 0.5, "pnmi": 0.25, "k": 16}))
    (out / "t2u_data/valid.km").write_text("1 1 1 2\n1 3\n")
    (out / "logs/t2u_train.log").write_text(  # fairseq-hydra-train's format
        '[2026-12-07 21:00:01,000][valid][INFO] - {"epoch": 1, "valid_unit_accuracy": "41.5", "valid_loss": "3"}\n'
        '[2026-12-07 21:00:02,000][train][INFO] - {"epoch": 1, "train_unit_accuracy": "99"}\n'
        '[2026-12-07 21:00:03,000][valid][INFO] - {"epoch": 2, "valid_unit_accuracy": "47.25"}\n'
        '[2026-12-07 21:00:04,000][valid][INFO] - {"epoch": 3, "valid_unit_accuracy": "44.0"}\n'
        '[2026-12-07 21:00:05,000][valid][INFO] - {"epoch": 4, "valid_unit_acc')  # cut short: the run was stopped
    (out / "logs/time.kmeans_learn").write_text('{"wall": 2.5, "user": 1.25, "sys": 0.25}\n')
    assert mini_summary.best_valid(str(out / "logs/t2u_train.log"), "valid_unit_accuracy") == 47.25
    assert mini_summary.best_valid(str(out / "logs/none.log"), "valid_unit_accuracy") is None
    assert mini_summary.main(["hidden-units", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  k-means units on valid vs the true phones: phone_purity 0.500, pnmi 0.250"
    assert lines[1] == "  t2u on valid: unit accuracy 47.2 % (best validation; the most frequent unit: 66.7 %)"
    assert lines[3].split() == ["kmeans_learn", "2.5", "1.5"]


def _features_sidecar(feat, split, checkpoint, layer, rate, manifest):
    from speechlm.tokenizers.shards import write_sidecar

    feat.mkdir(parents=True, exist_ok=True)
    write_sidecar(str(feat / f"{split}_0_1"), "features dump", 0, 1,
                  {"manifest": str(manifest), "checkpoint": checkpoint}, {"layer": layer, "rate": rate})


def test_features_check_refuses_a_dir_holding_other_features(tmp_path, capsys):
    ckpt, other, corpus = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "corpus"
    ckpt.write_bytes(b"a" * 1000)
    other.write_bytes(b"b" * 1000)
    corpus.mkdir()
    (corpus / "valid.tsv").write_text(f"{tmp_path}\nx.wav\t16000\n")  # never read: the refusal comes first
    feat = tmp_path / "feat"
    assert cli_main(["features", "check", str(feat)]) == 0  # nothing there yet
    _features_sidecar(feat, "train", str(ckpt), 1, None, corpus / "valid.tsv")
    assert cli_main(["features", "check", str(feat), "--checkpoint", str(ckpt), "--layer", "1"]) == 0
    for argv, want in (([], "MFCC"), (["--checkpoint", str(ckpt), "--layer", "2"], "layer 2 of a checkpoint"),
                       (["--checkpoint", str(other), "--layer", "1"], "layer 1 of a checkpoint")):
        capsys.readouterr()
        assert cli_main(["features", "check", str(feat), *argv]) == 1
        err = capsys.readouterr().err
        assert (f"speechlm features: error: {feat}/train_0_1.shard.json holds the features of layer 1 of a "
                f"checkpoint (sha1 ") in err and f"this call asks for those of {want}" in err, err
        assert f"delete {feat} and what was made from those features" in err
    # a dump into that directory is refused before it reads any audio; MFCC features of any split pass MFCC
    assert cli_main(["features", "dump", str(corpus), "valid", str(feat)]) == 1
    assert not (feat / "valid_0_1.npy").exists()
    mfcc = tmp_path / "mfcc"
    _features_sidecar(mfcc, "valid", None, None, 50, corpus / "valid.tsv")
    assert cli_main(["features", "check", str(mfcc)]) == 0
    assert cli_main(["features", "check", str(mfcc), "--rate", "100"]) == 1
    assert "holds the features of MFCC, this call asks for those of MFCC at 100 Hz" in capsys.readouterr().err


def test_run_variants_step_graph():
    """The SPLAT comparison's steps: per seed one pre-training, one MLM adaptation, one alignment per aligned
    variant; per seed, variant and fraction an intent and a QA step waiting for the model they start from."""
    sys.path.insert(0, str(REPO / "examples/splat"))
    rv = _load("run_variants", REPO / "examples/splat/run_variants.py")
    args = rv.parse_args(["--corpus", "/c", "--seeds", "2", "--fractions", "1.0", "0.1"])
    g = rv.build_graph(args, "/w", "/c")
    by_name = {s.name: s for s in g.steps}
    assert len(by_name) == len(g.steps)
    aligned = [v for v, c in g.variants.items() if c.pretrain and c.alignment is not None]
    assert sorted(aligned) == ["seq", "seq_mlm", "tok", "tok_mlm"]
    n_prep = 3  # features (the corpus has none at /c), intent and QA corpora
    assert len(g.steps) == n_prep + 2 * (2 + len(aligned)) + 2 * len(g.variants) * 2 * 2
    assert [s.name for s in by_name["align_seq_mlm_s2"].after] == ["speech_s2", "adapt_bert_s2"]
    assert by_name["speech_s1"].after == [by_name["features"]]
    assert "task.bert_path=/w/bert_mlm_s1" in by_name["align_tok_mlm_s1"].cmd
    intent = by_name["intent_seq_10pct_s2"]
    assert [s.name for s in intent.after] == ["align_seq_s2", "slu-corpus", "qa-corpus"]
    assert "model.init_from=/w/ckpt/align_seq_s2/checkpoint_last.pt" in intent.cmd
    assert "model.init_from=" in by_name["qa_scratch_100pct_s1"].cmd  # a random speech module
    assert g.down["seq", 0.1, 2] == (intent, by_name["qa_seq_10pct_s2"])
    # the headline cells first, seed by seed; then the rest
    assert by_name["intent_seq_mlm_10pct_s1"].priority == 1 < by_name["intent_seq_100pct_s1"].priority == 3
