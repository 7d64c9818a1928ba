"""The shared-space cause-finding's figure (examples/mini/SHARED_SPACE.md): for each pre-training variant, the
alignment of speech and text at the top of the Shared Transformer against the zero-shot and the fine-tuned
letter error on `test`.

    python examples/mini/plot_cause.py examples/mini/shared_space_rows.json examples/mini/shared_space_rows.png

ROWS.json: a list of objects with `name`, `same_phone_nn` (per layer, %), `chance`, `zero_shot_cer` (or null)
and `test_cer` (fine-tuned) (the notebook's table).
"""
import json
import os
import sys


def plot(rows, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, what in ((axes[0], "zero_shot_cer", "zero-shot (UCTC head) letter error on test, %"),
                          (axes[1], "test_cer", "fine-tuned letter error on test, %")):
        for i, r in enumerate(rows):
            if r.get(key) is None:
                continue
            x = r["same_phone_nn"][-1]
            ax.scatter([x], [r[key]], color=f"C{i % 10}", s=30)
            ax.annotate(r["name"], (x, r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(rows[0]["chance"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("same-phone nearest neighbour at the top layer, % (dotted: chance)")
        ax.set_ylabel(what)
    axes[0].set_title("zero-shot: moves with the text branch more than with alignment", fontsize=9)
    axes[1].set_title("fine-tuned: does not follow the alignment", fontsize=9)
    fig.tight_layout()
    fig.savefig(png + ".tmp", dpi=100, format="png")
    plt.close(fig)
    os.replace(png + ".tmp", png)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        rows = json.load(f)
    plot(rows, args[1])
    print(f"written: {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
