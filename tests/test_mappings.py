"""Every JSON body in mappings/ is accepted by the real cluster of its engine (``opensearch-*``: the OpenSearch
node) and reads back as sent."""

import pytest

from esdistill.config import DeployConfig
from esdistill.deploy import dense_body
from esdistill.indexing import MAPPINGS_DIR, load_mapping

BODIES = sorted(p.name for p in MAPPINGS_DIR.glob("*_index.json") if not p.name.startswith("opensearch-"))
OS_BODIES = sorted(p.name for p in MAPPINGS_DIR.glob("opensearch-*_index.json"))


def test_every_mapping_file_is_covered():
    assert BODIES == ["bm25_index.json", "dense_index.json", "results_index.json"]
    assert OS_BODIES == [f"opensearch-{name}" for name in BODIES]
    # the one non-index body, the ingest pipeline, is tested in test_eland_export.py
    assert sorted(p.name for p in MAPPINGS_DIR.glob("*.json")) == sorted([*BODIES, *OS_BODIES, "embed_pipeline.json"])


@pytest.mark.parametrize("name", OS_BODIES)
def test_opensearch_mapping_is_accepted_and_reads_back(osc, name):
    import uuid

    body, index = load_mapping(name), f"test-{uuid.uuid4().hex[:10]}"
    try:
        osc.indices.create(index=index, body=body)
        got = osc.indices.get_mapping(index=index)[index]["mappings"]
        for field, spec in body["mappings"]["properties"].items():
            assert got["properties"][field]["type"] == spec["type"]
        settings = osc.indices.get_settings(index=index)[index]["settings"]["index"]
        assert settings["analysis"]["analyzer"]["esdistill_text"]["type"] == "english"
    finally:
        osc.indices.delete(index=index, ignore_unavailable=True)


@pytest.mark.parametrize("name", BODIES)
def test_mapping_is_accepted_and_reads_back(es, index_name, name):
    body = load_mapping(name)
    es.indices.create(index=index_name, **body)
    got = es.indices.get_mapping(index=index_name).body[index_name]["mappings"]
    for field, spec in body["mappings"]["properties"].items():
        assert got["properties"][field]["type"] == spec["type"]
    settings = es.indices.get_settings(index=index_name).body[index_name]["settings"]["index"]
    assert settings["analysis"]["analyzer"]["esdistill_text"]["stopwords"] == "_english_"


@pytest.mark.parametrize("index_type", ["hnsw", "int8_hnsw", "bbq_hnsw", "flat"])
def test_dense_body_index_options_are_accepted(es, index_name, index_type):
    body = dense_body(384, True, DeployConfig(index_type=index_type, m=24, ef_construction=64))
    es.indices.create(index=index_name, **body)
    vec = es.indices.get_mapping(index=index_name).body[index_name]["mappings"]["properties"]["embedding"]
    assert vec["dims"] == 384 and vec["similarity"] == "dot_product"
    assert vec["index_options"]["type"] == index_type
    if "hnsw" in index_type:
        assert vec["index_options"]["m"] == 24 and vec["index_options"]["ef_construction"] == 64

