"""Data in: BEIR folders, query files, qrels, and documents that already live in an index.

Every loader reads line by line and fails with :class:`InputError` naming the file and the line when a line is
malformed. Nothing is dropped silently: judgments that name unknown ids are reported as warnings with counts
(:class:`LoadReport`), and empty documents are counted.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EsdistillWarning, InputError

Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance grade


@dataclass
class Doc:
    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What the models read: title and body, joined as BEIR does."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class LoadReport:
    """What a loader kept and what it had to leave out, so counts in equal counts out plus the losses."""

    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, EsdistillWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ JSONL
def iter_lines(path: Path, what: str = "file") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)``; each line is decoded on its own so a bad byte is reported on its line."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start} of the line)",
                    hint="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
                ) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line raises with file and line."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})",
                hint="each line must be one JSON object; fix or remove that line",
            ) from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _field(obj: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise InputError(f"{path}:{lineno}: missing field {key!r}", hint=f"every line needs {key!r}")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------------------------- corpus
def load_corpus(path: Path, report: LoadReport | None = None) -> dict[str, Doc]:
    """BEIR ``corpus.jsonl``: ``_id``, ``title`` (optional), ``text``. Duplicate ids are an error."""
    report = report or LoadReport()
    corpus: dict[str, Doc] = {}
    empty = 0
    for lineno, obj in iter_jsonl(path):
        doc = Doc(_field(obj, "_id", path, lineno), _field(obj, "title", path, lineno, False),
                  _field(obj, "text", path, lineno, False))
        if doc.id in corpus:
            raise InputError(f"{path}:{lineno}: duplicate document id {doc.id!r}", hint="ids must be unique")
        if not doc.full_text.strip():
            empty += 1
        corpus[doc.id] = doc
    if not corpus:
        raise InputError(f"{path}: no documents")
    if empty:
        report.warn(f"{path}: {empty} documents have no title and no text (kept; they can only match by id)")
    return corpus


# ---------------------------------------------------------------------------------------------- queries
def is_plain_text_queries(path: Path) -> bool:
    """Whether a queries file is plain text (one query per line) rather than JSONL: decided by the file's first
    non-blank character."""
    for _, line in iter_lines(path, "queries file"):
        if line.strip():
            return not line.lstrip().startswith("{")
    return True


def load_queries(path: Path, id_prefix: str = "") -> dict[str, str]:
    """Queries from JSONL (``_id``/``text``, as BEIR) or plain text (one per line, id = ``id_prefix`` + the line
    number).

    Generated ids are namespaced by ``id_prefix`` (``train-``, ``test-``…) so that two plain-text files never
    give the same id to different queries. Blank queries are an error (they would be silently unanswerable);
    duplicate ids are an error.
    """
    queries: dict[str, str] = {}
    if not is_plain_text_queries(path):
        for lineno, obj in iter_jsonl(path):
            qid = _field(obj, "_id", path, lineno) if "_id" in obj else _field(obj, "id", path, lineno)
            text = _field(obj, "text", path, lineno) if "text" in obj else _field(obj, "query", path, lineno)
            _add_query(queries, qid, text, path, lineno)
    else:
        for lineno, line in iter_lines(path, "queries file"):
            if line.strip():
                _add_query(queries, f"{id_prefix}{lineno}", line.strip(), path, lineno)
    if not queries:
        raise InputError(f"{path}: no queries")
    return queries


def _add_query(queries: dict[str, str], qid: str, text: str, path: Path, lineno: int) -> None:
    if not text.strip():
        raise InputError(f"{path}:{lineno}: query {qid!r} has empty text", hint="remove the line or fill it")
    if qid in queries:
        raise InputError(f"{path}:{lineno}: duplicate query id {qid!r}")
    queries[qid] = text.strip()


# ------------------------------------------------------------------------------------------------ qrels
def load_qrels(path: Path) -> Qrels:
    """BEIR qrels TSV (``query-id  corpus-id  score``, header optional) or TREC (``qid 0 docid grade``)."""
    qrels: Qrels = {}
    for lineno, line in iter_lines(path, "qrels file"):
        row = line.split("\t") if "\t" in line else line.split()
        row = [c.strip() for c in row if c.strip() != ""]
        if not row:
            continue
        if lineno == 1 and len(row) in (3, 4) and not row[-1].lstrip("-").replace(".", "", 1).isdigit():
            continue  # header
        if len(row) == 4:
            row = [row[0], row[2], row[3]]
        if len(row) != 3:
            raise InputError(f"{path}:{lineno}: expected 3 columns (query-id, corpus-id, score), got {len(row)}")
        try:
            grade = int(float(row[2]))
        except ValueError:
            raise InputError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
        qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def check_qrels(qrels: Qrels, queries: dict[str, str], doc_ids, where: str, report: LoadReport) -> Qrels:
    """Keep judgments whose query and document exist; warn with counts about the rest."""
    unknown_q = [q for q in qrels if q not in queries]
    kept: Qrels = {}
    unknown_d = 0
    for qid, docs in qrels.items():
        if qid not in queries:
            continue
        good = {d: g for d, g in docs.items() if d in doc_ids}
        unknown_d += len(docs) - len(good)
        if good:
            kept[qid] = good
    if unknown_q:
        report.warn(f"{where}: {len(unknown_q)} judged query ids are not in the queries file (e.g. {unknown_q[0]!r})"
                    f"; their {sum(len(qrels[q]) for q in unknown_q)} judgments are not used")
    if unknown_d:
        report.warn(f"{where}: {unknown_d} judgments name documents that are not in the corpus; not used")
    return kept


# ------------------------------------------------------------------------------------------------- BEIR
def resolve_beir(path: Path, cache_dir: Path) -> Path:
    """A BEIR folder, or a ``.tar.xz``/``.tar.gz`` of one unpacked (once) under ``cache_dir``.

    The archive is unpacked into a temporary folder that is renamed into place only when complete, so an
    interrupted extraction never leaves a truncated corpus behind that a later run would take as finished."""
    if path.is_dir():
        return path
    if not path.exists():
        raise InputError(f"BEIR dataset not found: {path}", hint="point data.beir at a folder or a .tar.xz")
    if not tarfile.is_tarfile(path):
        raise InputError(f"{path}: neither a folder nor a tar archive")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    target = cache_dir / f"{path.name.split('.')[0]}-{digest}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        with tarfile.open(path) as tf:
            tf.extractall(tmp, filter="data")
        inner = [p for p in tmp.iterdir() if p.is_dir()]
        root = inner[0] if not (tmp / "corpus.jsonl").exists() and len(inner) == 1 else tmp
        try:
            root.rename(target)
        except OSError:  # another process finished the same extraction first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class Dataset:
    """Everything one run reads: corpus (or where to find it), train and test queries, judgments."""

    name: str
    corpus: dict[str, Doc] | None  # None when documents live in an existing index
    train_queries: dict[str, str]
    train_qrels: Qrels
    test_queries: dict[str, str]
    test_qrels: Qrels
    #: the corpus's content (None for an existing index, whose identity is read from the cluster). Only what
    #: the corpus holds: editing a judgment or the number of test queries must not rebuild the BM25 index.
    corpus_fingerprint: str | None
    report: LoadReport
    #: unjudged training queries (data.query_log)
    query_log: dict[str, str] = field(default_factory=dict)
    #: training queries left out because their text is a test query's (a leak otherwise): id -> text
    leaked: dict[str, str] = field(default_factory=dict)
    #: test queries of the split that ``data.max_test_queries`` leaves out of the evaluation: id -> text
    unevaluated_test_queries: dict[str, str] = field(default_factory=dict)

    @property
    def all_test_queries(self) -> dict[str, str]:
        """Every test query of the split, evaluated or not: what a draw from the corpus (pseudo-queries, the corpus
        teacher's sentences) must avoid — a later run may evaluate more of them, and the draw (and its key) must not
        depend on how many are evaluated now."""
        return {**self.unevaluated_test_queries, **self.test_queries}


def subset(ids: Iterable[str], n: int | None, salt: str = "") -> list[str]:
    """A deterministic pseudo-random subset of ``n`` ids (all of them, sorted, if ``n`` is None)."""
    ids = sorted(ids)
    if n is None or n >= len(ids):
        return ids
    return sorted(ids, key=lambda i: hashlib.sha1(f"{salt}{i}".encode()).hexdigest())[:n]


def file_digest(*paths: Path | None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is not None and Path(p).is_file():
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        h.update(str(p).encode() if p is None else b"|")
    return h.hexdigest()[:16]


def _own_queries(path: Path, role: str) -> tuple[dict[str, str], str]:
    """A user's queries file and the prefix its generated ids carry (``""`` for JSONL, whose ids are the user's)."""
    prefix = f"{role}-" if is_plain_text_queries(path) else ""
    return load_queries(path, prefix), prefix


def _prefixed(qrels: Qrels, prefix: str) -> Qrels:
    """Judgments of a plain-text queries file name queries by line number: give them the file's id prefix."""
    return {f"{prefix}{q}": d for q, d in qrels.items()} if prefix else qrels


def separate_train_from_test(train_q: dict[str, str], test_q: dict[str, str], report: LoadReport,
                             where: str = "data", what: str = "training queries"
                             ) -> tuple[dict[str, str], dict[str, str]]:
    """Train queries with every test query left out, compared by normalised text (case and spacing): a test
    query trained on under another id (both files cut from one log, say) would make every number in the report
    a lie. Returns (kept train queries, left-out ones); the count is reported. The same id naming different
    texts in both files is an error: the judgments could not tell them apart."""
    clash = sorted(q for q in set(train_q) & set(test_q) if normalize_query(train_q[q]) != normalize_query(test_q[q]))
    if clash:
        raise InputError(f"{len(clash)} query ids name different queries in the train and test files (e.g. "
                         f"{clash[0]!r}: {train_q[clash[0]]!r} vs {test_q[clash[0]]!r})",
                         hint="give train and test queries distinct ids; judgments are matched to queries by id")
    test_texts = {normalize_query(t) for t in test_q.values()}
    leaked = {q: t for q, t in train_q.items() if normalize_query(t) in test_texts}
    if leaked:
        report.warn(f"{where}: {len(leaked)} of {len(train_q)} {what} are test queries (same text, e.g. "
                    f"{next(iter(leaked.values()))!r}) and were left out of training")
    return {q: t for q, t in train_q.items() if q not in leaked}, leaked


def load_dataset(cfg, cache_dir: Path, doc_exists=None) -> Dataset:
    """Build a :class:`Dataset` from a :class:`~esdistill.config.DataConfig`.

    ``doc_exists(ids) -> set`` answers which document ids exist when the corpus lives in an index. No test query
    is ever trained on: training queries whose text is a test query's are left out (and counted), whatever
    their ids.
    """
    report = LoadReport()
    corpus_digest = None
    if cfg.beir is not None:
        root = resolve_beir(Path(cfg.beir), cache_dir)
        for need in ("corpus.jsonl", "queries.jsonl", f"qrels/{cfg.train_split}.tsv"):
            if not (root / need).exists():
                raise InputError(f"BEIR folder {root} has no {need}", hint="a BEIR folder holds corpus.jsonl, "
                                 "queries.jsonl and qrels/<split>.tsv")
        corpus = load_corpus(root / "corpus.jsonl", report)
        queries = load_queries(root / "queries.jsonl")
        qrels_tr = load_qrels(root / "qrels" / f"{cfg.train_split}.tsv")
        test_path = root / "qrels" / f"{cfg.test_split}.tsv"
        qrels_te = load_qrels(test_path) if test_path.exists() else {}
        overlap = set(qrels_tr) & set(qrels_te)
        if overlap:
            raise InputError(f"{len(overlap)} query ids are judged in both {cfg.train_split}.tsv and "
                             f"{cfg.test_split}.tsv (e.g. {sorted(overlap)[0]!r})",
                             hint="test queries must never be used for training; split them apart")
        train_q = {q: queries[q] for q in qrels_tr if q in queries}
        test_q = {q: queries[q] for q in qrels_te if q in queries}
        qrels_tr = check_qrels(qrels_tr, queries, corpus, f"{root}/qrels/{cfg.train_split}.tsv", report)
        qrels_te = check_qrels(qrels_te, queries, corpus, str(test_path), report)
        corpus_digest = file_digest(root / "corpus.jsonl")
    else:
        corpus = None
        train_q, train_prefix = _own_queries(Path(cfg.train_queries), "train")
        test_q, test_prefix = _own_queries(Path(cfg.test_queries), "test") if cfg.test_queries else ({}, "")
        qrels_tr = _prefixed(load_qrels(Path(cfg.train_qrels)), train_prefix) if cfg.train_qrels else {}
        qrels_te = _prefixed(load_qrels(Path(cfg.test_qrels)), test_prefix) if cfg.test_qrels else {}
        judged = {d for qr in (qrels_tr, qrels_te) for docs in qr.values() for d in docs}
        existing = doc_exists(judged) if (doc_exists and judged) else judged
        qrels_tr = check_qrels(qrels_tr, train_q, existing, str(cfg.train_qrels), report)
        qrels_te = check_qrels(qrels_te, test_q, existing, str(cfg.test_qrels), report)

    # compared with every test query, not only the evaluated subset: a later run may evaluate more of them
    all_test = dict(test_q)
    train_q, leaked = separate_train_from_test(train_q, all_test, report, str(cfg.beir or cfg.train_queries))
    test_q = {q: test_q[q] for q in subset(test_q, cfg.max_test_queries, "test")}
    qrels_te = {q: d for q, d in qrels_te.items() if q in test_q}
    train_q = {q: train_q[q] for q in subset(train_q, cfg.max_train_queries, "train")}
    qrels_tr = {q: d for q, d in qrels_tr.items() if q in train_q}
    if corpus is not None and cfg.max_corpus_docs:
        keep = set(list(corpus)[: cfg.max_corpus_docs])
        # (known: the evaluated test queries' documents make the slice, so max_test_queries changes the corpus and
        # every key after it; keeping every test query's would change the regression slice's corpus and scores)
        keep |= {d for qr in (qrels_tr, qrels_te) for docs in qr.values() for d in docs}
        corpus = {i: d for i, d in corpus.items() if i in keep}
        corpus_digest = f"{corpus_digest}:{hashlib.sha256(' '.join(sorted(corpus)).encode()).hexdigest()[:16]}"
    log_q: dict[str, str] = {}
    if cfg.query_log is not None:
        # ids are namespaced (plain-text logs number their lines, which would collide with dataset ids)
        logged = {f"log-{q}": t for q, t in load_queries(Path(cfg.query_log)).items()}
        logged, _ = separate_train_from_test(logged, all_test, report, str(cfg.query_log), "logged queries")
        train_texts = {normalize_query(t) for t in train_q.values()}
        dup = {q for q, t in logged.items() if normalize_query(t) in train_texts}
        if dup:
            report.warn(f"{cfg.query_log}: {len(dup)} logged queries repeat a judged training query and were "
                        "merged into it")
        log_q = {q: t for q, t in logged.items() if q not in dup}
    return Dataset(cfg.name, corpus, train_q, qrels_tr, test_q, qrels_te, corpus_digest, report, log_q, leaked,
                   {q: t for q, t in all_test.items() if q not in test_q})


def relevant(qid: str, docs: dict[str, int], n: int | None = None) -> list[str]:
    """A query's relevant (grade > 0) documents — at most ``n`` of them: the highest graded, ties broken by a stable
    hash of (query, document), so the same ones are chosen on every run and machine."""
    pos = sorted((d for d, g in docs.items() if g > 0),
                 key=lambda d: (-docs[d], hashlib.sha1(f"{qid}\t{d}".encode()).hexdigest()))
    return pos if n is None else pos[:n]


def normalize_query(text: str) -> str:
    return " ".join(text.lower().split())


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def pseudo_queries(docs: Iterable[Doc], n: int, avoid: Iterable[str] = (), min_words: int = 6,
                   max_words: int = 40, salt: str = "pq") -> dict[str, str]:
    """``n`` pseudo-queries drawn from the corpus: one sentence of each of ``n`` documents (chosen by a stable
    hash, so the same corpus always gives the same queries), ``min_words``..``max_words`` long. Query ids are
    ``pq-<docid>``. Texts equal to a query in ``avoid`` (e.g. the test queries) are skipped. No generator model
    is needed; the teacher decides what each pseudo-query is relevant to, exactly as for logged queries."""
    if n <= 0:
        return {}
    avoid_n = {normalize_query(t) for t in avoid}
    ranked = sorted(docs, key=lambda d: hashlib.sha1(f"{salt}:{d.id}".encode()).hexdigest())
    out: dict[str, str] = {}
    for doc in ranked:
        sentences = [x.strip() for x in _SENTENCE.split(doc.text or "") if min_words <= len(x.split()) <= max_words]
        if not sentences:
            continue
        pick = sentences[int(hashlib.sha1(f"{salt}:{doc.id}:s".encode()).hexdigest(), 16) % len(sentences)]
        if normalize_query(pick) in avoid_n:
            continue
        out[f"pq-{doc.id}"] = pick
        if len(out) >= n:
            break
    return out


def title_queries(docs: Iterable[Doc], n: int, avoid: Iterable[str] = (), min_words: int = 3,
                  salt: str = "tq") -> dict[str, str]:
    """``n`` documents' titles as queries (a paper's title asks what its abstract answers, closer to a searcher's
    question than a sentence of the text), drawn by a stable hash like :func:`pseudo_queries`. Query ids are
    ``tq-<docid>``. Titles shorter than ``min_words``, equal to a query in ``avoid`` or to a title already drawn
    are skipped."""
    if n <= 0:
        return {}
    seen = {normalize_query(t) for t in avoid}
    out: dict[str, str] = {}
    for doc in sorted(docs, key=lambda d: hashlib.sha1(f"{salt}:{d.id}".encode()).hexdigest()):
        title = (doc.title or "").strip()
        key = normalize_query(title)
        if len(title.split()) < min_words or key in seen:
            continue
        seen.add(key)
        out[f"tq-{doc.id}"] = title
        if len(out) >= n:
            break
    return out


#: the id prefixes of queries drawn from a document (its sentence, its title): the rest of the id is that document's
DRAWN_PREFIXES = ("pq-", "tq-")


def fold_of(qid: str, folds: int) -> int:
    """The fold a query belongs to (the teacher's cross-fit; the halves ensemble weights are checked on): stable
    across runs and machines."""
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % folds
