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
