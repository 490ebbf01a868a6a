"""The documentation: README.md indexes docs/, every relative link and anchor in the repository's Markdown resolves,
and CI runs exactly the test command the README shows. Reads files only (no cluster, no model)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "node_modules", "target", ".esdistill", ".esdistill-bench"}


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md")
                  if not SKIP.intersection(p.relative_to(ROOT).parts) and "results" not in p.relative_to(ROOT).parts
                  and not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (what a Markdown renderer turns into links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, inline code marks and punctuation dropped, spaces to hyphens, a
    repeated heading suffixed -1, -2, …"""
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^```.*?^```", "", text, flags=re.S | re.M).split("\n"):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(text: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(text))


def test_markdown_files_are_found():
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "docs/configuration.md", "bench/README.md", "examples/node/README.md"} <= names


def test_every_relative_link_and_anchor_resolves():
    broken = []
    checked = 0
    for page in markdown_files():
        for target in links(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            where = f"{page.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
                broken.append(f"{where}: no heading with that anchor")
    assert checked >= 40, checked
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_matches_github():
    text = "# Know when to retrain: `esdistill monitor`\n## What it measures (SciFact test, 300 queries)\n## A\n## A\n"
    assert anchors(text) == {"know-when-to-retrain-esdistill-monitor",
                             "what-it-measures-scifact-test-300-queries", "a", "a-1"}


def test_readme_indexes_every_docs_page():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(readme.read_text())}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 8
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_ci_runs_the_test_command_the_readme_shows():
    """.ci/run is 'exactly the README's test command': each command it runs (after cd) is a line of one of the
    README's bash blocks."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [c for c in ci if c and not c.startswith(("#", "set ", "cd "))]
    assert commands == ["bash scripts/test.sh"]
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    shown = {line.split("#")[0].strip() for block in blocks for line in block.splitlines()}
    assert set(commands) <= shown
    assert (ROOT / "scripts" / "test.sh").exists()


def _doc_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", ROOT / "scripts" / "doc_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_lists_every_setting_as_config_py_defines_it():
    """docs/configuration.md's "Every setting" is what scripts/doc_tables.py makes from esdistill/config.py now:
    every key of a config file (nested tables too), its default under each profile, its values and a description;
    a setting added, removed, renamed or given another default there fails here until the table is remade."""
    from esdistill.config import ClusterSettings, LocalClusterSettings, LocalOpenSearchSettings, RunConfig

    table = _doc_tables()
    doc = table.DOC.read_text()
    assert table.render(doc) == doc, "run: python scripts/doc_tables.py"
    keys = [k for k, _ in table._leaves(RunConfig)]
    assert len(keys) >= 120 and "teacher.fit.corpus.pairs" in keys and "engine.ship_models" in keys
    block = doc.split(table.BEGIN)[1].split(table.END)[0]
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    # and the ESDISTILL_ES_* / ESDISTILL_LOCAL_* / ESDISTILL_OS_LOCAL_* variables
    assert len(rows) == len(keys) + sum(len(m.model_fields) for m in (ClusterSettings, LocalClusterSettings,
                                                                     LocalOpenSearchSettings))
    assert all(line.rstrip("| ").rsplit("|", 1)[1].strip() for line in rows), "a row without a description"


def test_commands_page_lists_every_command_and_option_as_the_cli_defines_them():
    """docs/commands.md's "Every command" is what scripts/doc_tables.py makes from esdistill/cli.py now: a heading
    per command (sub-commands too) and each of its options with its default."""
    from typer.main import get_command

    from esdistill.cli import app

    tables = _doc_tables()
    doc = tables.COMMANDS_DOC.read_text()
    assert tables.render_commands(doc) == doc, "run: python scripts/doc_tables.py"
    block = doc.split(tables.COMMANDS_BEGIN)[1].split(tables.COMMANDS_END)[0]
    cli = get_command(app)
    names = [" ".join(["esdistill", n, *([s] if s else [])]) for n, c in cli.commands.items()
             for s in ([None, *getattr(c, "commands", {})])]
    assert len(names) >= 20 and "esdistill bundle pack" in names and "esdistill teacher fit" in names
    assert all(f"### `{n}`" in block for n in names)
    assert all(f"`{o}`" in block for o in ("--show-request", "--vector-builder", "--index-types", "--carry-model"))
