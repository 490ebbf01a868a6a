"""Installed as its users install it: a wheel, outside the checkout, with every import declared."""

import ast
import os
import subprocess
import sys
import sysconfig
import tomllib
import uuid
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
#: imports that only an extra needs (and that the code guards with a clear error when it is missing); onnx and
#: onnxruntime are core (esdistill/model_source.py rebuilds bge-small / e5-small with them)
EXTRAS = {"ray": "ray"}


def _imports() -> set[str]:
    mods = set()
    for f in (ROOT / "esdistill").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "esdistill"}


def test_every_import_is_a_declared_dependency():
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    extras = {e: {Requirement(r).name.lower() for r in reqs} for e, reqs in project["optional-dependencies"].items()}
    dists = packages_distributions()
    missing = []
    for module in sorted(_imports()):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if module in EXTRAS:
            assert names & extras[EXTRAS[module]], f"{module} should be in the [{EXTRAS[module]}] extra"
        elif not names & declared:
            missing.append(f"{module} (from {', '.join(sorted(names))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_a_wheel_installed_outside_the_checkout_runs_the_loop(tmp_path, es, es_url, tiny_models):
    """Build the wheel, install it into a fresh venv (its dependencies are those of the test venv, added at the end
    of its path; esdistill itself only from the wheel), and run the loop from a folder far from the checkout."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True)
    (wheel,) = dist.glob("esdistill-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1")
    where = subprocess.run([py, "-c", "import esdistill.resources as r; print(r.__file__); "
                            "print(r.resource('datasets', 'scifact.tar.xz'))"], capture_output=True, text=True,
                           check=True, cwd=away, env=env).stdout.split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv))  # code and data from the wheel
    name = f"whl{uuid.uuid4().hex[:6]}"
    (away / "my.toml").write_text(
        f'workdir = "w"\n[cluster]\nurl = "{es_url}"\n[data]\nname = "{name}"\nbeir = "{where[1]}"\n'
        "max_train_queries = 8\nmax_test_queries = 4\nmax_corpus_docs = 60\n[candidates]\nk = 5\n"
        f'[teacher]\nmodel = "{tiny_models["ce"]}"\nmax_length = 32\n'
        f'[train]\nbase_model = "{tiny_models["bi"]}"\nnegatives = 2\nepochs = 1\nmax_length = 32\n'
        "dev_fraction = 0.0\n[evaluate]\nrerank_depth = 5\nk = 10\nnum_candidates = 20\n")
    try:
        proc = subprocess.run([venv / "bin" / "esdistill", "run", "-c", "my.toml"], capture_output=True, text=True,
                              cwd=away, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "| BM25 |" in proc.stdout
        assert list((away / "w" / "reports").glob("*/report.md"))
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
