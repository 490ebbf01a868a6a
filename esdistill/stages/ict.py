"""The ``ict-pairs`` and ``teacher-ict`` stages: the corpus teacher's inverse-cloze pairs (BM25 negatives, in
the cluster) and the cross-encoder fitted on them alone."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import candidates as cand_mod
from .. import ict as ict_mod
from ..cache import StageCache
from ..config import fingerprint
from ..indexing import iter_index_docs
from ..models import model_fingerprint
from .base import StageWork


class IctStage(StageWork):
    """The corpus teacher: its inverse-cloze pairs and its fit."""

    def _ict_pairs_cache(self) -> StageCache:
        return self.p._cache("ict-pairs", self.ict_pairs_inputs())

    def _ict_cache(self) -> StageCache:
        return self.p._cache("teacher-ict", self.teacher_ict_inputs())

    def ict_pairs(self) -> dict[str, Any]:
        """The corpus teacher's inverse-cloze sentences, their masked documents and BM25 negatives (needs the
        cluster: the negatives are BM25's answers to the sentences)."""
        cache = self._ict_pairs_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        self.p._ensure_index()
        c, ds = self.cfg.teacher.fit.corpus, self.p.dataset
        with self.p.stage("inverse-cloze pairs"):
            docs = (ds.corpus.values() if ds.corpus is not None
                    else iter_index_docs(self.p.client, self.cfg.data.index, self.p.text_fields))

            def search(queries: dict[str, str]):
                return cand_mod.msearch_bm25(self.p.client, self.cfg.bm25_index, queries, self.p.text_fields,
                                             c.negative_depth + 1, self.cfg.candidates.batch_size, self.p.progress)

            info = ict_mod.draw_pairs(docs, self.p.docs, search, c, cache, avoid=ds.all_test_queries.values())
            lost = info["drawn"] - info["pairs"]
            self.p.log(f"inverse-cloze pairs: {info['pairs']} sentences with BM25 negatives"
                       + (f" ({lost} drawn without any other BM25 hit, left out)" if lost else "")
                       + (f"; BM25 ranks the source document first for {info['source_ranked_first']:.0%}"
                          if info.get("source_ranked_first") is not None else ""))
            if info["pairs"] < c.pairs:
                self.p.log(f"inverse-cloze pairs: {info['pairs']} of the {c.pairs} asked for (documents without a "
                           f"sentence of {c.min_words}-{c.max_words} words, or without BM25 neighbours)")
            return info

    def bundle_out(self) -> list[StageCache]:
        if "ict" not in self.p.fits_needed():
            return []
        self.ict_pairs()  # the corpus teacher's BM25 negatives: BM25 runs here
        return [self._ict_pairs_cache()]

    def bundle_back(self, weights, vectors):
        return [(self._ict_cache() if "ict" in self.p.fits_needed() else None, "teacher" in weights)]

    def teacher_ict(self) -> dict[str, Any]:
        """The cross-encoder fitted on the corpus alone (``teacher.fit.source`` corpus or corpus+judgments)."""
        cache = self._ict_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        pairs_cache = self._ict_pairs_cache()
        if not pairs_cache.done:
            self.ict_pairs()
        pairs = pd.read_parquet(pairs_cache.path("pairs.parquet"))
        with self.p.stage("teacher fit (corpus)"):
            info = ict_mod.fit_ict(pairs, self.p.docs, self.cfg.teacher.fit.corpus, self.cfg.teacher.fit.base_model,
                                   cache, self.p.log, self.p.progress)
            self.p.log(f"teacher fit [corpus]: fitted on {info['sentences']} inverse-cloze sentences"
                       + (" (cached)" if info.get("cached") else ""))
            return info

    # -- the key: what this stage reads --------------------------------------------------------------
    def ict_pairs_inputs(self) -> dict[str, Any]:
        c = self.cfg.teacher.fit.corpus
        return {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
                "sampling": c.model_dump(include={"pairs", "negatives", "negative_depth", "min_words", "max_words",
                                                  "seed"}),
                "avoid": fingerprint(sorted(self.p.dataset.all_test_queries.values()))}

    def teacher_ict_inputs(self) -> dict[str, Any]:
        fit = self.cfg.teacher.fit
        return {"pairs": self._ict_pairs_cache().key, "fit": fit.corpus.model_dump(),
                "base": model_fingerprint(fit.base_model)}
