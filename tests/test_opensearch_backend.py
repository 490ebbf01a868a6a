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
    with pytest.raises(ClusterError, match="sentence-transformers folder"):
        os_backend.upload_model(None)
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


@pytest.fixture(scope="module")
def os_encoder(os_project, tmp_path_factory):
    """The loop's student exported as a query encoder on OpenSearch, and what Python answers through the alias
    (the PyTorch encoder: the fp32 graph must match sentence-transformers itself)."""
    project, _ = os_project
    out = tmp_path_factory.mktemp("os-encoder")
    manifest = project.export_encoder(out)
    queries = list(project.eval_queries().values())[:6]
    served, project.cfg.evaluate.query_encoder = project.cfg.evaluate.query_encoder, "torch"
    try:
        systems = project.systems(served=True)
        student, hybrid = systems["student"](), systems["hybrid"]()
        reference = {q: {"vector": np.asarray(student.encode(q)), "student": student.search(q).hits[:10],
                         "hybrid": hybrid.search(q).hits[:10]} for q in queries}
    finally:
        project.cfg.evaluate.query_encoder = served
    return project, out, manifest, reference


def test_the_exported_encoder_names_opensearch_and_its_own_knn_request(os_encoder):
    """The manifest says which client speaks to the cluster, and carries the kNN request esdistill sends there:
    OpenSearch's ``knn`` query clause (not Elasticsearch's top-level ``knn``), the vector left as a placeholder."""
    from esdistill.encoder_export import VECTOR_PLACEHOLDER

    project, _, manifest, _ = os_encoder
    assert manifest["engine"] == "opensearch"
    ev = project.cfg.evaluate
    assert manifest["knn_request"] == project.backend.knn_body(VECTOR_PLACEHOLDER, ev.k, ev.num_candidates)
    clause = manifest["knn_request"]["query"]["knn"][VECTOR_FIELD]
    assert clause["vector"] == VECTOR_PLACEHOLDER and clause["k"] == ev.k and "knn" not in {
        k for k in manifest["knn_request"] if k != "query"}


def _client_cmd(which):
    from .test_clients import JAVA_DIR, NODE_DIR, _need

    if which == "node":
        _need("node", NODE_DIR / "node_modules", "examples/node's packages")
        return ["node", "search.mjs"], NODE_DIR
    _need("java", JAVA_DIR / "target" / "classes", "examples/java's build")
    return ["java", "-cp", "target/classes:target/dependency/*", "esdistill.Search"], JAVA_DIR


@pytest.mark.parametrize("which", ["node", "java"])
def test_the_application_clients_answer_on_opensearch_as_the_python_student(os_encoder, os_node, which,
                                                                              tmp_path):
    """examples/node (@opensearch-project/opensearch) and examples/java (opensearch-java) on the real node: the
    vectors of the Python student, its top 10 for kNN and the client-side hybrid, the int8 graph close, and an
    encoder of another deploy refused (exit 3) before any search."""
    from .test_clients import _check_client

    _, out, _, reference = os_encoder
    cmd, cwd = _client_cmd(which)
    _check_client(cmd, cwd, out, reference, os_node.url, tmp_path)


@pytest.mark.parametrize("which", ["node", "java"])
def test_the_application_clients_stop_on_opensearch_when_the_alias_moves(os_encoder, os_node, osc, which,
                                                                          tmp_path):
    """A long-running client checks every kNN hit's index: the alias moved to another index (a deploy, a rollback)
    while it runs stops it (exit 3) instead of answering with the wrong model's vectors."""
    from .test_clients import _check_stops_when_the_alias_moves

    _, out, manifest, _ = os_encoder
    cmd, cwd = _client_cmd(which)
    alias, index = manifest["alias"], manifest["index"]
    moved = f"{index}-moved"
    osc.indices.create(index=moved, body={"settings": {"index.knn": True}, "mappings": {"properties": {
        VECTOR_FIELD: osc.indices.get_mapping(index=index)[index]["mappings"]["properties"][VECTOR_FIELD]}}})
    dims = manifest["dims"]
    rng = np.random.default_rng(0)
    for i in range(3):
        v = rng.normal(size=dims)
        osc.index(index=moved, id=f"m{i}", body={VECTOR_FIELD: (v / np.linalg.norm(v)).tolist()})
    osc.indices.refresh(index=moved)

    def swap(frm: str, to: str) -> None:
        osc.indices.update_aliases(body={"actions": [{"remove": {"index": frm, "alias": alias}},
                                                     {"add": {"index": to, "alias": alias}}]})

    try:
        _check_stops_when_the_alias_moves(cmd, cwd, out, os_node.url, moved, swap)
    finally:
        osc.indices.delete(index=moved)


def test_an_elastic_api_key_is_refused_by_the_clients_on_opensearch(os_encoder, os_node, tmp_path):
    """OpenSearch has no API keys: a client given ESDISTILL_ES_API_KEY for an OpenSearch encoder says what to set
    instead, rather than failing on the cluster's 401."""
    import os as _os
    import subprocess

    _, out, _, _ = os_encoder
    for which in ("node", "java"):
        cmd, cwd = _client_cmd(which)
        proc = subprocess.run([*cmd, "--encoder", str(out), "some query"], cwd=cwd, capture_output=True,
                              text=True, timeout=300, env=dict(_os.environ, ESDISTILL_ES_URL=os_node.url,
                                                               ESDISTILL_ES_API_KEY="abc"))
        assert proc.returncode == 1 and "OpenSearch has no API keys" in proc.stderr, (which, proc.stderr[-2000:])


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


# ------------------------------------------------------------- the student served inside the cluster (item 3)
@pytest.fixture(scope="module")
def os_uploaded(os_project, osc):
    """``esdistill export --upload --start`` of the loop's student to ml-commons (deleted after)."""
    from esdistill import opensearch_ml as ml

    project, _ = os_project
    info = project.export(upload=True, start=True)
    yield project, info
    for m in ml.models_named(osc, info["model_id"]):
        ml.remove(osc, m["model_id"])
    osc.ingest.delete_pipeline(id=f"{info['model_id']}-embed")


def test_export_upload_registers_deploys_and_checks_predict_against_sentence_transformers(os_uploaded, osc):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from esdistill import opensearch_ml as ml

    project, info = os_uploaded
    assert info["model_id"] == project.student_model_id() and info["started"] is True
    assert info["predict_min_cosine"] > ml.MIN_COSINE
    assert project.backend.model_stats(info["model_id"])["deployment_stats"]["state"] == "started"
    texts = ["bone density in older adults", "statins"]
    got = ml.predict(osc, info["cluster_model_id"], texts)
    ref = SentenceTransformer(project.student_path(), device="cpu").encode(texts)
    assert np.min(np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)) > 0.9999
    # the export's ingest pipeline names ml-commons' own id of the model
    pipeline = osc.ingest.get_pipeline(id=f"{info['model_id']}-embed")[f"{info['model_id']}-embed"]
    assert pipeline["processors"][1]["text_embedding"]["model_id"] == info["cluster_model_id"]


def test_deploy_embed_in_cluster_writes_the_client_path_s_vectors_and_every_document(os_uploaded):
    """``deploy.embed_in = "cluster"``: a new version (another ``m``: another deploy key) filled by ``_reindex``
    through the ``text_embedding`` pipeline; the same documents and (cosine > 0.9999) the same vectors as the
    client-embedded index of the loop."""
    project, info = os_uploaded
    backend, alias = project.backend, project.cfg.dense_alias
    client_index = project.dense_index("student")
    keep = project.cfg.deploy.keep_versions
    # keep the client-embedded versions (the loop's and the alias test's) to compare with
    project.cfg.deploy.embed_in, project.cfg.deploy.m, project.cfg.deploy.keep_versions = "cluster", 12, 5
    try:
        out = project.deploy()
    finally:
        project.cfg.deploy.embed_in, project.cfg.deploy.m, project.cfg.deploy.keep_versions = "client", 16, keep
    assert out["index"] != client_index and backend.alias_targets(alias) == [out["index"]]
    assert out["docs"] == out["embedded_now"] == backend.count(client_index) == len(project.dataset.corpus)
    assert backend.index_meta(out["index"])["embedded_by"] == "cluster"
    theirs = {h["_id"]: h["_source"] for h in backend.scan(out["index"], [VECTOR_FIELD, "title", "text"])}
    ours = {h["_id"]: h["_source"] for h in backend.scan(client_index, [VECTOR_FIELD, "title", "text"])}
    assert set(theirs) == set(ours)
    some = sorted(ours)[:20]
    a = np.asarray([theirs[i][VECTOR_FIELD] for i in some])
    b = np.asarray([ours[i][VECTOR_FIELD] for i in some])
    assert np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) > 0.9999
    assert all(theirs[i]["text"] == ours[i]["text"] and theirs[i].get("title") == ours[i].get("title") for i in some)


def test_neural_answers_as_client_side_knn_of_the_same_model(os_uploaded):
    from sentence_transformers import SentenceTransformer

    from esdistill.search import Neural

    project, info = os_uploaded
    backend, index = project.backend, project.dense_index("student")
    st = SentenceTransformer(project.student_path(), device="cpu")
    neural = Neural(backend.client, index, info["model_id"], k=10, num_candidates=50)
    for text in list(project.eval_queries().values())[:4]:
        want = [h["_id"] for h in backend.knn_search(index, st.encode(text).tolist(), 10, 50)["hits"]["hits"]]
        assert want and [d for d, _ in neural.search(text).hits] == want


def test_neural_and_the_cluster_hybrid_are_evaluated_and_written_like_the_other_systems(os_uploaded, osc):
    from esdistill.results import RESULTS_INDEX

    project, info = os_uploaded
    systems = list(project.cfg.evaluate.systems)
    project.cfg.evaluate.systems = [*systems, "neural", "hybrid_cluster"]
    try:
        report = project.evaluate()
        key = project._eval_cache().key
    finally:
        project.cfg.evaluate.systems = systems
    data = json.loads(Path(report["json"]).read_text())
    n_q = len(project.dataset.test_qrels)
    assert set(data["systems"]) == {"bm25", "pipeline", "student", "hybrid", "neural", "hybrid_cluster"}
    for name in ("neural", "hybrid_cluster"):
        assert 0.0 <= data["systems"][name]["ndcg@10"] <= 1.0
        assert len(data["systems"][name]["per_query"]["ndcg@10"]) == n_q
    assert "inside the cluster" in data["measured"]["neural"] and "min_max" in data["measured"]["hybrid_cluster"]
    # the cluster's fusion is not the client's RRF: its scores are normalised (at most 1)
    run = json.loads(project._system_cache("hybrid_cluster").path("run.json").read_text())["run"]
    assert all(0.0 <= s <= 1.0 + 1e-6 for hits in run.values() for s in hits.values())
    osc.indices.refresh(index=RESULTS_INDEX)
    assert osc.count(index=RESULTS_INDEX, body={"query": {"term": {"evaluate_key": key}}})["count"] == 6 * n_q + 6


def test_evaluate_refuses_the_cluster_systems_before_running_when_the_model_is_not_in_the_cluster(os_project):
    project, _ = os_project
    systems, model_id = list(project.cfg.evaluate.systems), project.cfg.deploy.model_id
    project.cfg.evaluate.systems, project.cfg.deploy.model_id = ["bm25", "neural"], "esdistill-not-uploaded"
    try:
        with pytest.raises(ClusterError, match="no trained model 'esdistill-not-uploaded'") as e:
            project.evaluate()
    finally:
        project.cfg.evaluate.systems, project.cfg.deploy.model_id = systems, model_id
    assert "esdistill export --upload --start" in e.value.hint


@pytest.fixture
def os_export(tmp_path, tiny_models):
    from esdistill.eland_export import ElandExport

    name = f"esdistill-test-{uuid.uuid4().hex[:8]}"
    return ElandExport(tmp_path / "traced.pt", tmp_path / "c.json", tmp_path / "v.json", name, 32, 64, "bert",
                       True, Path(tiny_models["bi"]))


def test_upload_refusals_name_the_setting_and_leave_no_model_behind(os_backend, osc, os_export, monkeypatch):
    from esdistill import opensearch_ml as ml
    from esdistill.errors import EsdistillError

    setting = "plugins.ml_commons.only_run_on_ml_node"
    osc.cluster.put_settings(body={"transient": {setting: True}})  # a cluster without ml nodes refuses to deploy
    try:
        with pytest.raises(EsdistillError, match="did not serve the student") as e:
            os_backend.upload_model(os_export, start=True)
    finally:
        osc.cluster.put_settings(body={"transient": {setting: None}})
    assert setting in e.value.hint and "PUT _cluster/settings" in e.value.hint
    assert ml.models_named(osc, os_export.model_id) == []
    monkeypatch.setattr(ml, "MIN_COSINE", 1.01)  # a _predict that misses the bar is never served
    with pytest.raises(EsdistillError, match="does not reproduce"):
        os_backend.upload_model(os_export, start=True)
    assert ml.models_named(osc, os_export.model_id) == []


def test_an_existing_model_is_refused_without_replace_and_an_undeployed_one_named(os_backend, osc, os_export):
    from esdistill import opensearch_ml as ml
    from esdistill.cluster_embed import require_deployed

    with pytest.raises(ClusterError, match="no trained model"):
        require_deployed(os_backend, os_export.model_id)
    try:
        info = os_backend.upload_model(os_export)  # verified, then undeployed (no --start)
        assert info["started"] is False and info["predict_min_cosine"] > ml.MIN_COSINE
        with pytest.raises(ClusterError, match="already holds a model named") as e:
            os_backend.upload_model(os_export)
        assert "--replace" in e.value.hint
        with pytest.raises(ClusterError, match="is not deployed") as e:
            require_deployed(os_backend, os_export.model_id)
        assert "_plugins/_ml/models/" in e.value.hint and "--start" in e.value.hint
    finally:
        for m in ml.models_named(osc, os_export.model_id):
            ml.remove(osc, m["model_id"])


def test_the_cluster_systems_are_refused_on_elasticsearch(es):
    from esdistill.backends import backend_for
    from esdistill.cluster_embed import require_deployed
    from esdistill.search import ClusterHybrid

    with pytest.raises(ClusterError, match="no machine learning"):  # neural: the test build has no ML
        require_deployed(es, "esdistill-student")
    with pytest.raises(ClusterError, match="hybrid_cluster.*OpenSearch's") as e:
        ClusterHybrid(es, "any", "esdistill-student").body("query")
    assert "client" in e.value.hint
    assert backend_for(es).name == "elasticsearch"
