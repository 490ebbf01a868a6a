"""``deploy``: the dense index on the real cluster with the real MiniLM; kNN finds a doc by its own vector."""

import pytest

from esdistill.config import DeployConfig
from esdistill.data import Doc
from esdistill.deploy import check_dims, deploy_student, index_dims
from esdistill.errors import ModelError
from esdistill.models import load_bi_encoder
from esdistill.search import knn_body


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_bi_encoder(minilm_path, max_length=64)


def test_deploy_and_knn_returns_own_vector_first(es, index_name, minilm):
    docs = [Doc(f"d{i}", f"Title {i}", t) for i, t in enumerate(
        ["Vitamin D deficiency and bone density", "Neural networks for protein folding",
         "Aspirin lowers the risk of heart attack", "Antibiotic resistance in hospital bacteria",
         "Sleep deprivation impairs memory", "Exercise improves insulin sensitivity",
         "Gut microbiome and obesity", "Coffee consumption and liver disease"] * 3)]
    for i, d in enumerate(docs):
        d.text = f"{d.text} (variant {i})"
    info = deploy_student(es, minilm, docs, len(docs), alias=index_name, key="abc123", cfg=DeployConfig(),
                          meta={"model": "minilm"})
    assert info["docs"] == len(docs) and info["dims"] == 384 and info["similarity"] == "dot_product"
    assert info["truncated_docs"] == 0 and info["max_tokens"] == 64
    assert es.indices.get_alias(name=index_name).body.keys() == {info["index"]}
    vectors = minilm.encode([d.full_text for d in docs[:5]], normalize_embeddings=True)
    for d, vec in zip(docs[:5], vectors, strict=True):
        resp = es.search(index=index_name, **knn_body(vec.tolist(), k=3, num_candidates=50)).body
        assert resp["hits"]["hits"][0]["_id"] == d.id
        assert resp["hits"]["hits"][0]["_score"] > 0.999  # dot_product score (1 + cos) / 2 of itself
    # rerun with the same key: nothing is embedded again
    again = deploy_student(es, minilm, docs, len(docs), alias=index_name, key="abc123", cfg=DeployConfig(), meta={})
    assert again["embedded_now"] == 0


def test_dims_mismatch_is_refused_with_both_numbers(es, index_name):
    es.indices.create(index=index_name, mappings={"properties": {"embedding": {"type": "dense_vector", "dims": 8}}})
    assert index_dims(es, index_name) == 8
    with pytest.raises(ModelError, match=r"holds 8-dim vectors but the model makes 384-dim"):
        check_dims(es, index_name, 384)


def test_long_documents_are_truncated_and_counted(es, index_name, minilm):
    docs = [Doc("short", "", "a short text"), Doc("long", "", "word " * 500), Doc("long2", "", "cell " * 70)]
    info = deploy_student(es, minilm, docs, 3, alias=index_name, key="trunc1", cfg=DeployConfig(), meta={})
    assert info["truncated_docs"] == 2 and info["docs"] == 3


def test_a_second_deploy_syncs_edits_additions_and_deletions(es, index_name, minilm):
    """The source changed: only new and edited documents are embedded, deleted ones leave the dense index, and
    the count matches the source again."""
    from esdistill.indexing import existing_ids

    docs = [Doc(f"d{i}", f"title {i}", f"text number {i}") for i in range(12)]
    first = deploy_student(es, minilm, docs, 12, alias=index_name, key="sync1", cfg=DeployConfig(), meta={})
    assert first["embedded_now"] == 12
    edited = Doc("d3", "title 3", "an edited text about aspirin")
    changed = [d for d in docs if d.id not in ("d3", "d5")] + [edited, Doc("d99", "new", "a new document")]
    again = deploy_student(es, minilm, changed, len(changed), alias=index_name, key="sync1", cfg=DeployConfig(),
                           meta={})
    assert again["embedded_now"] == 2 and again["deleted_now"] == 1  # d3 (edited), d99 (new); d5 deleted
    assert existing_ids(es, index_name) == {d.id for d in changed}
    vec = minilm.encode(edited.full_text, normalize_embeddings=True).tolist()
    assert es.search(index=index_name, **knn_body(vec, 1, 20)).body["hits"]["hits"][0]["_id"] == "d3"


def test_replicas_follow_the_cluster_size(es, index_name, minilm):
    """``auto``: no replica on a single node (it could never be assigned); an explicit count is kept."""
    docs = [Doc("a", "", "one"), Doc("b", "", "two")]
    info = deploy_student(es, minilm, docs, 2, alias=index_name, key="rep1", cfg=DeployConfig(), meta={})
    settings = es.indices.get_settings(index=info["index"]).body[info["index"]]["settings"]["index"]
    assert info["replicas"] == 0 and settings["number_of_replicas"] == "0"
    info = deploy_student(es, minilm, docs, 2, alias=index_name, key="rep2", cfg=DeployConfig(replicas=1), meta={})
    settings = es.indices.get_settings(index=info["index"]).body[info["index"]]["settings"]["index"]
    assert info["replicas"] == 1 and settings["number_of_replicas"] == "1"


def test_an_index_of_the_same_key_embedded_by_other_weights_is_refused(es, index_name, minilm):
    """One config's trainings can differ (a time budget's steps): the deploy key names the inputs, so the index
    records the weights too, and another model of the same key is refused — by evaluation and by deploy alike —
    naming both, instead of searching one model's vectors with the other's queries."""
    from esdistill.errors import ClusterError

    docs = [Doc("a", "", "one"), Doc("b", "", "two")]
    first = deploy_student(es, minilm, docs, 2, alias=index_name, key="w1", cfg=DeployConfig(),
                           meta={"model": "/runs/a/model", "weights": "aaa"})
    assert first["embedded_now"] == 2
    same = deploy_student(es, minilm, docs, 2, alias=index_name, key="w1", cfg=DeployConfig(),
                          meta={"model": "/runs/a/model", "weights": "aaa"})
    assert same["embedded_now"] == 0
    for move_alias in (True, False):
        with pytest.raises(ClusterError, match=r"another model trained from the same inputs.*aaa.*bbb") as err:
            deploy_student(es, minilm, docs, 2, alias=index_name, key="w1", cfg=DeployConfig(),
                           meta={"model": "/runs/b/model", "weights": "bbb"}, move_alias=move_alias)
        assert "/runs/a/model" in err.value.hint
    # an index from before weights were recorded is read as it was
    legacy = deploy_student(es, minilm, docs, 2, alias=index_name, key="w1", cfg=DeployConfig(), meta={})
    assert legacy["embedded_now"] == 0
