"""``candidates`` stage: BM25 top-k from the cluster for every training query, batched with ``_msearch``.

Output: ``candidates.parquet`` with columns ``qid, docid, rank (1-based), bm25``. Every query appears in the
stage's report: queries with no hit at all are counted, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .backends import backend_for
from .cluster import check_shards


def bm25_query(text: str, fields: list[str]) -> dict[str, Any]:
    """The BM25 query every system in esdistill uses: ``multi_match`` best_fields, as BEIR's ES baseline (the
    query of :meth:`~esdistill.backends.SearchBackend.bm25_body` on Elasticsearch)."""
    return bm25_body(text, fields, 0)["query"]


def bm25_body(text: str, fields: list[str], k: int, backend=None) -> dict[str, Any]:
    """The search body of esdistill's BM25 query, top ``k``, ids and scores only — as ``backend`` (a client or a
    backend; default: Elasticsearch) writes it."""
    return backend_for(backend).bm25_body(text, fields, k)


def msearch_bm25(
    client, index: str, queries: dict[str, str], fields: list[str], k: int, batch_size: int = 64,
    progress=None,
) -> dict[str, list[tuple[str, float]]]:
    """qid -> [(docid, score), ...] best first, for every query in ``queries`` (``client``: an engine client or a
    backend), ``batch_size`` queries per ``_msearch``."""
    backend = backend_for(client)
    qids = list(queries)
    out: dict[str, list[tuple[str, float]]] = {}
    task = progress.add_task("candidates (BM25 _msearch)", total=len(qids)) if progress else None
    for start in range(0, len(qids), batch_size):
        batch = qids[start : start + batch_size]
        responses = backend.bm25_msearch(index, [queries[qid] for qid in batch], fields, k)
        for qid, r in zip(batch, responses, strict=True):
            check_shards(r, f"BM25 search for query {qid!r} on {index!r}")
            out[qid] = [(h["_id"], float(h["_score"])) for h in r["hits"]["hits"]]
        if progress:
            progress.advance(task, len(batch))
    return out


def to_frame(results: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    rows = [(qid, d, r, s) for qid, hits in results.items() for r, (d, s) in enumerate(hits, 1)]
    return pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25"])


def leave_out_sources(results: dict[str, list[tuple[str, float]]], sources: dict[str, str]
                      ) -> tuple[dict[str, list[tuple[str, float]]], dict[str, int]]:
    """``results`` without each drawn query's own document (``sources``: qid -> docid), the rest in their order;
    and what the stage's record says of it (how many were taken out: a source outside a query's top k is not there
    to take), empty without sources."""
    if not sources:
        return results, {}
    out, n = {}, 0
    for q, hits in results.items():
        src = sources.get(q)
        kept = [h for h in hits if h[0] != src] if src is not None else hits
        n += len(hits) - len(kept)
        out[q] = kept
    return out, {"sources_left_out": n, "drawn_queries": len(sources)}


def run_candidates(client, index, queries, fields, k, batch_size, cache, progress=None,
                   leave_out: dict[str, str] | None = None) -> dict[str, Any]:
    """Compute (or reuse) the candidates of ``queries``, without ``leave_out``'s documents (qid -> docid: a drawn
    query's source, :func:`leave_out_sources`); returns the stage's info record."""
    if cache.done:
        return {**cache.info(), "cached": True}
    results, extra = leave_out_sources(msearch_bm25(client, index, queries, fields, k, batch_size, progress),
                                       leave_out or {})
    frame = to_frame(results)
    frame.to_parquet(cache.path("candidates.parquet"), index=False)
    empty = [q for q, hits in results.items() if not hits]
    return cache.finish(
        queries=len(queries), pairs=len(frame), queries_without_hits=len(empty), output="candidates.parquet",
        **extra)
