"""The local OpenSearch node (esdistill/opensearch_node.py), started for real: assembled from Maven Central, with
k-NN, ml-commons and neural-search, the english analyzer, and the refusals a user meets (Java, Maven, ports, a
node that does not come up).

The node and its client are tests/conftest.py's ``os_node`` and ``osc`` (port ESDISTILL_TEST_OS_PORT, default 9400;
transport port + 100), shared with tests/test_opensearch_backend.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

import pytest


@pytest.fixture
def os_index(osc):
    import uuid

    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    osc.indices.delete(index=name, ignore_unavailable=True)


def test_root_says_opensearch_with_the_loop_s_plugins(osc, os_node):
    info = osc.info()
    assert info["version"]["distribution"] == "opensearch"
    assert info["version"]["number"] == os_node.s.version
    plugins = {p["component"] for p in osc.cat.plugins(format="json")}
    assert {"opensearch-knn", "opensearch-ml", "opensearch-neural-search", "opensearch-job-scheduler"} <= plugins
    modules = {m["name"] for n in osc.nodes.info(metric="plugins")["nodes"].values() for m in n["modules"]}
    assert {"lang-painless", "analysis-common", "reindex", "ingest-common", "mapper-extras"} <= modules


def test_a_second_start_reuses_the_running_node_and_the_assembly(os_node, monkeypatch):
    before = os_node.status()
    assert before.running and os_node.assembled()
    again = os_node.start()
    assert again.pid == before.pid and again.running
    monkeypatch.setenv("PATH", "/nonexistent")  # no mvn: the assembly on disk is used as it is
    assert os_node.assemble() == os_node.dist


def test_knn_vector_lucene_index_answers_knn_queries(osc, os_index):
    from opensearchpy import helpers

    osc.indices.create(index=os_index, body={
        "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0}},
        "mappings": {"properties": {
            "title": {"type": "text", "analyzer": "english"},
            "emb": {"type": "knn_vector", "dimension": 3,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"}}}}})
    docs = {"east": [1.0, 0.0, 0.0], "north": [0.0, 1.0, 0.0], "up": [0.0, 0.0, 1.0],
            "north-east": [0.7, 0.7, 0.0], "north-up": [0.0, 0.6, 0.8]}
    ok, errors = helpers.bulk(osc, ({"_index": os_index, "_id": k, "title": k, "emb": v} for k, v in docs.items()),
                              refresh=True)
    assert ok == len(docs) and not errors
    mapping = osc.indices.get_mapping(index=os_index)[os_index]["mappings"]["properties"]["emb"]
    assert mapping["method"]["engine"] == "lucene"
    resp = osc.search(index=os_index, body={"size": 3, "_source": False,
                                            "query": {"knn": {"emb": {"vector": [0.1, 0.9, 0.05], "k": 3}}}})
    assert [h["_id"] for h in resp["hits"]["hits"]] == ["north", "north-east", "north-up"]


def test_english_analyzer_stems(osc):
    tokens = osc.indices.analyze(body={"analyzer": "english", "text": "Running studies of the cats"})["tokens"]
    assert [t["token"] for t in tokens] == ["run", "studi", "cat"]


# ----------------------------------------------------------------------------------------------- refusals
def _fake_jdk(root: Path, major: int) -> Path:
    """A folder shaped like a JDK of ``major`` (``release`` file, ``bin/java``): what the finder reads."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (root / "release").write_text(f'JAVA_VERSION="{major}.0.1"\n')
    return root


@pytest.mark.parametrize("major", [8, 25])
def test_a_jdk_out_of_range_is_refused_naming_the_range(tmp_path, major):
    from esdistill.config import LocalOpenSearchSettings
    from esdistill.errors import ClusterError
    from esdistill.opensearch_node import OpenSearchNode

    node = OpenSearchNode(LocalOpenSearchSettings(version="2.19.1", java_home=_fake_jdk(tmp_path / "jdk", major),
                                                  home=tmp_path))
    with pytest.raises(ClusterError, match=r"needs Java 11 to 23.*\(Java %d\)" % major) as e:
        node.java_home()
    assert "ESDISTILL_OS_LOCAL_JAVA_HOME" in e.value.hint
    assert OpenSearchNode(LocalOpenSearchSettings(version="3.2.0", home=tmp_path)).java_range() == (21, None)


def test_a_busy_port_is_refused_before_anything_is_fetched(tmp_path):
    from esdistill.config import LocalOpenSearchSettings
    from esdistill.errors import ClusterError
    from esdistill.opensearch_node import OpenSearchNode

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} on 127.0.0.1 .* already in use"):
            OpenSearchNode(LocalOpenSearchSettings(port=port, home=tmp_path)).start()
    assert not (tmp_path / "dist").exists()


def test_a_version_maven_does_not_have_is_refused_naming_the_coordinates(tmp_path):
    from esdistill.config import LocalOpenSearchSettings
    from esdistill.errors import ClusterError
    from esdistill.opensearch_node import OpenSearchNode

    node = OpenSearchNode(LocalOpenSearchSettings(version="2.19.99", home=tmp_path, port=_free_port()))
    with pytest.raises(ClusterError, match=r"org\.opensearch\.distribution\.integ-test-zip:opensearch:zip:2\.19\.99"):
        node.assemble()
    assert not node.dist.exists() and not list(node.dist.parent.glob(".build-*"))


def test_a_node_that_does_not_come_up_shows_its_log(os_node):
    """A setting the node refuses: the error carries the end of the node's own log (which names the setting)."""
    from esdistill.config import LocalOpenSearchSettings
    from esdistill.errors import ClusterError
    from esdistill.opensearch_node import OpenSearchNode

    port = _free_port(avoid={os_node.s.port})
    bad = OpenSearchNode(LocalOpenSearchSettings(port=port, transport_port=_free_port(avoid={port}),
                                                 extra_settings={"esdistill.no_such_setting": "1"}))
    try:
        with pytest.raises(ClusterError, match=r"(?s)OpenSearch exited during start-up.*esdistill\.no_such_setting"):
            bad.start(timeout=240)
    finally:
        bad.stop()
        shutil.rmtree(bad.node, ignore_errors=True)


def _free_port(avoid: set[int] = frozenset()) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid and port + 100 not in avoid and port < 65000:
            return port


# ------------------------------------------------------------------------------------------ ml-commons
@pytest.fixture(scope="module")
def tiny_zip(tiny_models, tmp_path_factory):
    from esdistill import opensearch_ml as ml

    zp = ml.torchscript_zip(tiny_models["bi"], tmp_path_factory.mktemp("zip"))
    assert zp.dims == 32 and zp.max_diff < 1e-5
    return zp


@contextlib.contextmanager
def _deployed(osc, zp, via: str):
    """Register ``zp`` ``via`` chunks or a file:// URL, deploy it (libtorch from the assembly: nothing is
    downloaded), yield its id; undeploy and delete it after."""
    from esdistill import opensearch_ml as ml

    ml.require_ml(osc)
    model_id = ml.register(osc, zp, f"esdistill-test-tiny-{via}", via=via)
    try:
        ml.deploy(osc, model_id)
        yield model_id
    finally:
        osc.transport.perform_request("POST", f"/_plugins/_ml/models/{model_id}/_undeploy")
        osc.transport.perform_request("DELETE", f"/_plugins/_ml/models/{model_id}")


@pytest.fixture(scope="module")
def tiny_in_cluster(osc, tiny_zip, monkeypatch_module):
    """The tiny bi-encoder uploaded in chunks (as to any cluster) and deployed; the chunk size made small so that
    the upload takes several chunks."""
    from esdistill import opensearch_ml as ml

    monkeypatch_module.setattr(ml, "CHUNK_BYTES", tiny_zip.path.stat().st_size // 3 + 1)
    with _deployed(osc, tiny_zip, "chunks") as model_id:
        yield model_id


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_a_cluster_that_refuses_custom_models_is_named_with_the_setting_to_change(osc, tiny_zip):
    from esdistill import opensearch_ml as ml
    from esdistill.errors import ClusterError

    setting = "plugins.ml_commons.allow_registering_model_via_local_file"
    osc.cluster.put_settings(body={"transient": {setting: False}})
    try:
        with pytest.raises(ClusterError) as e:
            ml.register(osc, tiny_zip, "esdistill-test-refused")
    finally:
        osc.cluster.put_settings(body={"transient": {setting: None}})
    assert "400" in str(e.value) and setting in e.value.hint and "PUT _cluster/settings" in e.value.hint


def test_a_model_registered_from_a_file_url_predicts_the_same(osc, os_node, tiny_zip, tiny_in_cluster):
    import dataclasses

    import numpy as np

    from esdistill import opensearch_ml as ml

    shared = dataclasses.replace(tiny_zip, path=os_node.share_file(tiny_zip.path))
    texts = ["bone density", "a cat on a mat"]
    with _deployed(osc, shared, "url") as model_id:
        assert np.allclose(ml.predict(osc, model_id, texts), ml.predict(osc, tiny_in_cluster, texts), atol=1e-6)


def test_a_student_uploaded_to_ml_commons_predicts_what_sentence_transformers_encodes(osc, tiny_in_cluster,
                                                                                      tiny_models):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from esdistill import opensearch_ml as ml

    texts = ["a short one", "a somewhat longer sentence about vitamin D and bone density in older adults"]
    got = ml.predict(osc, tiny_in_cluster, texts)
    ref = SentenceTransformer(tiny_models["bi"], device="cpu").encode(texts)
    assert got.shape == (2, 32)
    assert np.allclose(got, ref, atol=1e-4)
    assert ml.verify_predict(osc, tiny_in_cluster, tiny_models["bi"]) > ml.MIN_COSINE


DOCS = {"d1": "Vitamin D supplements and bone density in older adults",
        "d2": "The cat sat on the mat",
        "d3": "Statins lower cholesterol in patients with heart disease",
        "d4": "Bone fractures heal faster with calcium",
        "d5": "Deep learning models for protein folding",
        "d6": "How to reset a forgotten password"}


@pytest.fixture(scope="module")
def embedded_in_cluster(osc, tiny_in_cluster):
    """An index whose default ingest pipeline embeds ``text`` into ``emb`` with the deployed model."""
    import uuid

    from opensearchpy import helpers

    from esdistill import opensearch_ml as ml

    name = f"test-{uuid.uuid4().hex[:10]}"
    osc.ingest.put_pipeline(id=name, body=ml.ingest_pipeline_body(tiny_in_cluster, {"text": "emb"}))
    osc.indices.create(index=name, body={
        "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0,
                               "default_pipeline": name}},
        "mappings": {"properties": {"text": {"type": "text", "analyzer": "english"},
                                    "emb": {"type": "knn_vector", "dimension": 32,
                                            "method": {"name": "hnsw", "engine": "lucene",
                                                       "space_type": "cosinesimil"}}}}})
    ok, errors = helpers.bulk(osc, ({"_index": name, "_id": k, "text": v} for k, v in DOCS.items()), refresh=True)
    assert ok == len(DOCS) and not errors
    yield name
    osc.indices.delete(index=name, ignore_unavailable=True)
    osc.ingest.delete_pipeline(id=name)


def test_the_ingest_pipeline_embeds_as_sentence_transformers_does_and_neural_queries_match_client_knn(
        osc, tiny_in_cluster, embedded_in_cluster, tiny_models):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from esdistill import opensearch_ml as ml

    st = SentenceTransformer(tiny_models["bi"], device="cpu")
    stored = {h["_id"]: h["_source"]["emb"] for h in osc.search(
        index=embedded_in_cluster, body={"size": 10, "query": {"match_all": {}}})["hits"]["hits"]}
    ids = sorted(DOCS)
    got = np.asarray([stored[i] for i in ids], dtype=np.float32)
    ref = st.encode([DOCS[i] for i in ids])
    assert np.min(np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)) > 0.9999
    query = "vitamin D and bones"
    neural = osc.search(index=embedded_in_cluster, body={
        "size": 3, "_source": False, "query": ml.neural_clause("emb", query, tiny_in_cluster, 3)})["hits"]["hits"]
    client = osc.search(index=embedded_in_cluster, body={
        "size": 3, "_source": False,
        "query": {"knn": {"emb": {"vector": st.encode(query).tolist(), "k": 3}}}})["hits"]["hits"]
    assert [h["_id"] for h in neural] == [h["_id"] for h in client]
    assert np.allclose([h["_score"] for h in neural], [h["_score"] for h in client], atol=1e-4)


def test_a_hybrid_query_fuses_bm25_and_neural_through_the_normalization_pipeline(
        osc, tiny_in_cluster, embedded_in_cluster):
    from esdistill import opensearch_ml as ml

    pipeline = f"{embedded_in_cluster}-hybrid"
    osc.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}",
                                  body=ml.normalization_pipeline_body([0.5, 0.5]))
    try:
        text = DOCS["d3"]  # first by BM25 and (its own vector: cosine 1) by neural: 1.0 after min-max and the mean
        hits = osc.search(index=embedded_in_cluster, params={"search_pipeline": pipeline}, body={
            "size": 6, "_source": False,
            "query": {"hybrid": {"queries": [{"match": {"text": text}},
                                             ml.neural_clause("emb", text, tiny_in_cluster, 6)]}}})["hits"]["hits"]
    finally:
        osc.transport.perform_request("DELETE", f"/_search/pipeline/{pipeline}")
    assert hits[0]["_id"] == "d3" and abs(hits[0]["_score"] - 1.0) < 1e-6
    assert len(hits) == len(DOCS) and all(0.0 <= h["_score"] < 1.0 for h in hits[1:])


# --------------------------------------------------------------------------------------- config and CLI
def test_the_engine_switch_in_the_config_file_and_a_wrong_one_named(tmp_path):
    from esdistill.config import load_config
    from esdistill.errors import ConfigError

    p = tmp_path / "c.toml"
    p.write_text('[data]\nname = "s"\nbeir = "x"\n[cluster]\nengine = "opensearch"\n')
    assert load_config(p).cluster_settings().engine == "opensearch"
    p.write_text('[data]\nname = "s"\nbeir = "x"\n[cluster]\nengine = "solr"\n')
    with pytest.raises(ConfigError, match=r"cluster\.engine.*'solr'"):
        load_config(p)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_cluster_status_speaks_of_the_opensearch_node_with_the_switch(how):
    import subprocess
    import sys

    port = _free_port()
    env = dict(os.environ, ESDISTILL_OS_LOCAL_PORT=str(port), ESDISTILL_OS_LOCAL_VERSION="2.19.1")
    args = ["cluster", "status"]
    if how == "option":
        args.append("--engine=opensearch")
    else:
        env["ESDISTILL_ES_ENGINE"] = "opensearch"
    proc = subprocess.run([sys.executable, "-m", "esdistill", *args], capture_output=True, text=True, env=env,
                          timeout=900)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out
    assert f"not running: http://127.0.0.1:{port} version 2.19.1" in out and "opensearch" in out
