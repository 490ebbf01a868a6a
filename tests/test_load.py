"""Bounded concurrent load on the query path, on loopback: no request may fail."""

from esdistill.config import DeployConfig
from esdistill.data import Doc
from esdistill.deploy import deploy_student
from esdistill.indexing import build_bm25_index
from esdistill.models import load_bi_encoder
from esdistill.query_encoder import BatchingEncoder
from esdistill.search import BM25, Hybrid, Student, run_load


def test_eight_workers_knn_and_hybrid_without_errors(es, index_name, tiny_models):
    model = load_bi_encoder(tiny_models["bi"], max_length=32)
    docs = [Doc(f"d{i}", f"title {i}", f"text on topic {i % 13} with words {i}") for i in range(400)]
    build_bm25_index(es, f"{index_name}-bm25", {d.id: d for d in docs}, key="k")
    deploy_student(es, model, docs, len(docs), f"{index_name}-dense", "loadkey00001", DeployConfig(), meta={})
    queries = [f"topic {i} words" for i in range(50)]
    for system in (Student(es, f"{index_name}-dense", model, k=10, num_candidates=50),
                   Hybrid(es, f"{index_name}-bm25", ["title", "text"], f"{index_name}-dense", model, k=10,
                          num_candidates=50),
                   BM25(es, f"{index_name}-bm25", ["title", "text"], k=10)):
        out = run_load(system, queries, workers=8, seconds=4.0, max_queries=2000)
        assert out["errors"] == 0, out["error_samples"]
        assert out["queries"] >= 8 and out["p99_ms"] >= out["p50_ms"] > 0


def test_the_batched_encoder_serves_the_same_hits_under_load(es, index_name, tiny_models):
    """The served path: eight workers share one encoder whose batched passes give each query its own hits."""
    model = load_bi_encoder(tiny_models["bi"], max_length=32)
    docs = [Doc(f"d{i}", f"title {i}", f"text on topic {i % 13} with words {i}") for i in range(300)]
    deploy_student(es, model, docs, len(docs), f"{index_name}-dense", "loadkey00002", DeployConfig(), meta={})
    queries = [f"topic {i} words {i * 7}" for i in range(40)]
    alone = Student(es, f"{index_name}-dense", model, k=10, num_candidates=50)
    batched = Student(es, f"{index_name}-dense", BatchingEncoder(model, max_batch=8), k=10, num_candidates=50)
    out = run_load(batched, queries, workers=8, seconds=4.0, max_queries=2000)
    assert out["errors"] == 0, out["error_samples"]
    assert batched.model.stats["largest"] > 1, batched.model.stats  # concurrent queries did share passes
    import numpy as np

    for q in queries[:10]:  # the same vector finds the same scores (ids may swap only between equal scores)
        assert np.allclose([s for _, s in batched.search(q).hits], [s for _, s in alone.search(q).hits],
                           atol=1e-4), q
