"""In-cluster embedding (``deploy.embed_in = "cluster"``): the request bodies it builds, and its refusal on the
test build (no ML, no ingest processors, no _reindex) before anything is created or moved."""

from __future__ import annotations

import pytest

from esdistill.cluster_embed import INPUT_FIELD, embed_pipeline, reindex_request
from esdistill.errors import ClusterError


def test_pipeline_for_esdistill_s_own_index_embeds_title_and_text():
    body = embed_pipeline("my-student", ["title", "text"])
    kinds = [next(iter(p)) for p in body["processors"]]
    assert kinds == ["set", "inference", "remove"]
    assert body["processors"][0]["set"] == {"field": INPUT_FIELD, "value": "{{{title}}} {{{text}}}"}
    inference = body["processors"][1]["inference"]
    assert inference["model_id"] == "my-student"
    assert inference["input_output"] == [{"input_field": INPUT_FIELD, "output_field": "embedding"}]


def test_pipeline_for_a_user_index_maps_its_fields_onto_title_and_text():
    """As :func:`esdistill.indexing.doc_from_source` reads them: the first field is the title, the rest the text."""
    body = embed_pipeline("m", ["name", "body.description", "tags"])
    procs = body["processors"]
    assert procs[0] == {"set": {"field": "title", "value": "{{{name}}}"}}
    assert procs[1] == {"set": {"field": "text", "value": "{{{body.description}}} {{{tags}}}"}}
    assert procs[2]["set"]["field"] == INPUT_FIELD
    assert procs[-1] == {"remove": {"field": [INPUT_FIELD, "name", "body", "tags"], "ignore_missing": True}}
    single = embed_pipeline("m", ["content"])["processors"]
    assert single[0] == {"set": {"field": "text", "value": "{{{content}}}"}}  # no title: the text alone


def test_reindex_request_is_a_sliced_task_through_the_pipeline():
    req = reindex_request("products", "esdistill-products-student-abc", "m-embed", ["name", "description"], slices=4)
    assert req["source"] == {"index": "products", "_source": ["name", "description"], "size": 200}
    assert req["dest"] == {"index": "esdistill-products-student-abc", "pipeline": "m-embed", "op_type": "index"}
    assert req["slices"] == 4 and req["wait_for_completion"] is False and req["conflicts"] == "abort"


def test_deploy_in_the_cluster_is_refused_on_the_test_build_and_moves_nothing(tiny_project, es):
    from esdistill.pipeline import Project
    from esdistill.stages.keys import trained_key

    project, _ = tiny_project
    alias = project.cfg.dense_alias
    before = set(es.indices.get_alias(name=alias).body)
    indices_before = set(es.indices.get(index="esdistill-*").body)
    cfg = project.cfg.model_copy(update={"deploy": project.cfg.deploy.model_copy(update={"embed_in": "cluster"})})
    other = Project(cfg, client=es)
    assert other._deploy_key() == project._deploy_key()  # who embeds is not part of what is deployed
    with pytest.raises(ClusterError, match="no machine learning") as e:
        other.deploy()
    assert "docker" in e.value.hint
    assert set(es.indices.get_alias(name=alias).body) == before
    assert set(es.indices.get(index="esdistill-*").body) == indices_before
    # the model id names the trained student: its training and the weights it wrote
    trained = project._train_cache()
    assert trained.info()["weights"] and trained_key(trained) != trained.key
    assert other.student_model_id() == f"esdistill-{cfg.data.name}-{trained_key(trained)[:8]}"
