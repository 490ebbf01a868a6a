"""The ``embed`` and ``query-vectors`` stages: the corpus and the evaluated test queries encoded ahead of a
deploy or an evaluation, on a machine that need not reach the cluster."""

from __future__ import annotations

from typing import Any

from ..cache import StageCache
from ..config import fingerprint
from ..models import load_bi_encoder
from .base import StageWork


class EmbedStage(StageWork):
    """Corpus and test-query vectors computed ahead."""

    def _embed_cache(self, which: str) -> StageCache:
        return self.p._cache("embed", self.embed_inputs(which))

    def embed(self, which: str = "student") -> dict[str, Any]:
        """The ``embed`` stage: the corpus's vectors by ``which`` model, computed ahead of a deploy (on a machine
        that need not reach the cluster). ``deploy`` indexes them instead of embedding."""
        cache = self._embed_cache(which)
        if cache.done:
            return {**cache.info(), "cached": True}
        from ..embed import embed_corpus

        with self.p.stage(f"embed ({which})"), self.p.engine() as engine:
            info = embed_corpus(self.p.dense_models()[which][0](), self.cfg.deploy.effective_max_length(self.cfg.train),
                                self.p.dataset.corpus.values(), len(self.p.dataset.corpus), cache,
                                self.cfg.deploy.encode_batch_size, self.p.progress, engine=engine)
            self.p.log(f"embed ({which}): {info['docs']} documents, {info['dims']} dims, {info['truncated_docs']} "
                       "truncated")
            return info

    def run_offline(self) -> dict[str, Any]:
        done = {}
        for which in self.p.served_systems():
            done[f"embed ({which})"] = self.embed(which)
            done[f"query vectors ({which})"] = self.query_vectors(which)
        return done

    def bundle_back(self, weights, vectors):
        return [(c, False) for which in self.p.served_systems() if vectors is None or which in vectors
                for c in (self._embed_cache(which), self._query_vectors_cache(which))]

    def _query_vectors_cache(self, which: str) -> StageCache:
        return self.p._cache("query-vectors", self.query_vectors_inputs(which))

    def query_vectors(self, which: str = "student") -> dict[str, Any]:
        """The ``query-vectors`` stage: the evaluated test queries encoded by ``which`` model, for evaluating it
        where the model itself is not."""
        from ..embed import embed_queries

        model = load_bi_encoder(self.p.dense_models()[which][0](), max_length=self.cfg.train.max_length)
        return embed_queries(model, self.p.eval_queries(), self._query_vectors_cache(which))

    # -- the key: what this stage reads --------------------------------------------------------------
    def embed_inputs(self, which: str) -> dict[str, Any]:
        return {which: self.p.dense_models()[which][1](), "index_key": self.p.index_key, "fields": self.p.text_fields,
                "max_length": self.cfg.deploy.effective_max_length(self.cfg.train)}

    def query_vectors_inputs(self, which: str) -> dict[str, Any]:
        return {which: self.p.dense_models()[which][1](), "queries": fingerprint(self.p.eval_queries()),
                "max_length": self.cfg.train.max_length}
