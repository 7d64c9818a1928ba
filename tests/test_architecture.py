"""The package's architecture, drawn from its source: import floors, function length, one home per idea.

Import floors. A *room* is a subpackage of ``speechlm`` (``speechlm/models/``) or a top-level module
(``speechlm/checkpoint.py``). Every room stands on a floor; an import may only point from a room to a room
on a LOWER floor (or inside its own room), and the module graph has no circle:

    8  __main__                     -- ``python -m speechlm``
    7  cli, the package root        -- the command line; ``speechlm/__init__.py`` registers every component
    6  tasks, corpora, superb       -- fairseq tasks; corpus builders (use tokenizers); mini-SUPERB (uses s3prl)
    5  criterions, tokenizers, splat, convert, analysis, s3prl
                                    -- losses; speech/text tokenizers (use models for features); SPLAT's
                                       language side and geometry; checkpoint conversion; analyses; upstream
    4  models                       -- registered fairseq models and the pre-trained spec
    3  modules, decoding, resume, preemption
                                    -- nn building blocks; CTC decoding of emissions; the training guards
                                       (resuming with a changed config, preemption) fairseq is patched with
    2  checkpoint, data, dictionaries
                                    -- the one checkpoint reader, safe loading and saving; formats, readers,
                                       datasets; dictionary checks
    1  atomic                       -- atomic writers
    0  errors, logs                 -- the one error path; logging

Imports are read with ``ast`` (also those inside functions). One exception: ``import speechlm`` to call
``speechlm.register()`` (fairseq must know every component before it loads an arbitrary checkpoint) is the
plugin's entry point, not an arrow into a room.

Function length: no function (or method) in ``speechlm/``, ``scripts/`` or ``examples/`` is longer than
``MAX_FUNCTION_LINES``; a longer one does several jobs and is split along them.

One greedy CTC decoder and one checkpoint reader: found by searching the source.
"""
import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "speechlm"

FLOORS = {
    "errors": 0, "logs": 0,
    "atomic": 1,
    "checkpoint": 2, "data": 2, "dictionaries": 2,
    "modules": 3, "decoding": 3, "resume": 3, "preemption": 3,
    "models": 4,
    "criterions": 5, "tokenizers": 5, "splat": 5, "convert": 5, "analysis": 5, "s3prl": 5,
    "tasks": 6, "corpora": 6, "superb": 6,
    "cli": 7, "": 7,  # "": the package root, speechlm/__init__.py
    "__main__": 8,
}
MAX_FUNCTION_LINES = 120


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path):
    """(line, imported name) for every import in the file, including those inside functions; ``from a
    import b`` yields ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def import_edges():
    """``{(importer, imported): (file, line)}`` between modules of the package (the package root as a
    target left out: see the module docstring)."""
    modules = package_modules()
    edges = {}
    for name, path in modules.items():
        for line, imported in imports_of(path):
            if not imported.startswith("speechlm."):
                continue
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            target = ".".join(parts)
            if target and target not in (name, "speechlm"):
                edges.setdefault((name, target), (path.relative_to(REPO), line))
    return edges


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def circles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_room_has_a_floor():
    rooms = {room(m) for m in package_modules()}
    assert not rooms - set(FLOORS), f"rooms without a floor (add them to FLOORS): {sorted(rooms - set(FLOORS))}"


def test_the_import_graph_has_no_circle():
    edges = import_edges()
    found = circles(edges)
    detail = []
    for comp in found:
        inside = [f"  {a} -> {b} ({f}:{ln})" for (a, b), (f, ln) in sorted(edges.items()) if a in comp and b in comp]
        detail.append(" <-> ".join(comp) + "\n" + "\n".join(inside))
    assert not found, "import circles:\n" + "\n".join(detail)


def test_imports_point_down_the_floors():
    bad = []
    for (a, b), (f, ln) in sorted(import_edges().items()):
        ra, rb = room(a), room(b)
        if ra != rb and FLOORS.get(rb, 99) >= FLOORS.get(ra, -1):
            bad.append(f"{f}:{ln}: {a} (floor {FLOORS.get(ra)}) imports {b} (floor {FLOORS.get(rb)})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from speechlm.tasks.x import y\n")
    assert (2, "speechlm.tasks.x") in list(imports_of(f))


def test_the_floor_check_sees_an_arrow_up(tmp_path):
    """The walker finds imports inside functions, and the floors order rooms as the docstring draws."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from speechlm.tasks.x import y\n")
    assert (2, "speechlm.tasks.x") in list(imports_of(f))
    assert FLOORS["models"] < FLOORS["tasks"] and FLOORS["checkpoint"] < FLOORS["models"]
    assert circles({("a", "b"): 0, ("b", "c"): 0, ("c", "a"): 0, ("c", "d"): 0}) == [["a", "b", "c"]]


def long_functions(root: Path):
    """``(relative path:qualified name, lines)`` of every function longer than MAX_FUNCTION_LINES."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        n = child.end_lineno - child.lineno + 1
                        if n > MAX_FUNCTION_LINES:
                            out.append((f"{path.relative_to(REPO)}:{name}", n))
                    walk(child, name + ".")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return out


@pytest.mark.parametrize("folder", ["speechlm", "scripts", "examples"])
def test_no_function_is_longer_than_the_limit(folder):
    found = long_functions(REPO / folder)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them along their jobs):\n" + "\n".join(
        f"  {f}: {n} lines" for f, n in found)


def source_files():
    for folder in ("speechlm", "scripts"):
        yield from sorted((REPO / folder).rglob("*.py"))


def test_one_greedy_ctc_decoder():
    """Best-path CTC (argmax, merge repeats, drop blanks) is written once: ``decoding/ctc.py``'s
    ``greedy_ctc``; the criterion's UCTC accuracy, the Viterbi decoder and the phone recognizer's
    PER call it."""
    import torch

    from speechlm.decoding.ctc import greedy_ctc

    collapse = re.compile(r"unique_consecutive|\[\s*j\s*-\s*1\s*\]|def \w*greedy\w*\(")
    where = [f"{p.relative_to(REPO)}:{i}" for p in source_files()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if collapse.search(line)]
    assert len(where) == 2 and all(w.startswith("speechlm/decoding/ctc.py:") for w in where), where
    callers = {p.relative_to(REPO).as_posix() for p in source_files() if "greedy_ctc(" in p.read_text(encoding="utf-8")}
    assert {"speechlm/criterions/speechlm.py", "speechlm/tokenizers/phone_training.py",
            "speechlm/decoding/ctc.py"} <= callers
    scores = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 0], [5, 5, 0, 0, 0, 0, 0, 0]]).unsqueeze(-1).eq(torch.arange(6)).float()
    assert greedy_ctc(scores, [8, 2], blank=0) == [[3, 3, 4], [5]]


def test_one_checkpoint_reader():
    """Only ``speechlm/checkpoint.py`` unpickles: every other loader calls ``read_checkpoint`` (fairseq
    checkpoints) or ``read_torch_file`` (the phone recognizer's own files); fairseq's model loaders get
    the state it read (``state=``), so no file is read twice."""
    raw = re.compile(r"torch\.load\(|load_checkpoint_to_cpu\(")
    where = [f"{p.relative_to(REPO)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "checkpoint.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if raw.search(line)]
    assert not where, "checkpoints read outside speechlm/checkpoint.py:\n" + "\n".join(where)
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load_model_ensemble_and_task":
                assert "state" in {k.arg for k in node.keywords}, f"{p.relative_to(REPO)}:{node.lineno}"
