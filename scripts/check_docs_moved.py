"""Check that nothing of an old README was lost when its reference sections moved to docs/.

    python scripts/check_docs_moved.py [--rev c14f681]    # the README of that commit (git show REV:README.md)
    python scripts/check_docs_moved.py --old path/to/README.md

Splits the old README into units — each paragraph, each bullet (with its continuation lines), each table row,
each non-empty line of a fenced code block, each heading — and looks for every unit in README.md + docs/*.md as
they are now. Whitespace is collapsed and Markdown links are read as their text (``[x](y)`` -> ``x``), so a
section name that became a link still counts; nothing else is forgiven. Headings may be moved (another level, or
a page's title): a heading counts when its text is a heading anywhere, and so does a one-line lead-in ending in a
colon ("What is never trained on, …:") that became a heading. Prints every unit not found; exit 1 if any.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the commit whose README the split of issue 22 (item 4) started from
DEFAULT_REV = "c14f681"


def normalize(text: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)\s]*\)", r"\1", text)  # a link reads as its text
    return re.sub(r"\s+", " ", text).strip()


def units(markdown: str) -> list[tuple[str, str]]:
    """(kind, text) of every paragraph, bullet, table row, code line and heading."""
    out: list[tuple[str, str]] = []
    block: list[str] = []
    kind = "paragraph"
    in_code = False

    def flush() -> None:
        nonlocal block
        if block:
            out.append((kind, " ".join(block)))
        block = []

    for line in markdown.split("\n"):
        if line.startswith("```"):
            flush()
            in_code = not in_code
            continue
        if in_code:
            if line.strip():
                out.append(("code", line))
            continue
        if not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            out.append(("heading", line.lstrip("#").strip()))
        elif line.startswith("|"):
            flush()
            if not re.fullmatch(r"\|[\s\-:|]*\|?", line.strip()):
                out.append(("table row", line))
        elif re.match(r"(- |\d+\. )", line):
            flush()
            kind = "bullet"
            block = [line]
        else:
            if not block:
                kind = "paragraph"
            block.append(line)
    flush()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default=DEFAULT_REV, help="the git revision whose README.md is the old one")
    ap.add_argument("--old", type=Path, help="the old README as a file (instead of --rev)")
    args = ap.parse_args()
    old = args.old.read_text() if args.old else subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{args.rev}:README.md"], check=True, capture_output=True, text=True).stdout
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    new = "\n".join(p.read_text() for p in pages)
    body = normalize(new)
    headings = {normalize(t) for k, t in units(new) if k == "heading"}
    missing = []
    found = 0
    for kind, text in units(old):
        t = normalize(text)
        ok = t in headings if kind == "heading" else t in body or (
            kind == "paragraph" and t.endswith(":") and len(t) <= 100 and t[:-1] in headings)
        found += ok
        if not ok:
            missing.append((kind, text))
    for kind, text in missing:
        print(f"MISSING {kind}: {text[:160]}")
    print(f"{found} of {found + len(missing)} units of the old README found in "
          f"{', '.join(str(p.relative_to(ROOT)) for p in pages)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
