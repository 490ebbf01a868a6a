"""OpenSearch as a backend (esdistill/backends/opensearch.py) against the real local node (tests/conftest.py's
``os_node``): the engine picked from ``GET /`` or ``[cluster] engine`` and a contradiction refused naming the
setting, the refusals of what OpenSearch has no counterpart for, and the whole loop — index → candidates → teacher
→ train → deploy → evaluate → monitor — on OpenSearch with tiny models: counts in equal counts out, kNN answers as a
brute-force search over the stored vectors, the english analyzer stems, the alias cuts over and rolls back, the
results index is written.

The seam's own tests (tests/test_backends.py) run on both engines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from esdistill.backends import VECTOR_FIELD, OpenSearchBackend, backend_for
from esdistill.cluster import connect, connect_backend
from esdistill.config import ClusterSettings
from esdistill.errors import ClusterError


@pytest.fixture(scope="module")
def os_backend(osc):
    return backend_for(osc)


# ----------------------------------------------------------------------------------------- picking the engine
def test_the_engine_is_detected_from_get_root_and_set_by_the_switch(os_node, es_url, monkeypatch):
    from opensearchpy import OpenSearch

    found = connect_backend(ClusterSettings(url=os_node.url))  # engine unset: GET / says opensearch
    assert isinstance(found, OpenSearchBackend) and isinstance(found.client, OpenSearch)
    assert found.node_versions() == [os_node.s.version]
    monkeypatch.setenv("ESDISTILL_ES_ENGINE", "opensearch")
    switched = connect(ClusterSettings(url=os_node.url))
    assert isinstance(switched, OpenSearch) and backend_for(switched).name == "opensearch"
    monkeypatch.delenv("ESDISTILL_ES_ENGINE")
    assert connect_backend(ClusterSettings(url=es_url)).name == "elasticsearch"  # the test build has no GET /


@pytest.mark.parametrize("engine", ["elasticsearch", "opensearch"])
def test_an_engine_the_cluster_contradicts_is_refused_naming_the_setting(os_node, es_url, engine):
    url = os_node.url if engine == "elasticsearch" else es_url
    other = "opensearch" if engine == "elasticsearch" else "elasticsearch"
    with pytest.raises(ClusterError, match=rf"\[cluster\] engine is '{engine}'.* is {other}") as e:
        connect(ClusterSettings(url=url, engine=engine))
    assert f'engine = "{other}"' in e.value.hint and f"ESDISTILL_ES_ENGINE={other}" in e.value.hint


def test_elastic_only_credentials_are_refused_for_opensearch(os_node):
    from pydantic import SecretStr

    with pytest.raises(ClusterError, match="api_key .* is Elasticsearch's"):
        connect(ClusterSettings(url=os_node.url, engine="opensearch", api_key=SecretStr("abc")))


def test_what_opensearch_has_no_counterpart_for_is_refused_naming_the_setting(os_backend, os_node):
    for index_type in ("bbq_hnsw", "flat", "int8_flat"):
        with pytest.raises(ClusterError, match=f"deploy.index_type = '{index_type}'"):
            os_backend.dense_mapping(8, "cosine", index_type, 16, 100)
    with pytest.raises(ClusterError, match="evaluate.oversample"):
        os_backend.knn_body([1.0], 1, 10, oversample=2.0)
    with pytest.raises(ClusterError, match="lang-mustache") as e:
        os_backend.search_template("esdistill-none", {"id": "x", "params": {}})
    assert "teacher.request" in e.value.hint
    with pytest.raises(ClusterError, match="not supported yet") as e:
        os_backend.upload_model(None)
    assert "opensearch_ml" in e.value.hint
    down = connect_backend(ClusterSettings(url="http://127.0.0.1:9", engine="opensearch"), check=False)
    with pytest.raises(ClusterError, match="cannot reach OpenSearch at http://127.0.0.1:9"):
        down.check("http://127.0.0.1:9", "start it")


def test_vector_mapping_is_written_out_and_int8_is_lucene_scalar_quantization(os_backend):
    body = os_backend.dense_mapping(8, "dot_product", "int8_hnsw", 24, 64)
    assert body["settings"]["index"]["knn"] is True
    assert body["mappings"]["properties"][VECTOR_FIELD] == {
        "type": "knn_vector", "dimension": 8,
        "method": {"name": "hnsw", "engine": "lucene", "space_type": "innerproduct",
                   "parameters": {"m": 24, "ef_construction": 64, "encoder": {"name": "sq"}}}}
    assert os_backend.dense_mapping(8, "cosine", "hnsw")["mappings"]["properties"][VECTOR_FIELD]["method"][
        "space_type"] == "cosinesimil"
    assert os_backend.bm25_mapping()["settings"]["analysis"]["analyzer"]["esdistill_text"] == {"type": "english"}


# ------------------------------------------------------------------------------------------ the whole loop
@pytest.fixture(scope="module")
def os_project(tmp_path_factory, osc, os_node, tiny_models):
    """The loop (index → evaluate) run once on OpenSearch on the tiny slice; tests inspect it."""
    from esdistill.pipeline import Project

    from .conftest import tiny_config

    name = f"o{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path_factory.mktemp("osproj"), os_node.url, tiny_models, name,
                      cluster={"url": os_node.url, "engine": "opensearch"})
    project = Project(cfg)  # connects by the switch: no client handed in
    report = project.run()
    yield project, report
    osc.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_the_loop_runs_on_opensearch_and_every_document_arrives(os_project, osc):
    project, report = os_project
    assert project.backend.name == "opensearch"
    data = json.loads(Path(report["json"]).read_text())
    assert set(data["systems"]) == {"bm25", "pipeline", "student", "hybrid"}
    n_q, corpus = len(project.dataset.test_qrels), project.dataset.corpus
    for s in data["systems"].values():
        assert 0.0 <= s["ndcg@10"] <= 1.0 and len(s["per_query"]["ndcg@10"]) == n_q
    assert data["systems"]["pipeline"]["recall@100"] == data["systems"]["bm25"]["recall@100"]
    assert data["systems"]["bm25"]["ndcg@10"] > 0.2  # BM25 finds the judged documents of SciFact's slice
    # counts in == counts out: the BM25 index and the served dense index hold the corpus, id for id
    bm25_ids = {h["_id"] for h in project.backend.scan(project.cfg.bm25_index, False)}
    dense_ids = {h["_id"] for h in project.backend.scan(project.cfg.dense_alias, False)}
    assert bm25_ids == dense_ids == set(corpus)
    assert data["deploy"]["docs"] == len(corpus)
    assert project.index_key != _es_index_key(project)  # OpenSearch's analyzer keys the BM25 index


def _es_index_key(project):
    from esdistill.config import fingerprint

    inputs = project.index_inputs()
    return fingerprint({**inputs, "mapping": (Path(__file__).parent.parent / "mappings" / "bm25_index.json")
                        .read_text()})


def test_bm25_on_opensearch_stems_with_the_english_analyzer(os_project, osc):
    project, _ = os_project
    index = project.cfg.bm25_index
    tokens = osc.indices.analyze(index=index, body={"field": "text", "text": "Running studies of the cats"})
    assert [t["token"] for t in tokens["tokens"]] == ["run", "studi", "cat"]
    backend = project.backend
    word = "studies"
    stem_hits = backend.search(index, backend.bm25_body("study", ["text"], 200))["hits"]["hits"]
    plural = {h["_id"] for h in backend.search(index, backend.bm25_body(word, ["text"], 200))["hits"]["hits"]}
    assert stem_hits and {h["_id"] for h in stem_hits} == plural  # "study" and "studies" are one term


def test_knn_on_opensearch_answers_as_a_brute_force_search_over_the_stored_vectors(os_project):
    project, _ = os_project
    backend, alias = project.backend, project.cfg.dense_alias
    assert backend.vector_similarity(backend.alias_targets(alias)[0]) == "dot_product"
    stored = {h["_id"]: h["_source"][VECTOR_FIELD] for h in backend.scan(alias, [VECTOR_FIELD])}
    ids = sorted(stored)
    matrix = np.asarray([stored[i] for i in ids], dtype=np.float32)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)  # the student's unit vectors, as sent
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ids), 5, replace=False):
        query = matrix[i] + rng.normal(0, 0.05, matrix.shape[1]).astype(np.float32)
        query /= np.linalg.norm(query)
        brute = [ids[j] for j in np.argsort(-(matrix @ query))[:10]]
        got = [h["_id"] for h in backend.knn_search(alias, query.tolist(), 10, len(ids))["hits"]["hits"]]
        assert got == brute
    only = backend.knn_search(alias, matrix[0].tolist(), 3, 50, filter_ids=ids[5:8])["hits"]["hits"]
    assert sorted(h["_id"] for h in only) == ids[5:8]


def test_a_new_deploy_cuts_the_alias_over_and_rollback_returns(os_project):
    from esdistill.deploy import rollback, versions

    project, _ = os_project
    backend, alias = project.backend, project.cfg.dense_alias
    (first,) = backend.alias_targets(alias)
    project.cfg.deploy.m = 24  # another deploy key: a new version of the dense index
    try:
        info = project.deploy()
        second = info["index"]
        assert second != first and backend.alias_targets(alias) == [second]
        assert backend.count(second) == backend.count(first) == len(project.dataset.corpus)
        assert [v["index"] for v in versions(backend, alias)] == [first, second]
        assert backend.index_meta(first)["served"][-1].get("until")
        assert rollback(backend, alias) == (second, first) and backend.alias_targets(alias) == [first]
    finally:
        project.cfg.deploy.m = 16


def test_evaluate_and_monitor_write_the_results_index_on_opensearch(os_project, osc, tmp_path):
    from esdistill.results import RESULTS_INDEX

    project, _ = os_project
    key = project._eval_cache().key
    osc.indices.refresh(index=RESULTS_INDEX)
    n_q = len(project.dataset.test_qrels)
    assert osc.count(index=RESULTS_INDEX, body={"query": {"term": {"evaluate_key": key}}})["count"] == 4 * n_q + 4
    log = tmp_path / "recent.txt"
    log.write_text("\n".join(list(project.eval_queries().values())[:5]) + "\n")
    report = project.monitor(str(log))
    assert report["queries"] + report["without_pipeline_hits"] == 5
    osc.indices.refresh(index=RESULTS_INDEX)
    docs = osc.search(index=RESULTS_INDEX, body={"query": {"bool": {"filter": [
        {"term": {"doc_type": "monitor"}}, {"term": {"dataset": project.cfg.data.name}}]}}})["hits"]["hits"]
    assert len(docs) == 1 and docs[0]["_source"]["queries"] == report["queries"]


def test_a_search_request_teacher_runs_on_opensearch_as_a_direct_search_does(os_project, osc):
    """``teacher.request`` (the user's own search, here BM25 rescored by a title match) through the backend's
    ``_msearch``: the hits and scores of the same search sent directly, and its restricted form's scores."""
    import copy

    from esdistill.request_teacher import RequestSearch, fill

    rescore = {"query": {"multi_match": {"query": "{{query}}", "fields": ["title", "text"]}},
               "rescore": {"window_size": 20, "query": {"rescore_query": {"match": {"title": "{{query}}"}},
                                                        "query_weight": 0.1, "rescore_query_weight": 10.0}}}
    project, _ = os_project
    index = project.cfg.bm25_index
    rs = RequestSearch(osc, index, rescore)
    queries = dict(list(project.eval_queries().items())[:5])
    got = rs.run(queries, 10)
    for q, text in queries.items():
        body = fill(copy.deepcopy(rescore), text) | {"size": 10, "_source": False}
        want = [(h["_id"], h["_score"]) for h in osc.search(index=index, body=body)["hits"]["hits"]]
        assert want and [d for d, _ in got[q]] == [d for d, _ in want]
        assert [s for _, s in got[q]] == pytest.approx([s for _, s in want], rel=1e-6)
        some = [d for d, _ in want[:3]]
        assert rs.score({q: text}, {q: some})[q] == pytest.approx(dict(want[:3]), rel=1e-6)


def test_the_embed_pipeline_joins_the_text_fields_and_reindex_runs_as_a_task(os_backend, osc):
    """What in-cluster embedding (issue 23 item 3) will stand on: the pipeline's script joins ``title text`` (from
    the user's fields, dotted ones included) into the field the model embeds — run here without its
    ``text_embedding`` step, through ``_simulate`` — and ``_reindex`` starts as a task whose status is polled."""
    import time

    docs = [{"_source": {"name": "Vitamin D", "body": {"main": "and bone density"}, "extra": 1}}]
    for fields, want, title in ((["name", "body.main"], "Vitamin D and bone density", "Vitamin D"),
                                (["body.main"], "and bone density", None)):
        body = os_backend.embed_pipeline("some-model", fields)
        assert body["processors"][1] == {"text_embedding": {"model_id": "some-model",
                                                            "field_map": {"_esdistill_input": VECTOR_FIELD}}}
        steps = [body["processors"][0], {"script": {"source": "ctx.seen = ctx._esdistill_input"}},
                 body["processors"][2]]
        out = osc.ingest.simulate(body={"pipeline": {"processors": steps}, "docs": docs})["docs"][0]["doc"]["_source"]
        assert out["seen"] == want and out["text"] == "and bone density" and out.get("title") == title
        gone = {"_esdistill_input", *(f.split(".")[0] for f in fields)}  # the working field and the source fields
        assert not gone & set(out) and set(out) >= {"extra", "seen", "text"}
    src, dest = f"test-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex[:8]}"
    try:
        os_backend.create_index(src, os_backend.bm25_mapping())
        list(os_backend.stream_bulk({"_index": src, "_id": str(i), "_source": {"title": "t", "text": f"x{i}"}}
                                    for i in range(30)))
        os_backend.refresh(src)
        os_backend.create_index(dest, os_backend.bm25_mapping())
        task = os_backend.start_reindex({"source": {"index": src, "size": 7}, "dest": {"index": dest},
                                         "conflicts": "abort", "slices": "auto", "refresh": True})
        for _ in range(120):
            status = os_backend.task(task)
            if status.get("completed"):
                break
            time.sleep(0.5)
        assert status["completed"] and status["response"]["created"] == 30 and os_backend.count(dest) == 30
    finally:
        os_backend.delete_index(src, missing_ok=True)
        os_backend.delete_index(dest, missing_ok=True)
