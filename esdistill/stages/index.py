"""The ``index`` stage: what the BM25 index holds (its identity: the index key every later stage reads) and
building it from the corpus (a user's own index is never written)."""

from __future__ import annotations

from typing import Any

from ..backends import backend_for, bm25_mapping_file
from ..config import fingerprint
from ..indexing import MAPPINGS_DIR, build_bm25_index, index_identity, index_meta
from .base import StageWork


class IndexStage(StageWork):
    """The BM25 index: its identity and its build."""

    def index_identity(self) -> dict[str, Any]:
        """What the BM25 index holds: the corpus's content and the mapping, or — for the user's own index — its
        UUIDs, counts and write sequence numbers as the cluster reports them now (read once per project)."""
        if self.p.bundle is not None:
            return self.p.bundle.facts["index_identity"]
        if self.cfg.data.index:
            return self.p._once("identity", lambda: {
                "user_index": self.cfg.data.index, "fields": self.cfg.data.text_fields,
                "state": index_identity(self.p.client, self.cfg.data.index)})
        return {"corpus": self.p.dataset.corpus_fingerprint,
                "mapping": (MAPPINGS_DIR / bm25_mapping_file(self.search_engine())).read_text()}

    def search_engine(self) -> str | None:
        """The engine the project runs on, as known without asking the cluster: the connected client's, else
        ``[cluster] engine`` (None: not said, Elasticsearch's mapping keys the index)."""
        if self.p._client is not None:
            return backend_for(self.p._client).name
        return self.cfg.cluster_settings().engine

    @property
    def index_key(self) -> str:
        """Changes whenever the searched documents change (a user's index: with every write to it)."""
        return fingerprint(self.index_inputs())

    def corpus_identity(self) -> Any:
        """What a dense index is built from, for deploy keys: the corpus's content, or the user's index by name
        and fields (its edits are synced into the same dense index by every deploy, never rebuilt)."""
        if self.p.bundle is not None:
            return self.p.bundle.facts["corpus_identity"]
        if self.cfg.data.index:
            return {"user_index": self.cfg.data.index, "fields": self.cfg.data.text_fields}
        return self.p.dataset.corpus_fingerprint

    def index(self) -> dict[str, Any]:
        """Create and fill the BM25 index (skipped when the data is an existing index)."""
        with self.p.stage("index"):
            if self.cfg.data.index:
                n = self.p.backend.count(self.cfg.data.index)
                info = {"index": self.cfg.data.index, "docs": n, "cached": True, "user_index": True}
            else:
                info = build_bm25_index(self.p.client, self.cfg.bm25_index, self.p.dataset.corpus, self.index_key,
                                        self.cfg.index.chunk_size, self.p.progress)
            self.p.log(f"index {info['index']}: {info['docs']} documents" + (" (cached)" if info.get("cached") else ""))
            return info

    def _ensure_index(self) -> None:
        """Build (or rebuild) the BM25 index unless it holds this project's corpus (its ``_meta`` key)."""
        if not self.cfg.data.index:
            meta = index_meta(self.p.client, self.cfg.bm25_index)
            if not meta or meta.get("key") != self.index_key:
                self.index()

    # -- the key: what this stage reads --------------------------------------------------------------
    def index_inputs(self) -> dict[str, Any]:
        return self.index_identity()
