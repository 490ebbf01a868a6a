"""``sweep`` (stage ``sweep-vectors``): recall of approximate kNN vs exact, per index type and
num_candidates."""

from __future__ import annotations

from typing import Any

from ..config import fingerprint
from ..environment import environment
from ..indexing import iter_index_docs
from ..jsonutil import dumps
from ..models import load_bi_encoder
from .base import StageWork
from .keys import trained_key


class SweepStage(StageWork):
    """Approximate vs exact kNN, per index type and num_candidates."""

    def sweep(self, index_types: list[str], num_candidates: list[int], oversample: float | None = None,
              k: int = 10) -> dict[str, Any]:
        """Recall@k of approximate kNN vs exact and latency, per index type and num_candidates (test queries),
        on indices built as the served one is (same bulk size, not force-merged)."""
        import numpy as np

        from ..sweep import sweep as run_sweep
        from ..sweep import sweep_markdown

        path = self.p.student_path()
        cache = self.p._cache("sweep-vectors", self.sweep_vectors_inputs())
        model = load_bi_encoder(path, max_length=self.cfg.deploy.effective_max_length(self.cfg.train))
        with self.p.stage("sweep"):
            if not cache.done:
                docs = (list(self.p.dataset.corpus.values()) if self.p.dataset.corpus is not None
                        else list(iter_index_docs(self.p.client, self.cfg.data.index, self.p.text_fields)))
                vecs = model.encode([d.full_text for d in docs], batch_size=self.cfg.deploy.encode_batch_size,
                                    normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
                np.save(cache.path("docs.npy"), vecs.astype("float32"))
                cache.path("ids.txt").write_text("\n".join(d.id for d in docs))
                cache.finish(docs=len(docs))
            doc_vecs = np.load(cache.path("docs.npy"))
            ids = cache.path("ids.txt").read_text().split("\n")
            qids = sorted(self.p.dataset.test_queries)
            q_vecs = model.encode([self.p.dataset.test_queries[q] for q in qids], normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
            rows = run_sweep(self.p.client, ids, doc_vecs, q_vecs, self.cfg.dense_alias, index_types, num_candidates,
                             k=k, oversample=oversample, m=self.cfg.deploy.m,
                             ef_construction=self.cfg.deploy.ef_construction, chunk_size=self.cfg.deploy.batch_size,
                             progress=self.p.progress)
        md = sweep_markdown(rows, k)
        out = self.p.workdir / "reports" / f"{self.cfg.data.name}-sweep-{cache.key[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.md").write_text(md)
        (out / "sweep.json").write_text(dumps({"rows": rows, "queries": len(qids), "docs": len(ids), "k": k,
                                               "environment": environment()}, indent=2))
        print(md, flush=True)
        return {"rows": rows, "markdown": str(out / "sweep.md")}

    # -- the key: what this stage reads --------------------------------------------------------------
    def sweep_vectors_inputs(self) -> dict[str, Any]:
        return {"student": trained_key(self.p._train_cache()), "corpus": self.p.corpus_identity(),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "max_length": self.cfg.deploy.effective_max_length(self.cfg.train),
                "queries": fingerprint(self.p.dataset.test_queries)}
