"""Loaders: good input loads with exact counts; bad input names the file and line."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esdistill.config import build_config
from esdistill.data import LoadReport, check_qrels, load_corpus, load_dataset, load_qrels, load_queries, subset
from esdistill.errors import InputError

from .conftest import SCIFACT


def test_scifact_counts_match_beir(tmp_path):
    cfg = build_config({"data": {"name": "s", "beir": str(SCIFACT)}}, profile="full")
    with pytest.warns(UserWarning, match="2 of 809 training queries are test queries"):
        ds = load_dataset(cfg.data, tmp_path)
    assert len(ds.corpus) == 5183
    # two train claims repeat a test claim word for word: they are left out of training, and counted
    assert set(ds.leaked) == {"871", "1291"}
    assert len(ds.train_queries) + len(ds.leaked) == 809 and len(ds.test_queries) == 300
    assert sum(len(d) for d in ds.train_qrels.values()) == 919 - 2  # each of the two had one judgment
    assert sum(len(d) for d in ds.test_qrels.values()) == 339
    assert not set(ds.train_queries) & set(ds.test_queries)
    test_texts = {t.lower() for t in ds.test_queries.values()}
    assert not any(t.lower() in test_texts for t in ds.train_queries.values())


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": \n')
    with pytest.raises(InputError, match=r"corpus\.jsonl:3: not valid JSON"):
        load_corpus(p)


def test_wrong_encoding_names_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl:2: not UTF-8"):
        load_corpus(p)


def test_missing_field_and_duplicate_ids(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"text": "no id"}\n')
    with pytest.raises(InputError, match=r":1: missing field '_id'"):
        load_corpus(p)
    p.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(InputError, match=r":2: duplicate document id 'a'"):
        load_corpus(p)


def test_queries_plain_text_and_jsonl(tmp_path):
    plain = tmp_path / "q.txt"
    plain.write_text("first query\n\nsecond query\n")
    assert load_queries(plain) == {"1": "first query", "3": "second query"}
    js = tmp_path / "q.jsonl"
    js.write_text('{"_id": "q1", "text": "hello"}\n{"_id": "q2", "text": "  "}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:2: query 'q2' has empty text"):
        load_queries(js)


def test_qrels_with_unknown_ids_warn_with_counts(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tzz\t1\nq9\td1\t1\nq9\td2\t1\n")
    report = LoadReport()
    with pytest.warns(UserWarning):
        kept = check_qrels(load_qrels(p), {"q1": "x"}, {"d1", "d2"}, str(p), report)
    assert kept == {"q1": {"d1": 1}}
    assert any("1 judged query ids" in w and "2 judgments" in w for w in report.warnings)
    assert any("1 judgments name documents" in w for w in report.warnings)


def test_qrels_bad_row(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("q1\td1\n")
    with pytest.raises(InputError, match=r"x\.tsv:1: expected 3 columns"):
        load_qrels(p)


def test_the_corpus_fingerprint_ignores_queries_and_judgments(tmp_path):
    """The BM25 index is keyed on the corpus alone: switching profile (how many train or test queries) must
    not rebuild it."""
    quick = build_config({"data": {"name": "s", "beir": str(SCIFACT), "max_train_queries": 100}}, profile="quick")
    full = build_config({"data": {"name": "s", "beir": str(SCIFACT), "max_test_queries": 50}}, profile="full")
    a, b = load_dataset(quick.data, tmp_path), load_dataset(full.data, tmp_path)
    assert len(a.train_queries) != len(b.train_queries) and len(a.test_queries) != len(b.test_queries)
    assert a.corpus_fingerprint == b.corpus_fingerprint


def test_how_many_test_queries_are_evaluated_changes_no_draw_from_the_corpus(tmp_path):
    """What a draw from the corpus avoids — the corpus teacher's sentences (the ``ict-pairs`` key), pseudo-queries —
    is every test query of the split, not the evaluated subset: evaluating more test queries must not redraw them
    nor refit the corpus teacher. (Without ``max_corpus_docs``: that slice still follows the evaluated queries.)"""
    from esdistill.pipeline import Project

    def config(n):
        return build_config({"workdir": str(tmp_path / "w"), "data": {
            "name": "s", "beir": str(SCIFACT), "max_train_queries": 16, "max_test_queries": n, "pseudo_queries": 3},
            "teacher": {"fit": {"source": "corpus"}}}, profile="quick")

    few, more = load_dataset(config(5).data, tmp_path), load_dataset(config(50).data, tmp_path)
    assert len(few.test_queries) == 5 and len(more.test_queries) == 50
    assert few.all_test_queries == more.all_test_queries and len(few.all_test_queries) == 300
    a, b = Project(config(5)), Project(config(50))
    assert a.index_key == b.index_key
    assert a.keys.ict_pairs() == b.keys.ict_pairs()
    assert a.train_queries == b.train_queries  # the same pseudo-queries drawn


def test_plain_text_query_files_get_namespaced_ids(tmp_path):
    """Two plain-text files both number their lines 1, 2, …: different queries, not an overlap."""
    (tmp_path / "tr.txt").write_text("first train query\nsecond train query\n")
    (tmp_path / "tr.tsv").write_text("2\td1\t1\n")  # judgments of a plain-text file name its line numbers
    (tmp_path / "te.txt").write_text("a test query\n")
    (tmp_path / "te.tsv").write_text("1\td2\t1\n")
    cfg = build_config({"data": {"name": "u", "index": "x", "train_queries": str(tmp_path / "tr.txt"),
                                 "train_qrels": str(tmp_path / "tr.tsv"), "test_queries": str(tmp_path / "te.txt"),
                                 "test_qrels": str(tmp_path / "te.tsv")}})
    ds = load_dataset(cfg.data, tmp_path)
    assert ds.train_queries == {"train-1": "first train query", "train-2": "second train query"}
    assert ds.test_queries == {"test-1": "a test query"}
    assert ds.train_qrels == {"train-2": {"d1": 1}} and ds.test_qrels == {"test-1": {"d2": 1}}


def test_a_test_query_under_another_id_is_never_trained_on(tmp_path):
    """Train and test cut from one log: the same text under two ids is a leak, left out of training and counted."""
    (tmp_path / "tr.jsonl").write_text('{"_id": "a", "text": "Vitamin D  and bone"}\n{"_id": "b", "text": "x y"}\n')
    (tmp_path / "te.jsonl").write_text('{"_id": "z", "text": "vitamin d and BONE"}\n')
    cfg = build_config({"data": {"name": "u", "index": "x", "train_queries": str(tmp_path / "tr.jsonl"),
                                 "test_queries": str(tmp_path / "te.jsonl")}})
    with pytest.warns(UserWarning, match="1 of 2 training queries are test queries"):
        ds = load_dataset(cfg.data, tmp_path)
    assert ds.train_queries == {"b": "x y"} and ds.leaked == {"a": "Vitamin D  and bone"}


def test_one_id_naming_two_different_queries_is_refused(tmp_path):
    (tmp_path / "tr.jsonl").write_text('{"_id": "q1", "text": "one thing"}\n')
    (tmp_path / "te.jsonl").write_text('{"_id": "q1", "text": "another thing"}\n')
    cfg = build_config({"data": {"name": "u", "index": "x", "train_queries": str(tmp_path / "tr.jsonl"),
                                 "test_queries": str(tmp_path / "te.jsonl")}})
    with pytest.raises(InputError, match="1 query ids name different queries in the train and test files"):
        load_dataset(cfg.data, tmp_path)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=8),
                       st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)
                       .filter(lambda s: s.strip()), min_size=1, max_size=20))
def test_queries_jsonl_roundtrip(tmp_path_factory, queries):
    p = tmp_path_factory.mktemp("q") / "q.jsonl"
    p.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()), encoding="utf-8")
    assert load_queries(p) == {k: v.strip() for k, v in queries.items()}


def test_subset_is_deterministic_and_sized():
    ids = [str(i) for i in range(100)]
    a, b = subset(ids, 10, "x"), subset(list(reversed(ids)), 10, "x")
    assert a == b and len(a) == 10 and set(a) <= set(ids)
    assert subset(ids, None) == sorted(ids)


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=["Cs", "Zs", "Cc"]), min_size=1, max_size=10),
                       st.tuples(_text, _text), min_size=1, max_size=15))
def test_corpus_roundtrip_keeps_every_document(tmp_path_factory, docs):
    p = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    p.write_text("".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items()),
                 encoding="utf-8")
    report = LoadReport()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = load_corpus(p, report)
    assert set(corpus) == set(docs)  # counts in == counts out: empty documents are kept (and counted)
    assert all(corpus[k].title == t and corpus[k].text == x for k, (t, x) in docs.items())
    empty = sum(1 for t, x in docs.values() if not f"{t} {x}".strip())
    assert (f"{empty} documents have no title and no text" in " ".join(report.warnings)) == (empty > 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"q[0-9]{1,3}", fullmatch=True), st.from_regex(r"d[0-9]{1,3}", fullmatch=True),
                          st.integers(0, 3)), min_size=1, max_size=30))
def test_qrels_roundtrip(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("r") / "qrels.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows))
    expected: dict = {}
    for q, d, g in rows:
        expected.setdefault(q, {})[d] = g
    assert load_qrels(p) == expected


def test_model_folder_missing_files_is_named(tmp_path):
    from esdistill.errors import ModelError
    from esdistill.models import resolve

    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="no config.json or modules.json"):
        resolve(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no weights \(\*\.safetensors or \*\.bin\)"):
        resolve(str(tmp_path / "m"))


def test_pseudo_queries_are_stable_sentences_and_avoid_test_queries():
    from esdistill.data import Doc, pseudo_queries

    docs = [Doc(str(i), f"t{i}", f"Short. This sentence of document {i} is long enough to ask about. Tiny one.")
            for i in range(20)]
    a = pseudo_queries(docs, 5)
    assert a == pseudo_queries(list(reversed(docs)), 5)  # order of the corpus does not matter
    assert len(a) == 5 and all(q.startswith("pq-") for q in a)
    for qid, text in a.items():
        assert text == f"This sentence of document {qid[3:]} is long enough to ask about."
    avoided = pseudo_queries(docs, 5, avoid=[a[next(iter(a))].upper()])
    assert next(iter(a)) not in avoided and len(avoided) == 5
    assert pseudo_queries([Doc("x", "", "Too short.")], 3) == {}


def test_title_queries_are_stable_distinct_and_avoid_test_queries():
    from esdistill.data import Doc, title_queries

    docs = [Doc(str(i), f"Vitamin D and bone health in cohort {i}", "text") for i in range(10)]
    docs += [Doc("dup", "Vitamin D and bone health in cohort 3", "text"), Doc("short", "Two words", "text"),
             Doc("none", "", "text")]
    a = title_queries(docs, 20)
    assert a == title_queries(list(reversed(docs)), 20)  # order of the corpus does not matter
    assert all(q.startswith("tq-") for q in a) and {"tq-short", "tq-none"}.isdisjoint(a)
    assert len(a) == 10 and len(set(a.values())) == 10  # a title two documents share is drawn once
    for qid, text in a.items():
        assert text == next(d.title for d in docs if d.id == qid[3:])
    avoided = title_queries(docs, 20, avoid=["VITAMIN D and bone health in cohort 5"])
    assert "Vitamin D and bone health in cohort 5" not in avoided.values() and len(avoided) == 9
    assert len(title_queries(docs, 4)) == 4 and title_queries(docs, 0) == {}


def test_query_log_drops_test_queries_with_a_warning(tmp_path):
    import warnings

    from esdistill.config import DataConfig
    from esdistill.data import load_dataset

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "alpha"}\n')
    (root / "queries.jsonl").write_text('{"_id": "1", "text": "train q"}\n{"_id": "2", "text": "Test  Q"}\n')
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n2\td1\t1\n")
    log = tmp_path / "log.txt"
    log.write_text("test q\nsomething new\nanother one\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(DataConfig(name="x", beir=root, query_log=log), tmp_path / "cache")
    assert ds.query_log == {"log-2": "something new", "log-3": "another one"}
    assert any("1 of 3 logged queries are test queries" in str(w.message) for w in caught)


def test_query_log_resolves_against_the_config_file(tmp_path):
    from esdistill.config import load_config

    (tmp_path / "conf").mkdir()
    p = tmp_path / "conf" / "c.toml"
    p.write_text('[data]\nname = "s"\nbeir = "d"\nquery_log = "logs/q.txt"\n')
    assert load_config(p).data.query_log == (tmp_path / "conf" / "logs" / "q.txt").resolve()


def test_interrupted_archive_extraction_is_not_taken_as_finished(tmp_path, monkeypatch):
    """A kill during extraction must not leave a truncated corpus that the next run takes as complete."""
    import tarfile

    from esdistill.data import resolve_beir

    real = tarfile.TarFile.extractall

    def killed(self, path, *a, **kw):
        (Path(path) / "corpus.jsonl").write_text('{"_id": "1", "text": "only the first line"}\n')
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", killed)
    with pytest.raises(KeyboardInterrupt):
        resolve_beir(SCIFACT, tmp_path)
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    root = resolve_beir(SCIFACT, tmp_path)
    assert len(load_corpus(root / "corpus.jsonl")) == 5183
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no half-extracted folder left behind


def test_relevant_documents_are_capped_by_grade_then_a_stable_order():
    from esdistill.data import relevant

    docs = {"a": 1, "b": 2, "c": 1, "d": 0, "e": 1}
    assert relevant("q", docs)[0] == "b" and set(relevant("q", docs)) == {"a", "b", "c", "e"}
    two = relevant("q", docs, 2)
    assert two[0] == "b" and len(two) == 2 and two == relevant("q", dict(reversed(docs.items())), 2)
