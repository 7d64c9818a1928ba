"""Merges refuse shards that came from another input, another model/K or other options (issue 13): every
sharded step writes ``{shard}.shard.json`` and every merge compares them, naming the odd shard."""
import json
import shutil
from pathlib import Path

import pytest

from speechlm.cli.main import main as cli_main
from speechlm.tokenizers.shards import write_sidecar


def merge_error(argv, capsys):
    capsys.readouterr()
    assert cli_main(argv) == 1
    return capsys.readouterr().err


def test_phonemize_merge_refuses_shards_of_another_input_or_seed(mini_corpus, tmp_path, capsys):
    lines = (Path(mini_corpus) / "unpaired.wrd").read_text().splitlines()[:40]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(lines) + "\n")
    b.write_text("\n".join(lines[::-1]) + "\n")
    out = str(tmp_path / "out" / "lm")

    def shard(rank, inp, seed=1):
        assert cli_main(["phonemize", str(inp), "--out-prefix", out, "--nshard", "2", "--rank", str(rank),
                         "--seed", str(seed)]) == 0

    shard(0, a)
    shard(1, b)
    err = merge_error(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"], capsys)
    assert f"cannot merge: {out}_1_2.shard.json does not match {out}_0_2.shard.json (input 'input'" in err, err
    assert not Path(out + ".phn").exists()
    shard(1, a, seed=2)
    err = merge_error(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"], capsys)
    assert "(option 'seed': 2 vs 1)" in err, err
    shard(1, a)
    assert cli_main(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"]) == 0
    assert len(Path(out + ".phn").read_text().splitlines()) == 40
    # a shard without its sidecar (an older version, or copied by hand) is refused too
    Path(out + "_1_2.shard.json").unlink()
    err = merge_error(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"], capsys)
    assert f"{out}_1_2.shard.json is missing" in err, err


@pytest.mark.slow
def test_kmeans_merge_refuses_shards_of_another_k(mini_corpus, tmp_path, capsys):
    feats, labs = tmp_path / "feat", tmp_path / "lab"
    for rank in (0, 1):
        assert cli_main(["features", "dump", str(mini_corpus), "valid", str(feats), "--nshard", "2",
                         "--rank", str(rank)]) == 0
    for k in (4, 8):
        assert cli_main(["kmeans", "learn", str(feats), "valid", "--km-path", str(tmp_path / f"k{k}.npy"),
                         "--nshard", "2", "-k", str(k), "--percent", "1", "--n-init", "1"]) == 0

    def apply(rank, k):
        assert cli_main(["kmeans", "apply", str(feats), "valid", "--km-path", str(tmp_path / f"k{k}.npy"),
                         "--lab-dir", str(labs), "--nshard", "2", "--rank", str(rank)]) == 0

    apply(0, 4)
    apply(1, 8)
    merge = ["kmeans", "merge", str(labs), "valid", "--nshard", "2", "--km-path", str(tmp_path / "k4.npy")]
    err = merge_error(merge, capsys)
    assert f"{labs}/valid_1_2.shard.json does not match {labs}/valid_0_2.shard.json (input 'centroids'" in err
    assert not (labs / "valid.km").exists()
    # shards without sidecars (an older version, copied by hand) are refused
    for r in (0, 1):
        (labs / f"valid_{r}_2.shard.json").unlink()
    err = merge_error(merge, capsys)
    assert "valid_0_2.shard.json is missing" in err
    apply(0, 8)
    apply(1, 8)
    err = merge_error(merge, capsys)  # all shards from K=8, merged against K=4's centroids
    assert "labelled with other centroids than --km-path" in err, err
    apply(0, 4)
    apply(1, 4)
    assert cli_main(merge) == 0
    ids = [int(x) for line in (labs / "valid.km").read_text().splitlines() for x in line.split()]
    assert max(ids) < 4 and len((labs / "valid.km").read_text().splitlines()) == 5
    # a features shard dumped from another manifest makes its k-means shard differ too
    other = tmp_path / "other"
    other.mkdir()
    for name in ("valid.tsv", "test.tsv"):
        shutil.copy(Path(mini_corpus) / name, other / name)
    shutil.copy(other / "test.tsv", other / "valid.tsv")
    assert cli_main(["features", "dump", str(other), "valid", str(feats), "--nshard", "2", "--rank", "1"]) == 0
    apply(1, 4)
    err = merge_error(merge, capsys)
    assert "(option 'features'" in err, err


@pytest.mark.parametrize("verb", ["t2u", "phone-units"])
def test_t2u_and_phone_units_merges_refuse_shards_of_another_model(tmp_path, capsys, verb):
    ext = "km" if verb == "t2u" else "phn"
    models = []
    for name in ("m1.pt", "m2.pt"):
        (tmp_path / name).write_bytes(name.encode() * 100)
        models.append(str(tmp_path / name))
    prefix = tmp_path / "valid"
    for rank, model in ((0, models[0]), (1, models[1])):
        p = f"{prefix}_{rank}_2"
        Path(f"{p}.{ext}").write_text("1 2 3\n")
        if verb == "t2u":
            Path(f"{p}.ltr").write_text("A B |\n")
        write_sidecar(p, f"{verb} generate" if verb == "t2u" else "phone-units label", rank, 2,
                      {"checkpoint" if verb == "t2u" else "model": model}, {})
    argv = (["t2u", "merge", "--out-prefix", str(prefix), "--nshard", "2"] if verb == "t2u"
            else ["phone-units", "merge", str(tmp_path), "valid", "--nshard", "2"])
    err = merge_error(argv, capsys)
    assert f"{prefix}_1_2.shard.json does not match {prefix}_0_2.shard.json" in err, err
    assert not Path(f"{prefix}.{ext}").exists()
    doc = json.loads(Path(f"{prefix}_0_2.shard.json").read_text())
    write_sidecar(f"{prefix}_1_2", doc["verb"], 1, 2, {k: models[0] for k in doc["inputs"]}, {})
    assert cli_main(argv) == 0
    assert Path(f"{prefix}.{ext}").read_text() == "1 2 3\n1 2 3\n"
