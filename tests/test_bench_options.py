"""bench/: the options several scripts take are declared once, in ``bench/common.py``; a script declares only its
own. Read from the scripts' source (no script is run: they are benchmarks)."""

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
#: parameter name -> the shared declaration in bench/common.py
SHARED = {"profile": "ProfileOpt", "config": "ConfigOpt", "workdir": ("WorkdirOpt", "ConfigWorkdirOpt"),
          "out": "OutOpt", "depth": "DepthOpt", "max_length": "MaxLengthOpt", "batch_size": "BatchSizeOpt",
          "rounds": "RoundsOpt", "pairs_n": "PairsOpt", "docs_n": "DocsOpt"}
#: gpu.py's --out / --workdir are other things (the device's $OUT, the bundles' folder, the runs' caches)
OWN = {"gpu.py"}


def _cli_params(tree: ast.Module):
    """(function, parameter, annotation source) of every parameter of a ``main`` or ``@app.command`` function."""
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        if fn.name != "main" and not any("command" in ast.unparse(d) for d in fn.decorator_list):
            continue
        for a in fn.args.args:
            yield fn.name, a.arg, ast.unparse(a.annotation) if a.annotation else ""


def test_shared_options_are_declared_once_in_common():
    common = ast.parse((BENCH / "common.py").read_text())
    declared = {t.id for n in common.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    wanted = {v for vs in SHARED.values() for v in ((vs,) if isinstance(vs, str) else vs)}
    assert wanted <= declared, wanted - declared
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")
    assert len(scripts) >= 10
    wrong = []
    for path in scripts:
        if path.name in OWN:
            continue
        for fn, name, ann in _cli_params(ast.parse(path.read_text())):
            ok = SHARED.get(name)
            if ok is None:
                continue
            if ann not in ((ok,) if isinstance(ok, str) else ok):
                wrong.append(f"{path.name}:{fn}({name}: {ann})")
    assert not wrong, f"declare these with bench/common.py's shared options: {wrong}"
