"""``candidates`` stage: the _msearch batches return exactly what a direct BM25 search returns."""

from esdistill.candidates import bm25_query, msearch_bm25
from esdistill.data import Doc
from esdistill.indexing import build_bm25_index


def test_candidates_equal_direct_bm25_queries(es, index_name):
    words = ["cell", "protein", "gene", "cancer", "virus", "immune", "brain", "heart"]
    docs = {f"d{i}": Doc(f"d{i}", words[i % 8], " ".join(words[(i * j) % 8] for j in range(1, 6 + i % 5)))
            for i in range(60)}
    build_bm25_index(es, index_name, docs, key="k")
    queries = {f"q{i}": f"{words[i % 8]} {words[(i + 3) % 8]}" for i in range(10)}
    got = msearch_bm25(es, index_name, queries, ["title", "text"], k=7, batch_size=3)
    assert set(got) == set(queries)
    for qid, text in queries.items():
        direct = es.search(index=index_name, query=bm25_query(text, ["title", "text"]), size=7).body
        assert [(h["_id"], h["_score"]) for h in direct["hits"]["hits"]] == got[qid]
        assert len(got[qid]) == 7


def test_partial_shard_failures_are_an_error_not_fewer_candidates(es, index_name):
    """An alias over two indices where one shard cannot run the query answers 200 with half the hits; that must
    not pass for a complete answer."""
    import pytest

    from esdistill.errors import ClusterError
    from esdistill.search import BM25

    good = {f"d{i}": Doc(f"d{i}", "cell", f"cell biology {i}") for i in range(5)}
    build_bm25_index(es, f"{index_name}-a", good, key="k")
    es.indices.create(index=f"{index_name}-b", mappings={"properties": {"title": {"type": "long"},
                                                                        "text": {"type": "text"}}})
    es.index(index=f"{index_name}-b", id="n1", document={"title": 7, "text": "cell"}, refresh=True)
    es.indices.put_alias(index=f"{index_name}-a,{index_name}-b", name=index_name)
    with pytest.raises(ClusterError, match=r"1 of 2 shards failed .*" + f"{index_name}-b"):
        msearch_bm25(es, index_name, {"q": "cell"}, ["title", "text"], k=5)
    with pytest.raises(ClusterError, match="shards failed"):
        BM25(es, index_name, ["title", "text"], k=5).search("cell")


def test_test_candidates_are_keyed_on_evaluate_k(tmp_path, es, es_url, tiny_models):
    """The test-candidates stage records BM25's top ``evaluate.k`` of each test query (the pipeline's tail below its
    reranked head): raising k must record a longer list, not reuse the shorter one (the offline pipeline would be
    cut at the old k). At the default k the key is the one earlier caches were made under."""
    import uuid

    import pandas as pd

    from esdistill.pipeline import Project

    from .conftest import tiny_config

    name = f"k{uuid.uuid4().hex[:8]}"

    def project(k):
        return Project(tiny_config(tmp_path, es_url, tiny_models, name, evaluate={"k": k}), client=es)

    try:
        small, big = project(10), project(40)
        assert small._test_candidates_cache().key != big._test_candidates_cache().key
        small.test_candidates()
        assert big.test_candidates().get("cached") is not True
        ranks = {p: pd.read_parquet(p._test_candidates_cache().path("candidates.parquet")).groupby("qid")["rank"].max()
                 for p in (small, big)}
        assert ranks[small].max() == 10 and ranks[big].max() == 40
        assert "k" not in project(100).keys.test_candidates()  # the default: the key earlier versions made
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_drawn_queries_lose_their_own_document(tmp_path, es, es_url, tiny_models):
    """A pseudo-query (a sentence of a document) and a title query find their own document first in BM25 —
    that is what ``drawn_source = "keep"`` labels and trains on; ``leave_out`` (the default) takes exactly that
    document out of each drawn query's candidates, keeps every other candidate in BM25's order, and keys the
    stage apart. Judged training queries keep all their candidates."""
    import uuid

    import pandas as pd

    from esdistill.pipeline import Project

    from .conftest import tiny_config

    name = f"d{uuid.uuid4().hex[:8]}"

    def project(source):
        return Project(tiny_config(tmp_path / source, es_url, tiny_models, name, candidates={"k": 8},
                                   data={"pseudo_queries": 6, "title_queries": 6, "drawn_source": source}),
                       client=es)

    try:
        keep, out = project("keep"), project("leave_out")
        assert keep._candidates_cache().key != out._candidates_cache().key
        sources = out.drawn_sources
        assert len(sources) == 12 and {q[:3] for q in sources} == {"pq-", "tq-"}
        assert sources == keep.drawn_sources and not set(sources) & set(out.dataset.train_queries)
        info_keep, info_out = keep.candidates(), out.candidates()
        frames = {p: pd.read_parquet(p._candidates_cache().path("candidates.parquet")) for p in (keep, out)}
        first = frames[keep][frames[keep]["rank"] == 1].set_index("qid").docid
        assert sum(first[q] == d for q, d in sources.items()) >= 10  # BM25 finds a sentence's own document
        pairs = set(zip(frames[out].qid, frames[out].docid, strict=True))
        assert not {(q, d) for q, d in sources.items()} & pairs
        kept_pairs = set(zip(frames[keep].qid, frames[keep].docid, strict=True))
        found = sum((q, d) in kept_pairs for q, d in sources.items())
        assert info_out["sources_left_out"] == found and "sources_left_out" not in info_keep
        assert len(frames[keep]) - len(frames[out]) == found
        for q, g in frames[out].groupby("qid"):  # the rest in BM25's order, ranks renumbered from 1
            assert g["rank"].tolist() == list(range(1, len(g) + 1))
            assert g.bm25.is_monotonic_decreasing
        judged = set(out.dataset.train_queries)
        same = frames[keep][frames[keep].qid.isin(judged)].reset_index(drop=True)
        assert same.equals(frames[out][frames[out].qid.isin(judged)].reset_index(drop=True))
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
