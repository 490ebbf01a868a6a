"""The seam to the search engine: :class:`ElasticsearchBackend` and :class:`OpenSearchBackend` against the real
test nodes (the tests of ``backend`` run on both engines) — indices created from ``mappings/``, bulk, ``_msearch``,
kNN with a filter, aliases and ``_meta``, deploy versions — Elasticsearch's health check, and the bodies it writes
pinned to what esdistill sent before the seam (they are what users' clusters and caches saw).
tests/test_opensearch_backend.py has OpenSearch's own (detection, refusals, the loop)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esdistill.backends import (
    VECTOR_FIELD,
    ConnectionLost,
    ElasticsearchBackend,
    EngineError,
    SearchBackend,
    backend_for,
)
from esdistill.backends.base import NOT_STORED, load_mapping
from esdistill.cluster import check_shards, connect_backend
from esdistill.config import ClusterSettings
from esdistill.errors import ClusterError


@pytest.fixture(params=["elasticsearch", "opensearch"])
def backend(request, index_name):
    """The backend of each engine's test node (``index_name``'s indices are deleted on both after the test)."""
    if request.param == "elasticsearch":
        yield backend_for(request.getfixturevalue("es"))
        return
    osc = request.getfixturevalue("osc")
    yield backend_for(osc)
    osc.indices.delete(index=f"{index_name}*", ignore_unavailable=True, allow_no_indices=True)


@pytest.fixture
def es_backend(es):
    return backend_for(es)


def unit(v):
    v = np.asarray(v, dtype="float32")
    return (v / np.linalg.norm(v)).tolist()


DOCS = {"d1": ("Vitamin D", "vitamin d deficiency and bone density"),
        "d2": ("Statins", "statins lower cholesterol in adults"),
        "d3": ("Sleep", "sleep loss impairs memory consolidation"),
        "d4": ("Exercise", "exercise improves bone density in the elderly")}
VECS = {"d1": unit([1, 0, 0, 0]), "d2": unit([0, 1, 0, 0]), "d3": unit([0, 0, 1, 0]), "d4": unit([0.9, 0, 0, 0.1])}


def fill(backend, index, vectors=False):
    actions = ({"_index": index, "_id": i, "_source": {"title": t, "text": x, **({VECTOR_FIELD: VECS[i]}
                                                                                 if vectors else {})}}
               for i, (t, x) in DOCS.items())
    items = list(backend.stream_bulk(actions, chunk_size=2))
    assert [ok for ok, _ in items] == [True] * len(DOCS)
    assert sorted(next(iter(item.values()))["_id"] for _, item in items) == sorted(DOCS)
    backend.refresh(index)


def test_backend_for_passes_backends_through_and_wraps_clients(es, es_url):
    b = backend_for(es)
    assert isinstance(b, ElasticsearchBackend) and isinstance(b, SearchBackend) and b.client is es
    assert backend_for(b) is b
    assert backend_for(None).client is None  # the bodies alone need no cluster
    connected = connect_backend(ClusterSettings(url=es_url))
    try:
        assert isinstance(connected, ElasticsearchBackend) and connected.check(es_url, "-")["status"] in (
            "green", "yellow")
    finally:
        connected.client.close()
    with pytest.raises(TypeError, match="no search backend for int"):
        backend_for(3)


def test_bodies_are_what_esdistill_sent_before_the_seam():
    """Byte for byte: the BM25 and kNN requests and the dense mapping of before (``git show main``)."""
    b = backend_for(None)
    assert json.dumps(b.bm25_body("bone density", ["title", "text"], 7)) == json.dumps(
        {"query": {"multi_match": {"query": "bone density", "fields": ["title", "text"], "type": "best_fields",
                                   "tie_breaker": 0.5}}, "size": 7, "_source": False, "track_total_hits": False})
    assert b.bm25_body("q", ["text"], 3, source=["text"])["_source"] == ["text"]
    assert json.dumps(b.knn_body([0.5, 0.5], 5, 3, filter={"match": {"text": "x"}}, oversample=2.0)) == json.dumps(
        {"knn": {"field": "embedding", "query_vector": [0.5, 0.5], "k": 5, "num_candidates": 5,
                 "filter": {"match": {"text": "x"}}, "rescore_vector": {"oversample": 2.0}}, "size": 5,
         "_source": False})
    assert b.knn_body([1.0], 2, 10, filter_ids=["a", "b"])["knn"]["filter"] == {"ids": {"values": ["a", "b"]}}
    assert json.dumps(b.knn_text_body("q", "m", 3, 9)) == json.dumps(
        {"knn": {"field": "embedding", "k": 3, "num_candidates": 9,
                 "query_vector_builder": {"text_embedding": {"model_id": "m", "model_text": "q"}}},
         "size": 3, "_source": False})
    want = load_mapping("dense_index.json")
    vec = want["mappings"]["properties"]["embedding"]
    vec["dims"], vec["similarity"] = 384, "cosine"
    vec["index_options"] = {"type": "int8_hnsw", "m": 24, "ef_construction": 64}
    assert json.dumps(b.dense_mapping(384, "cosine", "int8_hnsw", 24, 64)) == json.dumps(want)
    vec["index_options"] = {"type": "flat"}
    assert json.dumps(b.dense_mapping(384, "cosine", "flat", 24, 64)) == json.dumps(want)
    assert b.bm25_mapping() == load_mapping("bm25_index.json")
    assert b.results_mapping() == load_mapping("results_index.json")


def test_create_from_mappings_bulk_msearch_and_meta(backend, index_name):
    assert backend.index_meta(index_name) is None and not backend.index_exists(index_name)
    assert backend.create_index(index_name, backend.bm25_mapping(), {"key": "k1", "docs": 4}) is True
    assert backend.index_meta(index_name) == {"key": "k1", "docs": 4}
    with pytest.raises(ClusterError, match=f"refused to create index '{index_name}'"):
        backend.create_index(index_name, backend.bm25_mapping())
    assert backend.create_index(index_name, backend.bm25_mapping(), exist_ok=True) is False
    fill(backend, index_name)
    assert backend.count(index_name) == 4
    responses = backend.bm25_msearch(index_name, ["bone density", "cholesterol", "zzzunknownzzz"],
                                     ["title", "text"], 10)
    hits = [[h["_id"] for h in check_shards(r, "test")["hits"]["hits"]] for r in responses]
    assert set(hits[0]) == {"d1", "d4"} and hits[1] == ["d2"] and hits[2] == []
    assert all("_source" not in h for h in responses[0]["hits"]["hits"])
    both = backend.msearch([(index_name, backend.bm25_body("sleep", ["text"], 2, source=["title"]))])
    assert both["responses"][0]["hits"]["hits"][0]["_source"] == {"title": "Sleep"}
    assert sorted(h["_id"] for h in backend.scan(index_name, False)) == sorted(DOCS)
    assert dict(backend.get_sources(index_name, ["d3", "nope", "d1"], ["title"])) == {
        "d3": {"title": "Sleep"}, "d1": {"title": "Vitamin D"}}
    backend.put_meta(index_name, {"key": "k2"})
    assert backend.index_meta(index_name) == {"key": "k2"}
    before = backend.index_identity(index_name)
    list(backend.stream_bulk([{"_index": index_name, "_id": "d1", "_source": {"title": "x", "text": "y"}}]))
    assert backend.index_identity(index_name) != before  # any write changes the identity (a cache key input)
    with pytest.raises(EngineError) as refused:  # a refused search: the engine's status and reason
        backend.search(index_name, {"query": {"no_such_query": {}}})
    assert refused.value.status == 400 and "no_such_query" in str(refused.value)
    with pytest.raises(EngineError) as missing:  # what monitor reports: a log index that is not there
        list(backend.scan(f"{index_name}-missing", ["text"], since=("@timestamp", "1d")))
    assert missing.value.status == 404


def test_knn_with_a_filter_and_vector_dims(backend, index_name):
    body = backend.dense_mapping(4, "dot_product", "hnsw", 16, 100)
    backend.create_index(index_name, body, {"key": "dense"})
    assert backend.vector_dims(index_name) == 4 and backend.vector_dims(index_name, "title") is None
    assert backend.vector_similarity(index_name) == "dot_product"
    assert backend.vector_similarity(f"{index_name}-missing") is None
    fill(backend, index_name, vectors=True)
    near = backend.knn_search(index_name, unit([1, 0, 0, 0]), 2, 10)
    assert [h["_id"] for h in near["hits"]["hits"]] == ["d1", "d4"]
    only = backend.knn_search(index_name, unit([1, 0, 0, 0]), 2, 10, filter_ids=["d2", "d3"])
    assert sorted(h["_id"] for h in only["hits"]["hits"]) == ["d2", "d3"]
    by_query = backend.knn_search(index_name, unit([1, 0, 0, 0]), 3, 10, filter={"match": {"text": "cholesterol"}})
    assert [h["_id"] for h in by_query["hits"]["hits"]] == ["d2"]
    assert backend.segment_count(index_name) >= 1


def test_alias_moves_and_versions(backend, index_name):
    a, b = f"{index_name}-aaaa", f"{index_name}-bbbb"
    for name in (a, b):
        backend.create_index(name, backend.bm25_mapping(), {"key": name[-4:]})
    assert backend.alias_targets(index_name) == [] and not backend.has_alias(a)
    backend.move_alias(index_name, a, [])
    assert backend.alias_targets(index_name) == [a] and backend.has_alias(a)
    backend.move_alias(index_name, b, [a])  # one atomic request: never both, never none
    assert backend.alias_targets(index_name) == [b] and not backend.has_alias(a)
    assert backend.index_meta(index_name) == {"key": "bbbb"}  # through the alias
    dates = backend.creation_dates(f"{index_name}-*")
    assert set(dates) == {a, b} and all(isinstance(v, int) and v > 0 for v in dates.values())
    assert backend.creation_dates(f"{index_name}-none-*") == {}
    backend.delete_index(a)
    backend.delete_index(a, missing_ok=True)
    assert not backend.index_exists(a)


def test_deploy_versions_go_through_any_backend(backend, index_name):
    """The module functions take a client or a backend alike (here: the backend)."""
    from esdistill.deploy import point_alias, rollback, versions

    a, b = f"{index_name}-aaaa", f"{index_name}-bbbb"
    for name in (a, b):
        backend.create_index(name, backend.bm25_mapping(), {"key": name[-4:]})
    point_alias(backend, index_name, a)
    assert point_alias(backend, index_name, b) == [a]
    assert [v["index"] for v in versions(backend, index_name)] == [a, b]
    assert backend.index_meta(a)["served"][-1].get("until") and backend.index_meta(b)["served"][-1]["by"] == "deploy"
    assert rollback(backend, index_name) == (b, a) and backend.alias_targets(index_name) == [a]


def test_health_privileges_and_what_the_test_build_lacks(es_backend, es_url):
    backend = es_backend
    assert backend.check(es_url, "start it")["status"] in ("green", "yellow")
    assert backend.data_nodes() == 1
    assert backend.node_versions() and all(v.count(".") == 2 for v in backend.node_versions())
    import elasticsearch

    assert backend.client_version() == elasticsearch.__versionstr__
    unreachable = connect_backend(ClusterSettings(url="http://127.0.0.1:9"), check=False)
    with pytest.raises(ClusterError, match=r"cannot reach Elasticsearch at http://127.0.0.1:9"):
        unreachable.check("http://127.0.0.1:9", "start it")
    with pytest.raises(ConnectionLost):
        list(unreachable.stream_bulk([{"_index": "x", "_id": "1", "_source": {}}]))
    with pytest.raises(ClusterError, match="has no machine learning"):
        backend.require_ml()
    assert backend.describe("script", "esdistill-no-such-template") == (None, NOT_STORED)
    what, why = backend.describe("model", "esdistill-no-such-model")
    assert what is None and why


def test_scan_since_reads_only_recent_documents(backend, index_name):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).isoformat()
    backend.create_index(index_name, {"mappings": {"properties": {"q": {"type": "keyword"},
                                                                   "@timestamp": {"type": "date"}}}})
    sent = backend.stream_bulk([{"_index": index_name, "_id": "old", "_source": {"q": "a", "@timestamp": "2001-01-01"}},
                                {"_index": index_name, "_id": "new", "_source": {"q": "b", "@timestamp": now}}])
    assert all(ok for ok, _ in sent)
    backend.refresh(index_name)
    assert sorted(h["_id"] for h in backend.scan(index_name, ["q"])) == ["new", "old"]
    recent = list(backend.scan(index_name, ["q"], since=("@timestamp", "7d")))
    assert [(h["_id"], h["_source"]) for h in recent] == [("new", {"q": "b"})]
