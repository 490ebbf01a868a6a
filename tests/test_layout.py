"""The package's shape (issue 22): no import circle among esdistill's modules, and a Project one reads in a
sitting. The import graph is built with ``ast`` over esdistill/: every ``import``/``from … import`` of another
esdistill module at module level — and, in a second check, also those inside functions (deferred imports). Those
under ``if TYPE_CHECKING:`` never run and are not counted; nor is a package the importer lives in."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "esdistill"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, deferred: bool):
    """Import nodes executed when the module is imported (module body, also inside try/if, not TYPE_CHECKING);
    with ``deferred`` also those inside functions and classes."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            continue
        elif deferred or isinstance(node, (ast.If, ast.Try)):
            stack += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """module -> the esdistill modules it imports at module level (``deferred``: also inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text()), deferred):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from . import x` / `from .pkg import sub` import submodules too
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                # a package the importer lives in is already imported (``from . import x`` imports x, not .)
                if t in modules and t != name and not (name + ".").startswith(t + "."):
                    graph[name].add(t)
                    parent = t.rpartition(".")[0]  # importing a.b runs a/__init__ first (unless it is ours)
                    while parent and parent in modules and not (name + ".").startswith(parent + "."):
                        graph[name].add(parent)
                        parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_a_known_import():
    graph = import_graph()
    assert "esdistill.jsonutil" in graph["esdistill.cache"] and "esdistill.stages" in graph["esdistill.pipeline"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check finds a circle


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, f"import circles among esdistill's modules: {found}"


def test_no_import_circle_even_through_deferred_imports():
    """Counting the imports inside functions too: layered one way (a deferred import only keeps a heavy
    dependency off the import path, it does not hide a loop)."""
    found = cycles(import_graph(deferred=True))
    assert not found, f"import circles among esdistill's modules (deferred imports counted): {found}"


def test_project_is_a_thin_context():
    """``Project`` (esdistill/pipeline.py) is at most 250 lines: the stages own their work."""
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Project")
    assert cls.end_lineno - cls.lineno + 1 <= 250


def test_every_stage_names_the_class_that_runs_it():
    """The table (esdistill.stages.keys.STAGES) names, for every cached stage, the class of its work; Project's
    stage methods are each answered by exactly one class (stages.methods() refuses a name defined twice)."""
    from esdistill.stages import STAGES, WORK, methods, work_class
    from esdistill.stages.base import StageWork

    assert all(s.work in WORK for s in STAGES.values())
    assert all(issubclass(work_class(spec), StageWork) for spec in WORK)
    owners = methods()
    assert owners["train"] == owners["train_inputs"] == "train:TrainStage"
    assert owners["index_key"] == "index:IndexStage" and "run_offline" not in owners  # hooks stay the stages'


if __name__ == "__main__":  # pragma: no cover
    print("module level:", cycles(import_graph()))
    print("with deferred imports:", cycles(import_graph(deferred=True)))
