#!/usr/bin/env python
"""The Python half of ``examples/common/recipe.sh``: the few things a recipe script needs that are not a
``speechlm`` verb (the shell holds no parsing, arithmetic on seconds or JSON).

    python examples/common/recipe.py device                       # cuda or cpu: what torch sees
    python examples/common/recipe.py config-value CONFIG.yaml model.speech_encoder_layers
    python examples/common/recipe.py stage-time EXP/stage_times.tsv 4-6 --wall 812 \\
        --times-begin EXP/.times.begin --times-end EXP/.times.end
    python examples/common/recipe.py phone-dict DATA/dict.phn.txt  # the phone inventory, count 1 each

``stage-time`` appends ``STAGE<TAB>WALL<TAB>CPU`` to the table: CPU is the difference of the children's
user + sys seconds between two outputs of bash's ``times`` builtin (its second line: the processes the
shell waited for), which ``scripts/mini_summary.py`` turns into the recipe's cost.
"""
import argparse
import os
import re
import sys
from typing import Tuple

_TIMES = re.compile(r"^(\d+)m([\d.]+)s$")


def parse_times(text: str, where: str = "times") -> Tuple[float, float]:
    """bash ``times`` output (``0m1.5s 0m0.2s`` for the shell, then the same for its children) ->
    the children's ``(user, sys)`` seconds. ValueError naming ``where`` for anything else."""
    lines = text.strip().splitlines()
    if len(lines) != 2:
        raise ValueError(f"{where}: expected the two lines of bash's `times`, got {len(lines)}")
    fields = lines[1].split()
    matches = [_TIMES.match(f) for f in fields]
    if len(fields) != 2 or not all(matches):
        raise ValueError(f"{where}:2: expected 'XmY.YYYs XmY.YYYs', got {lines[1]!r}")
    user, sys_ = (60 * int(m.group(1)) + float(m.group(2)) for m in matches)
    return user, sys_


def stage_time(table: str, stage: str, wall: float, times_begin: str, times_end: str) -> float:
    """Append ``stage, wall, CPU`` to ``table`` (TSV); returns the CPU seconds of the stage."""
    seconds = []
    for path in (times_begin, times_end):
        with open(path, encoding="utf-8") as f:
            seconds.append(sum(parse_times(f.read(), path)))
    cpu = round(seconds[1] - seconds[0], 3)
    with open(table, "a", encoding="utf-8") as f:
        f.write(f"{stage}\t{wall:g}\t{cpu:g}\n")
    return cpu


def config_value(path: str, key: str):
    """The value at the dotted ``key`` (``group.name``) of a YAML config; KeyError naming what is missing."""
    import yaml

    with open(path, encoding="utf-8") as f:
        node = yaml.safe_load(f)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{path}: no {key!r} (missing {part!r})")
        node = node[part]
    return node


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_phone_dict(path: str) -> None:
    """``dict.phn.txt`` of the speech-side phone inventory (``speechlm.tokenizers.lexicon.PHONES``), count 1."""
    from speechlm.tokenizers.lexicon import PHONES

    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("".join(f"{p} 1\n" for p in PHONES))
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("device", help="print cuda or cpu")
    c = sub.add_parser("config-value", help="print one value of a YAML config")
    c.add_argument("config")
    c.add_argument("key", help="dotted key, e.g. optimization.max_update")
    s = sub.add_parser("stage-time", help="append a stage's wall and CPU seconds to a TSV table")
    s.add_argument("table")
    s.add_argument("stage")
    s.add_argument("--wall", type=float, required=True)
    s.add_argument("--times-begin", required=True, help="bash `times` output at the stage's start")
    s.add_argument("--times-end", required=True, help="... and at its end")
    d = sub.add_parser("phone-dict", help="write the phone inventory's dict.phn.txt")
    d.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.action == "device":
            print(device())
        elif args.action == "config-value":
            print(config_value(args.config, args.key))
        elif args.action == "stage-time":
            stage_time(args.table, args.stage, args.wall, args.times_begin, args.times_end)
        else:
            write_phone_dict(args.path)
    except (KeyError, ValueError, OSError) as e:
        print(f"recipe.py {args.action}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
