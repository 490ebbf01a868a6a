"""The ``candidates`` stage: BM25's top-k of every training query — or, with ``teacher.request``, the top-k
of the user's own search request (:mod:`esdistill.request_teacher`), which this module also resolves."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import candidates as cand_mod
from ..cache import StageCache
from ..config import fingerprint
from .base import StageWork


class CandidatesStage(StageWork):
    """BM25's (or the search request's) top-k of every training query."""

    def _candidates_cache(self) -> StageCache:
        return self.p._cache("candidates", self.candidates_inputs())

    def request_search(self):
        """The user's search request as the teacher (:mod:`esdistill.request_teacher`), or None."""
        t = self.cfg.teacher
        if t.kind != "request":
            return None
        return self._request()

    def request_member_search(self):
        """The user's search request as a member of the teacher ensemble (``request``), or None."""
        t = self.cfg.teacher
        return self._request() if t.kind == "ensemble" and "request" in t.ensemble else None

    def _request(self):
        from ..request_teacher import RequestSearch, load_request

        t = self.cfg.teacher
        carried = self.p.bundle.facts.get("request_described") if self.p.bundle is not None else None
        return self.p._once("request-search", lambda: RequestSearch(
            self.p.client, self.cfg.bm25_index, load_request(t.request) if t.request else None, t.request_template,
            source=str(t.request) if t.request else f"search template {t.request_template!r}", described=carried))

    def candidates(self) -> dict[str, Any]:
        """BM25 top-k of every training query (building the BM25 index first if it is not there yet) — or, with
        ``teacher.request``, the top-k of the user's own search request."""
        cache = self._candidates_cache()
        if not cache.done:
            self.p._ensure_index()
        with self.p.stage("candidates"):
            request = self.request_search()
            if request is not None and not cache.done:
                from ..request_teacher import to_frame

                results, extra = cand_mod.leave_out_sources(
                    request.run(self.p.train_queries, self.cfg.candidates.k, self.cfg.candidates.batch_size,
                                self.p.progress), self.left_out())
                frame = to_frame(results)
                frame.to_parquet(cache.path("candidates.parquet"), index=False)
                info = cache.finish(queries=len(results), pairs=len(frame), output="candidates.parquet",
                                    queries_without_hits=sum(not h for h in results.values()), source="request",
                                    **extra)
            else:
                info = cand_mod.run_candidates(self.p.client, self.cfg.bm25_index, self.p.train_queries,
                                               self.p.text_fields, self.cfg.candidates.k,
                                               self.cfg.candidates.batch_size, cache, self.p.progress,
                                               leave_out=self.left_out())
            self.p.log(f"candidates: {info['pairs']} pairs for {info['queries']} queries"
                       + (f", {info['queries_without_hits']} queries without any hit" if info["queries_without_hits"] else "")
                       + (f"; {info['sources_left_out']} drawn queries' own documents left out"
                          if info.get("sources_left_out") is not None else "")
                       + (" (cached)" if info.get("cached") else ""))
            return info

    def bundle_out(self) -> list[StageCache]:
        self.candidates()
        return [self._candidates_cache()]

    def candidates_frame(self) -> pd.DataFrame:
        cache = self._candidates_cache()
        if not cache.done:
            self.candidates()
        return self.p._once(("candidates", cache.key), lambda: pd.read_parquet(cache.path("candidates.parquet")))

    # -- the key: what this stage reads --------------------------------------------------------------
    def request_inputs(self) -> str | None:
        """The user's search request teacher, by its body's (or template id's) fingerprint; None without one."""
        rs = self.request_search()
        return None if rs is None else rs.fingerprint()

    def left_out(self) -> dict[str, str]:
        """The drawn training queries' own documents taken out of their candidates (``data.drawn_source``)."""
        return self.p.drawn_sources if self.cfg.data.drawn_source == "leave_out" else {}

    def candidates_inputs(self) -> dict[str, Any]:
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "queries": fingerprint(self.p.train_queries), "k": self.cfg.candidates.k}
        if self.request_inputs():  # its hits are the candidates (a key without it stays what it was)
            out["request"] = self.request_inputs()
        if self.left_out():  # only with drawn queries: a key without them stays what it was
            out["sources_left_out"] = True
        return out
