"""``sweep`` on the real cluster: exact top-k is brute force; approximate recall is measured against it."""

import numpy as np

from esdistill.sweep import exact_top, sweep, sweep_markdown


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_exact_top_is_brute_force():
    d = unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]]))
    q = unit(np.array([[1.0, 0.1]]))
    assert exact_top(d, q, 3)[0].tolist() == [0, 2, 1]


def test_sweep_measures_recall_against_exact(es, index_name, monkeypatch):
    def merged(*a, **kw):
        raise AssertionError("the sweep must measure indices as they are served: never force-merged")

    monkeypatch.setattr(es.indices, "forcemerge", merged)
    rng = np.random.default_rng(0)
    docs = unit(rng.normal(size=(400, 64)).astype("float32"))
    queries = unit(docs[:20] + 0.05 * rng.normal(size=(20, 64)).astype("float32"))
    rows = sweep(es, [f"d{i}" for i in range(400)], docs, queries, index_name, ["flat", "hnsw", "int8_hnsw"],
                 [10, 100], k=10, oversample=2.0)
    assert len(rows) == 6
    flat = [r for r in rows if r["index_type"] == "flat"]
    assert all(r["recall@10"] > 0.999 for r in flat)  # flat is exact: it must agree with brute force
    for r in rows:
        assert 0.0 <= r["recall@10"] <= 1.0 and r["p50_ms"] > 0
    hnsw = {r["num_candidates"]: r["recall@10"] for r in rows if r["index_type"] == "hnsw"}
    assert hnsw[100] >= hnsw[10]
    assert not es.indices.exists(index=f"{index_name}-sweep-hnsw")  # scratch indices are removed
    assert "| int8_hnsw (oversample 2) | 100 |" in sweep_markdown(rows)
    assert all(r["segments"] >= 1 for r in rows)
    at5 = sweep(es, [f"d{i}" for i in range(400)], docs, queries, index_name, ["flat"], [10], k=5)
    assert at5[0]["recall@5"] > 0.999 and "recall@10" not in at5[0]
