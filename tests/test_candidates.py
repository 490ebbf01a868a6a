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
