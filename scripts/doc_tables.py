"""The generated reference tables of docs/: every setting (docs/configuration.md) and every command
(docs/commands.md), made from esdistill/config.py and esdistill/cli.py.

    python scripts/doc_tables.py           # rewrite the tables in the docs pages
    python scripts/doc_tables.py --check   # exit 1 when a page differs from the code (tests/test_docs.py)

Settings: one row per key of a config file (every field of :class:`esdistill.config.RunConfig`, nested tables
included) with its effective default under each profile (:data:`esdistill.config.PROFILES` laid under an empty
config, as :func:`esdistill.config.build_config` does), the values it takes and what it does; then the
``ESDISTILL_ES_*`` and ``ESDISTILL_LOCAL_*`` environment variables. "What it does" is the field's ``description``
in config.py, else the line in :data:`NOTES` below — a setting with neither is an error, so a new setting cannot
go undocumented.

Commands: every command of the ``esdistill`` CLI (sub-commands included), its help text, and each option and
argument with its default, environment variable and help, as ``esdistill <command> --help`` has them.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- settings table: made by scripts/doc_tables.py from esdistill/config.py; do not edit by hand -->"
END = "<!-- end of settings table -->"
COMMANDS_DOC = ROOT / "docs" / "commands.md"
COMMANDS_BEGIN = "<!-- commands table: made by scripts/doc_tables.py from esdistill/cli.py; do not edit by hand -->"
COMMANDS_END = "<!-- end of commands table -->"

#: What a setting does, where config.py's field has no description.
NOTES: dict[str, str] = {
    "profile": "the defaults laid under the file's values (the profile table above); `--profile` overrides it",
    "data.beir": "a BEIR folder (or a `.tar.xz`/`.tar.gz` of one): `corpus.jsonl`, `queries.jsonl`, "
                 "`qrels/<split>.tsv`; excludes `index`",
    "data.train_split": "BEIR: the qrels split whose queries train (`qrels/<split>.tsv`)",
    "data.test_split": "BEIR: the qrels split whose queries evaluate",
    "data.text_fields": "the fields the models read, the first as the title (with `index`: fields of your index)",
    "data.train_queries": "with `index`: the training queries, one per line or JSONL `{\"_id\", \"text\"}`",
    "data.train_qrels": "judgments of the training queries: query-id TAB doc-id TAB grade (`teacher fit` needs "
                        "them)",
    "data.test_queries": "held-out queries for `evaluate` (same formats as `train_queries`)",
    "data.test_qrels": "judgments of the test queries",
    "data.max_test_queries": "use a deterministic subset of test queries",
    "cluster.url": "the cluster, e.g. `https://es.example:9200` (`ESDISTILL_ES_URL`); unset: the local test "
                   "cluster. Credentials in it are sent as Basic auth and shown as `**********`",
    "cluster.ca_fingerprint": "SHA-256 fingerprint of the CA, instead of `ca_certs` (`ESDISTILL_ES_CA_FINGERPRINT`)",
    "cluster.cloud_id": "an Elastic Cloud deployment id, instead of `url` (`ESDISTILL_ES_CLOUD_ID`)",
    "cluster.api_key": "API key (`ESDISTILL_ES_API_KEY`); shown as `**********` in every dump",
    "cluster.username": "basic authentication user (`ESDISTILL_ES_USERNAME`)",
    "cluster.password": "basic authentication password (`ESDISTILL_ES_PASSWORD`); shown as `**********`",
    "cluster.ca_certs": "the CA certificate of the cluster's TLS (`ESDISTILL_ES_CA_CERTS`)",
    "cluster.verify_certs": "verify the cluster's TLS certificate (`ESDISTILL_ES_VERIFY_CERTS`, default true)",
    "cluster.request_timeout": "seconds per request (`ESDISTILL_ES_REQUEST_TIMEOUT`, default 120)",
    "index.chunk_size": "documents per bulk request when the corpus is indexed",
    "teacher.max_length": "tokens of a (query, document) pair the teacher reads",
    "teacher.batch_size": "pairs per scoring batch",
    "teacher.fit.learning_rate": "the fit's learning rate",
    "teacher.fit.seed": "seed of the fit (sampling, shuffling)",
    "teacher.fit.corpus.learning_rate": "the corpus teacher's learning rate",
    "teacher.fit.corpus.seed": "seed of the corpus teacher (the sentences drawn, shuffling)",
    "teacher.fit.corpus.epochs": "passes over the pairs",
    "teacher.fit.corpus.batch_size": "rows per batch",
    "teacher.fit.corpus.max_length": "tokens of a (sentence, document) pair",
    "teacher.fit.base_model": "the model the cross-encoder is fitted from (a name from Models, above; a folder; a "
                              "hub id)",
    "teacher.fit.epochs": "passes over the judged training rows, per fold",
    "teacher.fit.batch_size": "rows per batch",
    "teacher.fit.max_length": "tokens of a (query, document) pair",
    "train.base_model": "the bi-encoder the student starts from (a name from Models, above; a folder; a hub id)",
    "train.epochs": "passes over the training rows",
    "train.learning_rate": "the student's learning rate",
    "train.batch_size": "rows per batch (MNRL's in-batch negatives come from the same batch)",
    "train.max_length": "tokens of a query or document the student reads",
    "train.seed": "seed of the training (lists drawn, shuffling, the dev slice)",
    "deploy.index_type": "the dense index's `dense_vector` `index_options` type, always written out (the default "
                         "changed during 9.x)",
    "deploy.m": "HNSW `m`: neighbours per node",
    "deploy.ef_construction": "HNSW `ef_construction`: candidates kept while the graph is built",
    "deploy.encode_batch_size": "documents per batch the student embeds",
    "ES.api_key": "API key",
    "ES.username": "basic authentication user",
    "ES.password": "basic authentication password",
    "ES.ca_certs": "the CA certificate of the cluster's TLS",
    "ES.verify_certs": "verify the cluster's TLS certificate",
    "ES.request_timeout": "seconds per request",
    "LOCAL.version": "the test build's version (one of `SUPPORTED_ES_VERSIONS`)",
    "LOCAL.port": "HTTP port on 127.0.0.1",
    "LOCAL.heap": "the JVM heap (`-Xms`/`-Xmx`)",
    "LOCAL.username": "with `security`: the file-realm user",
    "LOCAL.password": "with `security`: that user's password",
    "OS_LOCAL.version": "the OpenSearch version assembled from Maven Central (its plugins: `<version>.0`)",
    "OS_LOCAL.port": "HTTP port on 127.0.0.1",
    "OS_LOCAL.heap": "the JVM heap (`-Xms`/`-Xmx`)",
}


def _sub_models(annotation: Any) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def values_of(annotation: Any) -> str:
    """The values a setting takes, as a reader of a TOML file writes them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return values_of(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [values_of(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))
    if origin is Literal:
        return " or ".join(f'`"{a}"`' for a in args)
    if origin is list:
        return f"list of {values_of(args[0])}".replace("list of `", "list of: `")
    if origin is dict:
        return "table (JSON in the environment)"
    names = {str: "string", int: "integer", float: "number", bool: "true / false", Path: "path", SecretStr: "secret"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def shown(value: Any) -> str:
    """A default as TOML would write it; unset as —."""
    if value is None:
        return "—"
    if isinstance(value, SecretStr):
        return "`**********`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (str, Path)):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def cell(text: str) -> str:
    """One table cell: one line, ``|`` escaped, and ``<``/``>`` outside code spans as entities (``<model>`` would
    otherwise be read as an HTML tag and vanish)."""
    parts = " ".join(text.replace("|", "\\|").split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _note(key: str, field) -> str:
    note = field.description or NOTES.get(key)
    if not note:
        raise SystemExit(f"scripts/doc_tables.py: {key} has no description in esdistill/config.py and no line in "
                         "NOTES: say what it does in one of them")
    return cell(note)


def _leaves(model: type[BaseModel], prefix: str = ""):
    """(key, field) of every setting: a table's own keys first, then its nested tables."""
    nested = []
    for name, field in model.model_fields.items():
        subs = _sub_models(field.annotation)
        if subs:
            nested.append((name, subs[0]))
        else:
            yield f"{prefix}{name}", field
    for name, sub in nested:
        yield from _leaves(sub, f"{prefix}{name}.")


def _effective(cfg: BaseModel, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def tables() -> str:
    sys.path.insert(0, str(ROOT))
    from esdistill import config as c

    # an empty config under each profile; data.name and data.beir are required, so they are shown as such
    made = {p: c.build_config({"data": {"name": "x", "beir": "x"}}, profile=p) for p in c.PROFILES}
    out = ["| setting | quick | full | values | what it does |", "|---|---|---|---|---|"]
    section = None
    for key, field in _leaves(c.RunConfig):
        top = key.rsplit(".", 1)[0] if "." in key else ""
        if top != section:
            section = top
            if top:
                out.append(f"| **`[{top}]`** | | | | |")
        if key in ("data.name", "data.beir"):
            quick = full = "required" if key == "data.name" else "— (or `index`)"
        else:
            quick, full = (shown(_effective(made[p], key)) for p in ("quick", "full"))
        name = key.rsplit(".", 1)[-1]
        out.append(f"| `{name}` | {quick} | {full} | {cell(values_of(field.annotation))} | {_note(key, field)} |")
    out += ["", "Environment variables (read by `ESDISTILL_ES_*` → [`ClusterSettings`], `ESDISTILL_LOCAL_*` → "
            "[`LocalClusterSettings`], `ESDISTILL_OS_LOCAL_*` → `LocalOpenSearchSettings` (the local OpenSearch "
            "node); a config file's `[cluster]` table overrides the first):", "",
            "| variable | default | values | what it does |", "|---|---|---|---|"]
    for model, prefix, tag in ((c.ClusterSettings, "ESDISTILL_ES_", "ES"),
                               (c.LocalClusterSettings, "ESDISTILL_LOCAL_", "LOCAL"),
                               (c.LocalOpenSearchSettings, "ESDISTILL_OS_LOCAL_", "OS_LOCAL")):
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            out.append(f"| `{prefix}{name.upper()}` | {shown(default)} | {cell(values_of(field.annotation))} | "
                       f"{_note(f'{tag}.{name}', field)} |")
    return "\n".join(out).replace("[`ClusterSettings`]", "`ClusterSettings`").replace(
        "[`LocalClusterSettings`]", "`LocalClusterSettings`")


def commands() -> str:
    """Every command of the CLI: a heading, its help, and a table of its arguments and options."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from typer.main import get_command

    from esdistill.cli import app

    skip = {"--help", "--install-completion", "--show-completion"}

    def params(cmd) -> list[str]:
        rows = []
        for p in cmd.params:
            if not p.opts or p.opts[0] in skip:
                continue
            if p.opts[0].startswith("-"):
                name = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                if p.is_flag and p.secondary_opts:
                    default = f"`{p.opts[0] if p.default else p.secondary_opts[0]}`"
                else:
                    default = "required" if p.required else shown(p.default)
            else:
                name, default = f"`{p.name.upper()}` (argument)", "required" if p.required else shown(p.default)
            env = getattr(p, "envvar", None)
            helptext = cell(p.help or "") + (f" (env `{env}`)" if env else "")
            rows.append(f"| {name} | {default} | {helptext} |")
        if not rows:
            return []
        return ["", "| argument / option | default | what it does |", "|---|---|---|", *rows]

    def walk(cmd, path: list[str]):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    out: list[str] = []
    for path, cmd in walk(get_command(app), []):
        title = " ".join(["esdistill", *path])
        out += [f"### `{title}`", "", cell(cmd.help or ""), *params(cmd), ""]
    return "\n".join(out).rstrip("\n")


def _replace(doc: str, begin: str, end: str, text: str, where: Path) -> str:
    head, sep, rest = doc.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not (sep and sep2):
        raise SystemExit(f"{where}: the markers of the generated table are missing")
    return f"{head}{begin}\n\n{text}\n\n{end}{tail}"


def render(doc: str) -> str:
    """docs/configuration.md ``doc`` with the text between the markers replaced by :func:`tables`."""
    return _replace(doc, BEGIN, END, tables(), DOC)


def render_commands(doc: str) -> str:
    """docs/commands.md ``doc`` with the text between the markers replaced by :func:`commands`."""
    return _replace(doc, COMMANDS_BEGIN, COMMANDS_END, commands(), COMMANDS_DOC)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a page is out of date")
    args = ap.parse_args()
    stale = []
    for path, make in ((DOC, render), (COMMANDS_DOC, render_commands)):
        doc = path.read_text()
        new = make(doc)
        if new != doc:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: a generated table differs from the code; "
                  "run python scripts/doc_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
