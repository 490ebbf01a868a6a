"""The user's real case: an existing index with its own field names, a plain query file, a ready reranker."""

import json
import tarfile
import uuid

import pytest

from esdistill.config import build_config
from esdistill.indexing import bulk_index, count
from esdistill.pipeline import Project

from .conftest import SCIFACT


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    with tarfile.open(SCIFACT) as tf:
        tf.extractall(root, filter="data")
    corpus = [json.loads(line) for line in (root / "scifact" / "corpus.jsonl").open()][:150]
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (root / "scifact" / "queries.jsonl").open()}
    return corpus, queries, root


def test_distill_for_an_existing_index(tmp_path, es, es_url, tiny_models, scifact_slice):
    corpus, all_queries, _ = scifact_slice
    index = f"products-{uuid.uuid4().hex[:8]}"
    name = f"own{uuid.uuid4().hex[:6]}"
    es.indices.create(index=index, mappings={"properties": {"name": {"type": "text"},
                                                            "body": {"properties": {"description": {"type": "text"}}}}})
    ok, errors = bulk_index(es, index, ({"_id": d["_id"], "_source": {"name": d["title"],
                                         "body": {"description": d["text"]}}} for d in corpus))
    assert ok == 150 and not errors and count(es, index) == 150
    # a query log: plain text, one per line (ids are line numbers); judged test queries in JSONL + TSV
    (tmp_path / "log.txt").write_text("\n".join(d["title"].lower()[:60] for d in corpus[:12]) + "\n")
    test = {f"t{i}": corpus[20 + i]["title"] for i in range(7)}
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in test.items()))
    # t6 is judged, but nothing is relevant to it: it would score 0 for every system, so it is left out
    (tmp_path / "test.tsv").write_text("".join(f"t{i}\t{corpus[20 + i]['_id']}\t{int(i < 6)}\n" for i in range(7)))
    cfg = build_config({
        "workdir": str(tmp_path / "work"),
        "data": {"name": name, "index": index, "text_fields": ["name", "body.description"],
                 "train_queries": str(tmp_path / "log.txt"), "test_queries": str(tmp_path / "test.jsonl"),
                 "test_qrels": str(tmp_path / "test.tsv")},
        "cluster": {"url": es_url},
        "candidates": {"k": 6},
        "teacher": {"model": tiny_models["ce"], "max_length": 48},
        "train": {"base_model": tiny_models["bi"], "negatives": 2, "epochs": 1, "max_length": 48, "batch_size": 8,
                  "dev_fraction": 0.0},
        "evaluate": {"rerank_depth": 6, "k": 20, "num_candidates": 40},
    })
    project = Project(cfg, client=es)
    try:
        report = project.run()
        assert project.index()["user_index"] is True  # the user's index is used as is, never rebuilt
        docs = project.docs([corpus[0]["_id"]])
        assert docs[corpus[0]["_id"]].title == corpus[0]["title"]
        assert docs[corpus[0]["_id"]].text == corpus[0]["text"]  # nested field read from _source
        scores = project.scores_frame()
        assert len(scores) == len(project.candidates_frame())  # no judgments: exactly the candidates, all scored
        assert count(es, cfg.dense_alias) == 150  # every document of the user's index embedded
        assert set(report["summary"]["systems"]) == {"bm25", "pipeline", "student", "hybrid"}
        assert report["summary"]["queries"] == 6 and report["summary"]["test_queries_without_relevant"] == 1
        assert es.count(index=index).body["count"] == 150  # untouched

        # the user's index changes: one document added, one edited, one deleted
        project.deploy("zero_shot")
        before = {"index": project.index_key, "candidates": project._candidates_cache().key,
                  "teacher": project._teacher_cache().key, "deploy": project._deploy_key("zero_shot")}
        es.index(index=index, id="new-doc", document={"name": "A new title", "body": {"description": "new text"}})
        es.index(index=index, id=corpus[1]["_id"], document={"name": "Edited", "body": {"description": "edited"}})
        es.delete(index=index, id=corpus[2]["_id"])
        es.indices.refresh(index=index)
        changed = Project(cfg, client=es)
        assert changed.index_key != before["index"]
        assert changed._candidates_cache().key != before["candidates"]  # edits reach candidates and teacher
        assert changed._teacher_cache().key != before["teacher"]
        # the same model's dense index is kept and synced: only the new and the edited document are embedded
        assert changed._deploy_key("zero_shot") == before["deploy"]
        info = changed.deploy("zero_shot")
        assert (info["embedded_now"], info["deleted_now"], info["docs"]) == (2, 1, 150)
        dense = {h["_id"]: h["_source"]["text"] for h in es.search(index=info["alias"], size=200).body["hits"]["hits"]}
        assert "new-doc" in dense and corpus[2]["_id"] not in dense and dense[corpus[1]["_id"]] == "edited"
        # the text fields the models read are part of the index's identity too
        other = Project(cfg.model_copy(update={"data": cfg.data.model_copy(update={"text_fields": ["name"]})}),
                        client=es)
        assert other.index_key != changed.index_key
    finally:
        es.indices.delete(index=f"{index},esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
