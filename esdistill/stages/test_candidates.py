"""The ``test-candidates`` stage: what the pipeline reads from Elasticsearch for each evaluated test query, so
its rankings can be computed where the cluster is not."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from .. import search as search_mod
from ..cache import StageCache
from ..config import EvaluateConfig, fingerprint
from .base import StageWork


class TestCandidatesStage(StageWork):
    """BM25's answers to the evaluated test queries, as the pipeline asks."""

    def _test_candidates_cache(self) -> StageCache:
        return self.p._cache("test-candidates", self.test_candidates_inputs())

    def bundle_out(self) -> list[StageCache]:
        """Only for a pipeline the offline side reranks (a search request, teacher or member, runs in the
        cluster)."""
        if ("pipeline" not in self.cfg.evaluate.systems or self.cfg.teacher.kind == "request"
                or self.p.request_member_search() is not None):
            return []
        self.test_candidates()
        return [self._test_candidates_cache()]

    def test_candidates(self) -> dict[str, Any]:
        """What the pipeline reads from Elasticsearch for each evaluated test query, and how long that took: its
        BM25 head (the documents it reranks) and top-k ids. With them the pipeline's rankings can be computed
        where the cluster is not (:meth:`pipeline_offline`)."""
        cache = self._test_candidates_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        self.p._ensure_index()
        ev = self.cfg.evaluate
        pipe = search_mod.Pipeline(self.p.client, self.cfg.bm25_index, self.p.text_fields, None, ev.rerank_depth, ev.k)
        queries = self.p.eval_queries()
        rows, timing = [], []
        with self.p.stage("test candidates"):
            task = self.p.progress.add_task("test candidates (BM25, as the pipeline asks)", total=len(queries))
            for n, qid in enumerate(sorted(queries)):
                if n == 0:
                    pipe.retrieve(queries[qid])  # warm-up, as evaluate does
                t0 = time.perf_counter()
                docs, bm25, ranked, took = pipe.retrieve(queries[qid])
                timing.append((qid, (time.perf_counter() - t0) * 1e3, took))
                head = {d.id: s for d, s in zip(docs, bm25, strict=True)}
                rows += [(qid, d, r, head.get(d), d in head) for r, d in enumerate(ranked, 1)]
                rows += [(qid, d.id, 0, head[d.id], True) for d in docs if d.id not in set(ranked)]
                self.p.progress.advance(task)
            pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "head"]).to_parquet(
                cache.path("candidates.parquet"), index=False)
            pd.DataFrame(timing, columns=["qid", "bm25_wall_ms", "took_ms"]).to_parquet(
                cache.path("timing.parquet"), index=False)
        return cache.finish(queries=len(queries), pairs=len(rows))

    # -- the key: what this stage reads --------------------------------------------------------------
    def test_candidates_inputs(self) -> dict[str, Any]:
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "queries": fingerprint(self.p.eval_queries()), "depth": self.cfg.evaluate.rerank_depth}
        # the stage records BM25's top evaluate.k (the pipeline's tail below the reranked head): a larger k must not
        # reuse a shorter list. Left out at its default, with which every earlier cache was made
        if self.cfg.evaluate.k != EvaluateConfig.model_fields["k"].default:
            out["k"] = self.cfg.evaluate.k
        return out
