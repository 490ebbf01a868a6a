"""The core loop on every other supported Elasticsearch (the newest 9.x test build): index, candidates, deploy,
search, evaluate — with the same explicit index options everywhere (defaults of dense_vector differ by version)."""

import os
import uuid

import pytest

from esdistill.config import ES_VERSION, SUPPORTED_ES_VERSIONS

OTHER = [v for v in SUPPORTED_ES_VERSIONS if v != ES_VERSION]
PORT = int(os.environ.get("ESDISTILL_TEST_OTHER_PORT", "9260"))


@pytest.fixture(scope="module", params=OTHER)
def other_es(request):
    from esdistill.cluster import LocalCluster, connect
    from esdistill.config import ClusterSettings, LocalClusterSettings

    lc = LocalCluster(LocalClusterSettings(version=request.param, port=PORT, heap="512m"))
    lc.start()
    client = connect(ClusterSettings(url=lc.s.url))
    yield request.param, lc.s.url, client
    client.close()
    lc.stop()


def test_core_loop_on_another_version(other_es, tmp_path, tiny_models):
    from esdistill.pipeline import Project

    from .conftest import tiny_config

    version, url, client = other_es
    assert client.nodes.info().body["nodes"].popitem()[1]["version"] == version
    name = f"v{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path, url, tiny_models, name, teacher={"model": tiny_models["ce"]},
                      evaluate={"systems": ["bm25", "pipeline", "student", "hybrid"]})
    project = Project(cfg, client=client)
    report = project.run()
    assert set(report["summary"]["systems"]) == {"bm25", "pipeline", "student", "hybrid"}
    index = project.dense_index()
    mapping = client.indices.get_mapping(index=index).body[index]["mappings"]["properties"]["embedding"]
    assert mapping["index_options"]["type"] == "hnsw" and mapping["similarity"] == "dot_product"
    assert client.count(index=cfg.dense_alias).body["count"] == len(project.dataset.corpus)
