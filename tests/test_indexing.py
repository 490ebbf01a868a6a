"""``index`` stage against the real cluster: counts, caching, resume, and refusing foreign indices."""

import pytest

from esdistill.data import Doc
from esdistill.errors import ClusterError
from esdistill.indexing import build_bm25_index, count, existing_ids


def corpus(n):
    return {f"d{i}": Doc(f"d{i}", f"title {i}", f"body text number {i} about cells") for i in range(n)}


def test_index_counts_cache_and_resume(es, index_name):
    docs = corpus(250)
    info = build_bm25_index(es, index_name, docs, key="k1", chunk_size=100)
    assert info["docs"] == 250 and info["indexed"] == 250 and count(es, index_name) == 250
    assert build_bm25_index(es, index_name, docs, key="k1")["cached"] is True
    # lose some documents (an interrupted run): the rerun sends only the missing ones
    for d in ("d1", "d2", "d3"):  # (_delete_by_query lives in the reindex module, absent from the test build)
        es.delete(index=index_name, id=d, refresh=True)
    info = build_bm25_index(es, index_name, docs, key="k1")
    assert info["resumed"] and info["indexed"] == 3
    assert existing_ids(es, index_name) == set(docs)
    # other inputs → the index is rebuilt, exactly
    info = build_bm25_index(es, index_name, corpus(40), key="k2")
    assert info["indexed"] == 40 and count(es, index_name) == 40


def test_refuses_to_overwrite_an_index_it_did_not_create(es, index_name):
    es.indices.create(index=index_name)
    with pytest.raises(ClusterError, match="not created by esdistill"):
        build_bm25_index(es, index_name, corpus(3), key="k")
