"""Zero-downtime cut-over on the real cluster: versioned indices, atomic alias moves, rollback, pruning."""

import threading
import time

import pytest

from esdistill.config import DeployConfig
from esdistill.data import Doc
from esdistill.deploy import deploy_student, rollback, versions
from esdistill.errors import ClusterError
from esdistill.indexing import count, existing_ids
from esdistill.models import load_bi_encoder
from esdistill.search import Student, knn_body


@pytest.fixture(scope="module")
def tiny_bi(tiny_models):
    return load_bi_encoder(tiny_models["bi"], max_length=32)


def docs(n):
    return [Doc(f"d{i}", f"title {i}", f"text about topic {i % 7} number {i}") for i in range(n)]


def test_queries_never_fail_during_cutover_and_rollback(es, index_name, tiny_bi):
    corpus = docs(300)
    cfg = DeployConfig(batch_size=50, keep_versions=2)
    first = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "v1key0000001", cfg, meta={})
    student = Student(es, index_name, tiny_bi, k=5, num_candidates=20)
    vec = student.encode("topic 3")

    stop, ok, failures = threading.Event(), [0], []

    def hammer():
        while not stop.is_set():
            try:
                hits = es.search(index=index_name, **knn_body(vec, 5, 20)).body["hits"]["hits"]
                assert len(hits) == 5
                ok[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test
                failures.append(repr(e))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.2)
        second = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "v2key0000002", cfg, meta={})
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert not failures and ok[0] > 10
    assert second["alias_left"] == [first["index"]]
    assert set(es.indices.get_alias(name=index_name).body) == {second["index"]}
    assert count(es, index_name) == 300 and existing_ids(es, index_name) == {d.id for d in corpus}

    frm, to = rollback(es, index_name)
    assert (frm, to) == (second["index"], first["index"])
    assert set(es.indices.get_alias(name=index_name).body) == {first["index"]}
    with pytest.raises(ClusterError, match="oldest version"):
        rollback(es, index_name)

    # a third deploy keeps two versions: the oldest (not live) one is pruned
    point_back = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "v3key0000003", cfg, meta={})
    names = [v["index"] for v in versions(es, index_name)]
    assert point_back["index"] in names and len(names) == 2


def test_failed_deploy_never_moves_the_alias(es, index_name, tiny_bi):
    corpus = docs(40)
    cfg = DeployConfig(batch_size=20)
    first = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "okkey0000001", cfg, meta={})
    # claim more documents than the corpus yields: the count check fails, the alias must stay
    with pytest.raises(ClusterError, match="expected 41"):
        deploy_student(es, tiny_bi, corpus, 41, index_name, "badkey000002", cfg, meta={})
    assert set(es.indices.get_alias(name=index_name).body) == {first["index"]}


def test_knn_filter_and_rescore_vector_are_accepted(es, index_name, tiny_bi):
    corpus = docs(60)
    info = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "q8key0000001",
                          DeployConfig(index_type="int8_hnsw"), meta={})
    vec = Student(es, index_name, tiny_bi).encode("topic 2")
    body = knn_body(vec, 5, 30, filter={"match": {"text": "number"}}, oversample=3.0)
    hits = es.search(index=info["alias"], **body).body["hits"]["hits"]
    assert len(hits) == 5
    only = knn_body(vec, 5, 30, filter={"ids": {"values": ["d1", "d2"]}})
    assert {h["_id"] for h in es.search(index=index_name, **only).body["hits"]["hits"]} == {"d1", "d2"}


def test_versions_of_an_alias_exclude_a_sibling_alias_that_extends_its_name(es, index_name, tiny_bi):
    """``<alias>-judgments`` (the control student) lives beside ``<alias>``: pruning or rolling back the
    student must never touch the control's indices."""
    corpus = docs(20)
    cfg = DeployConfig(keep_versions=1)
    sibling = deploy_student(es, tiny_bi, corpus, len(corpus), f"{index_name}-judgments", "c1key0000001", cfg, meta={})
    deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "s1key0000001", cfg, meta={})
    second = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "s2key0000002", cfg, meta={})
    assert [v["index"] for v in versions(es, index_name)] == [second["index"]]
    assert es.indices.exists(index=sibling["index"])  # not pruned as an old student version
    assert set(es.indices.get_alias(name=f"{index_name}-judgments").body) == {sibling["index"]}
    with pytest.raises(ClusterError, match="oldest version"):
        rollback(es, index_name)  # nothing to roll back to: the sibling's index is not a student version


def test_an_index_built_for_evaluation_is_no_version(es, index_name, tiny_bi):
    """deploy A, evaluate B (its index built under the production alias's name, the alias not moved), deploy C:
    B is no version — the prune keeps A, rollback goes back to A, never to B, a model that was never served."""
    corpus = docs(30)
    cfg = DeployConfig(batch_size=50, keep_versions=2)
    a = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "akey00000001", cfg, meta={})
    b = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "bkey00000002", cfg, meta={}, move_alias=False)
    c = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "ckey00000003", cfg, meta={})
    assert c["pruned"] == [] and es.indices.exists(index=a["index"]) and es.indices.exists(index=b["index"])
    assert [v["index"] for v in versions(es, index_name)] == [a["index"], c["index"]]
    assert rollback(es, index_name) == (c["index"], a["index"])
    assert set(es.indices.get_alias(name=index_name).body) == {a["index"]}

    # the history of serving is in each index's _meta: A served twice (deploy, then rollback), C once, B never
    from esdistill.indexing import index_meta

    ha, hc = index_meta(es, a["index"])["served"], index_meta(es, c["index"])["served"]
    assert [h["by"] for h in ha] == ["deploy", "rollback"] and "until" in ha[0] and "until" not in ha[1]
    assert len(hc) == 1 and hc[0]["by"] == "deploy" and hc[0]["until"] >= hc[0]["from"] >= ha[0]["until"]
    assert "served" not in index_meta(es, b["index"])
    with pytest.raises(ClusterError, match="oldest version"):
        rollback(es, index_name)  # B is older than C but was never served: nothing before A


def test_an_index_served_before_the_history_was_kept_is_a_version(es, index_name, tiny_bi):
    """An index an older esdistill deployed (no history in its _meta) and the alias points at: it is a version,
    and the deploy that leaves it records that it was served, so rollback still reaches it."""
    from esdistill.deploy import point_alias
    from esdistill.indexing import index_meta

    corpus = docs(20)
    cfg = DeployConfig(keep_versions=2)
    old = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "oldkey000001", cfg, meta={})
    # as an older esdistill left it: no history
    es.indices.put_mapping(index=old["index"], meta={"esdistill": {
        k: v for k, v in index_meta(es, old["index"]).items() if k != "served"}})
    assert [v["index"] for v in versions(es, index_name)] == [old["index"]]  # live: a version
    new = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "newkey000002", cfg, meta={})
    assert index_meta(es, old["index"])["served"][0]["from"] is None  # served, since when unknown
    assert [v["index"] for v in versions(es, index_name)] == [old["index"], new["index"]]
    assert rollback(es, index_name) == (new["index"], old["index"])
    point_alias(es, index_name, new["index"])


def test_evaluation_only_reads_a_served_index(es, index_name, tiny_bi):
    """Building the index of a key for evaluation (no alias move) where that key is served changes nothing in it:
    not the operator's replicas, not a document an in-cluster deploy wrote without esdistill's text hash, not a
    document whose source text changed since (only `esdistill deploy` syncs what is served)."""
    from esdistill.deploy import HASH_FIELD

    corpus = docs(12)
    cfg = DeployConfig(batch_size=50)
    info = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "servedkey001", cfg, meta={})
    index = info["index"]
    es.indices.put_settings(index=index, settings={"number_of_replicas": 1})  # the operator's change
    src = es.get(index=index, id="d0").body["_source"]
    es.index(index=index, id="d0", document={k: v for k, v in src.items() if k != HASH_FIELD}, refresh=True)
    before = {h["_id"]: h["_seq_no"] for h in es.search(index=index, size=100, seq_no_primary_term=True,
                                                         query={"match_all": {}}).body["hits"]["hits"]}
    edited = [Doc("d1", "title 1", "an edited text"), *[d for d in corpus if d.id != "d1"]]
    again = deploy_student(es, tiny_bi, edited, len(edited), index_name, "servedkey001", cfg, meta={},
                           move_alias=False)
    settings = es.indices.get_settings(index=index).body[index]["settings"]["index"]
    assert settings["number_of_replicas"] == "1"
    after = {h["_id"]: h["_seq_no"] for h in es.search(index=index, size=100, seq_no_primary_term=True,
                                                        query={"match_all": {}}).body["hits"]["hits"]}
    assert after == before
    assert HASH_FIELD not in es.get(index=index, id="d0").body["_source"]
    assert again["read_only"] and again["embedded_now"] == 0 and again["docs"] == 12
    es.indices.put_settings(index=index, settings={"number_of_replicas": 0})

    # an index built for evaluation alone (never served) is still resumed and synced by the next evaluation
    exp = deploy_student(es, tiny_bi, corpus, len(corpus), index_name, "experiment01", cfg, meta={},
                         move_alias=False)
    synced = deploy_student(es, tiny_bi, edited, len(edited), index_name, "experiment01", cfg, meta={},
                            move_alias=False)
    assert not synced.get("read_only") and synced["embedded_now"] == 1 and exp["index"] == synced["index"]
