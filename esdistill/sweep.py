"""``sweep``: what vector index settings cost — recall@10 of approximate kNN against exact search, and latency.

For each ``index_options`` type (hnsw, int8_hnsw, bbq_hnsw, …) the corpus vectors are indexed into a scratch
index built as ``deploy`` builds the served one (same bulk size, refreshed, not force-merged: a served index
has several segments, each an HNSW graph of its own, and a single merged graph would flatter both recall and
latency). Every test query is searched with each ``num_candidates`` after an untimed warm-up pass. Exact top-k
is brute force over the same vectors (unit length, so the dot product is the cosine), so recall@k measures only
what the approximate index loses. Quantized types can be searched with ``rescore_vector`` oversampling to win
recall back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .backends import VECTOR_FIELD, backend_for
from .config import DeployConfig
from .deploy import dense_body
from .indexing import bulk_index, verify_count


def exact_top(doc_vecs: np.ndarray, query_vecs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the exact top-``k`` documents per query (brute-force dot product)."""
    scores = query_vecs @ doc_vecs.T
    top = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def segment_count(client, index: str) -> int:
    """Searchable segments of ``index``'s primary shards: each holds an HNSW graph that a kNN search visits."""
    return backend_for(client).segment_count(index)


def sweep(
    client,
    doc_ids: list[str],
    doc_vecs: np.ndarray,
    query_vecs: np.ndarray,
    index_prefix: str,
    index_types: list[str],
    num_candidates: list[int],
    k: int = 10,
    oversample: float | None = None,
    m: int = 16,
    ef_construction: int = 100,
    chunk_size: int = 256,
    progress=None,
) -> list[dict[str, Any]]:
    """One row per (index type, num_candidates): recall@k vs exact, latency p50/p95 (client wall, ms), and the
    number of segments the index had when it was measured. ``client``: an engine client or a backend."""
    client = backend_for(client)
    exact = exact_top(doc_vecs, query_vecs, k)
    truth = [{doc_ids[i] for i in row} for row in exact]
    rows = []
    for itype in index_types:
        index = f"{index_prefix}-sweep-{itype.replace('_', '-')}"
        client.delete_index(index, missing_ok=True)
        body = dense_body(doc_vecs.shape[1], True, DeployConfig(index_type=itype, m=m, ef_construction=ef_construction),
                          client)
        client.create_index(index, body)
        try:
            t0 = time.perf_counter()
            ok, errors = bulk_index(client, index, ({"_id": d, "_source": {VECTOR_FIELD: v.tolist()}}
                                                    for d, v in zip(doc_ids, doc_vecs, strict=True)),
                                    chunk_size=chunk_size)
            verify_count(client, index, len(doc_ids), errors)
            build_s = time.perf_counter() - t0
            segments = client.segment_count(index)
            over = oversample if "int8" in itype or "bbq" in itype else None
            for nc in num_candidates:
                task = progress.add_task(f"sweep {itype} num_candidates={nc}", total=len(query_vecs)) if progress else None
                for qv in query_vecs[: min(20, len(query_vecs))]:  # warm-up: caches and the graph's pages, untimed
                    client.knn_search(index, qv.tolist(), k, max(nc, k), oversample=over)
                recalls, lat = [], []
                for qv, want in zip(query_vecs, truth, strict=True):
                    t1 = time.perf_counter()
                    resp = client.knn_search(index, qv.tolist(), k, max(nc, k), oversample=over)
                    lat.append((time.perf_counter() - t1) * 1e3)
                    got = {h["_id"] for h in resp["hits"]["hits"]}
                    recalls.append(len(got & want) / len(want))
                    if progress:
                        progress.advance(task)
                rows.append({"index_type": itype, "num_candidates": nc, f"recall@{k}": float(np.mean(recalls)),
                             "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                             "build_s": build_s, "oversample": over, "segments": segments})
        finally:
            client.delete_index(index, missing_ok=True)
    return rows


def sweep_markdown(rows: list[dict[str, Any]], k: int = 10) -> str:
    lines = [f"| index_options | num_candidates | recall@{k} vs exact | p50 ms | p95 ms | index build s | segments |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        over = f" (oversample {r['oversample']:g})" if r.get("oversample") else ""
        lines.append(f"| {r['index_type']}{over} | {r['num_candidates']} | {r[f'recall@{k}']:.3f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['build_s']:.1f} | {r['segments']} |")
    return "\n".join(lines) + "\n"
