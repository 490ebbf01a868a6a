"""The served path on the real cluster: ``search`` and ``monitor`` (``Project.systems(served=True)``) use the model
of the deploy behind the alias — and the pipeline that taught it — as that deploy recorded them, whatever the
config now names, and never train, fit or score anything."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from .conftest import tiny_config


def _records(workdir: Path) -> list[str]:
    """Every stage record (``done.json``) and deploy record in a work dir."""
    return sorted(str(p.relative_to(workdir)) for p in [*workdir.rglob("done.json"), *workdir.glob("deploy/*.json")])


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_deploy_a_deploy_b_rollback_then_search_and_monitor_serve_a_without_training(
        es, es_url, tmp_path, tiny_models, monkeypatch):
    import esdistill.stages.teacher as teacher_stage
    import esdistill.stages.teacher_fit as fit_stage
    import esdistill.stages.train as train_stage
    from esdistill.deploy import rollback, versions
    from esdistill.errors import ModelError
    from esdistill.models import load_bi_encoder
    from esdistill.pipeline import Project
    from esdistill.search import knn_body

    name = f"s{uuid.uuid4().hex[:8]}"
    torch_queries = {"evaluate": {"query_encoder": "torch"}}
    try:
        a = Project(tiny_config(tmp_path, es_url, tiny_models, name, **torch_queries), client=es)
        b = Project(tiny_config(tmp_path, es_url, tiny_models, name, train={"epochs": 2, "learning_rate": 1e-3},
                                **torch_queries), client=es)
        info_a, info_b = a.deploy(), b.deploy()
        assert info_a["index"] != info_b["index"]
        assert rollback(es, a.cfg.dense_alias) == (info_b["index"], info_a["index"])

        # a config whose student and teacher scores were never made (another epoch count, another teacher length):
        # the served path must neither train nor score for it — the alias serves A
        c = Project(tiny_config(tmp_path, es_url, tiny_models, name, train={"epochs": 3},
                                teacher={"max_length": 40}, **torch_queries), client=es)
        before = _records(a.workdir)

        def tripwire(what):
            def refuse(*args, **kwargs):
                raise AssertionError(f"the served path ran {what}")
            return refuse

        for module, fn in ((train_stage, "train_student"), (teacher_stage, "score_candidates"),
                           (fit_stage, "fit_teacher")):
            monkeypatch.setattr(module, fn, tripwire(fn))

        systems = c.systems(served=True)
        student, hybrid, pipeline = systems["student"](), systems["hybrid"](), systems["pipeline"]()
        query = next(iter(a.eval_queries().values()))
        model_a = load_bi_encoder(a.student_path(), max_length=a.cfg.train.max_length)
        model_b = load_bi_encoder(b.student_path(), max_length=b.cfg.train.max_length)
        vec = student.encode(query)
        vec_a = model_a.encode(query, normalize_embeddings=True).tolist()
        vec_b = model_b.encode(query, normalize_embeddings=True).tolist()
        assert _cos(vec, vec_a) > 0.9999 and _cos(vec, vec_b) < 0.999
        direct = es.search(index=info_a["index"], **knn_body(vec_a, student.k, student.num_candidates)).body
        assert [d for d, _ in student.search(query).hits] == [h["_id"] for h in direct["hits"]["hits"]]
        assert hybrid.search(query).hits and pipeline.search(query).hits
        # the alias moves while the system is loaded: its hits come from another model's index, and are refused
        from esdistill.deploy import point_alias

        point_alias(es, a.cfg.dense_alias, info_b["index"], by="test")
        for system in (student, hybrid):
            with pytest.raises(ModelError, match="alias moved"):
                system.search(query)
        point_alias(es, a.cfg.dense_alias, info_a["index"], by="test")
        assert pipeline.depth == a.cfg.evaluate.rerank_depth
        assert pipeline.bm25_weight == pytest.approx(a.pipeline_weight())
        assert pipeline.search(query).hits == a.systems()["pipeline"]().search(query).hits  # A's own pipeline

        served = c.served_deploy()
        assert (served.index, served.key) == (info_a["index"], a._deploy_key())

        log = tmp_path / "recent.txt"
        log.write_text("\n".join(list(a.eval_queries().values())[:5]) + "\n")
        report = c.monitor(str(log))
        assert report["deploy"]["key"] == a._deploy_key() and report["deploy"]["index"] == info_a["index"]
        assert report["deploy"]["model"] == str(Path(a.student_path()).resolve())
        assert report["queries"] >= 1
        assert _records(a.workdir) == before, "the served path made stage records"
        trained = {p.name for p in (a.workdir / "train").iterdir()}
        assert trained == {Path(a.student_path()).parent.name, Path(b.student_path()).parent.name}

        # evaluating B (served once, no longer) only reads its index
        assert b.deploy(move_alias=False)["read_only"]
        assert [v["index"] for v in versions(es, a.cfg.dense_alias)] == [info_a["index"], info_b["index"]]

        # a deploy whose record names no pipeline (an older esdistill): the pipeline is refused, not guessed
        from esdistill.indexing import index_meta

        meta = index_meta(es, served.index)
        es.indices.put_mapping(index=served.index, meta={"esdistill": {k: v for k, v in meta.items()
                                                                       if k != "pipeline"}})
        with pytest.raises(ModelError, match=a._deploy_key()) as e:
            c.systems(served=True)["pipeline"]()
        assert "which pipeline taught it" in str(e.value)
        es.indices.put_mapping(index=served.index, meta={"esdistill": meta})

        # the served model's folder gone from this machine: refused, naming the deploy key and what rebuilds it
        model_dir = Path(a.student_path())
        moved = model_dir.with_name("model-elsewhere")
        model_dir.rename(moved)
        try:
            with pytest.raises(ModelError, match=a._deploy_key()) as e:
                c.systems(served=True)["student"]()
            assert "not on this machine" in str(e.value) and "esdistill deploy" in e.value.hint
        finally:
            moved.rename(model_dir)
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_an_alias_without_an_esdistill_deploy_is_refused(es, index_name):
    from esdistill.errors import ClusterError
    from esdistill.served import served_deploy

    with pytest.raises(ClusterError, match="points at no index"):
        served_deploy(es, index_name)
    es.indices.create(index=f"{index_name}-x", aliases={index_name: {}})
    with pytest.raises(ClusterError, match="esdistill did not deploy"):
        served_deploy(es, index_name)


def test_the_served_pipeline_of_a_teacher_ensemble_is_the_deployed_one(es, es_url, tmp_path, tiny_models):
    """An ensemble teacher: the served pipeline fuses the members the deploy recorded, with the weights chosen
    for it — also when the config now fixes other weights."""
    from esdistill.pipeline import Project

    name = f"e{uuid.uuid4().hex[:8]}"
    members = [f"cross_encoder:{tiny_models['ce']}", f"bi_encoder:{tiny_models['bi']}", "bm25"]
    try:
        a = Project(tiny_config(tmp_path, es_url, tiny_models, name, teacher={"ensemble": members}), client=es)
        a.deploy()
        c = Project(tiny_config(tmp_path, es_url, tiny_models, name, teacher={
            "ensemble": members, "ensemble_weights": [0.5, 0.5, 0.0]}), client=es)
        served = c.systems(served=True)["pipeline"]()
        assert served.reranker.weights == a.ensemble_weights(a.pipeline_depth()) != [0.5, 0.5, 0.0]
        assert [m.spec for m, _ in served.reranker.scorers] == members
        own = a.systems()["pipeline"]()
        for query in list(a.eval_queries().values())[:3]:
            assert served.search(query).hits == own.search(query).hits
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_one_config_trained_twice_into_other_weights_deploys_two_indices_each_searched_by_its_own_model(
        es, es_url, tmp_path, tiny_models):
    """Two work dirs of one config on one cluster whose trainings wrote different weights (a wall-clock budget
    trains as many steps as each machine allows: one train key, other weights) get two dense indices — each
    embedded and searched by its own student — instead of one index that serves one student's vectors to the
    other's queries (or a refusal)."""
    import json
    import shutil

    import torch

    from esdistill.deploy import versions
    from esdistill.indexing import index_meta
    from esdistill.models import load_bi_encoder, model_fingerprint
    from esdistill.pipeline import Project
    from esdistill.search import knn_body

    name = f"w{uuid.uuid4().hex[:8]}"
    config = dict(evaluate={"query_encoder": "torch"})
    try:
        a = Project(tiny_config(tmp_path / "a", es_url, tiny_models, name, **config), client=es)
        info_a = a.deploy()
        meta_a = index_meta(es, info_a["index"])
        assert meta_a["weights"] == model_fingerprint(a.student_path())

        # the same config in another work dir: the same upstream stages, and a training of the same key that
        # wrote other weights (here: A's student moved by a small step, recorded as its training records them)
        shutil.copytree(a.workdir, tmp_path / "b" / "work", ignore=shutil.ignore_patterns("deploy", "evaluate*"))
        b = Project(tiny_config(tmp_path / "b", es_url, tiny_models, name, **config), client=es)
        cache = b._train_cache()
        assert cache.key == a._train_cache().key and cache.done
        model = load_bi_encoder(b.student_path(), max_length=b.cfg.train.max_length)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02, alpha=1.0)
        model.save(b.student_path())
        record = cache.info()
        record["weights"] = model_fingerprint(b.student_path())
        (cache.dir / "done.json").write_text(json.dumps(record))
        assert b._deploy_key() != a._deploy_key()

        info_b = b.deploy()  # neither refused nor "up to date": its own index, embedded by its own weights
        assert info_b["index"] != info_a["index"] and info_b["embedded_now"] == info_b["docs"] > 0
        assert index_meta(es, info_b["index"])["weights"] == record["weights"] != meta_a["weights"]
        # A's index untouched but for its served history (the alias moved to B's)
        assert {k: v for k, v in index_meta(es, info_a["index"]).items() if k != "served"} == {
            k: v for k, v in meta_a.items() if k != "served"}
        assert {v["index"] for v in versions(es, a.cfg.dense_alias)} == {info_a["index"], info_b["index"]}

        # each index holds its own model's vectors: a document's own vector finds it first in its own index only
        doc_id, doc = next(iter(a.dataset.corpus.items()))
        vecs = {}
        for project, info in ((a, info_a), (b, info_b)):
            m = load_bi_encoder(project.student_path(), max_length=project.cfg.deploy.effective_max_length(
                project.cfg.train))
            vecs[info["index"]] = vec = m.encode(doc.full_text, normalize_embeddings=True).tolist()
            hit = es.search(index=info["index"], **knn_body(vec, 1, 20)).body["hits"]["hits"][0]
            assert hit["_id"] == doc_id and hit["_score"] > 0.999  # dot_product score (1 + cos) / 2 of itself
        assert _cos(vecs[info_a["index"]], vecs[info_b["index"]]) < 0.999  # the two students differ
        # and evaluation searches each index with its own student
        for project, info in ((a, info_a), (b, info_b)):
            student = project.systems()["student"]()
            query = next(iter(project.eval_queries().values()))
            vec = load_bi_encoder(project.student_path(), max_length=project.cfg.train.max_length).encode(
                query, normalize_embeddings=True).tolist()
            direct = es.search(index=info["index"], **knn_body(vec, student.k, student.num_candidates)).body
            assert [d for d, _ in student.search(query).hits] == [h["_id"] for h in direct["hits"]["hits"]]
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
