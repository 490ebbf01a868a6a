"""The seam to the search engine: :class:`SearchBackend` (what esdistill asks of a cluster, in its own terms) and
its implementations — :class:`ElasticsearchBackend` and :class:`OpenSearchBackend`. :func:`backend_for` gives the backend of a client
(:func:`esdistill.cluster.connect_backend`: of connection settings); the module-level functions of ``indexing``, ``deploy``, ``search``, … take
a client or a backend alike and go through it.

Not to be confused with :mod:`esdistill.engine`, the *compute* engine (local or Ray) that trains and embeds.
"""

from __future__ import annotations

from typing import Any

from .base import VECTOR_FIELD, ConnectionLost, EngineError, SearchBackend, load_mapping, reason
from .elasticsearch import ElasticsearchBackend
from .opensearch import OpenSearchBackend

__all__ = ["VECTOR_FIELD", "ConnectionLost", "ElasticsearchBackend", "EngineError", "OpenSearchBackend",
           "SearchBackend", "backend_for", "bm25_mapping_file", "load_mapping", "reason"]

#: engine name -> its backend class
BACKENDS: dict[str, type[SearchBackend]] = {"elasticsearch": ElasticsearchBackend, "opensearch": OpenSearchBackend}


def bm25_mapping_file(engine: str | None) -> str:
    """The ``mappings/`` file of the BM25 index on ``engine`` (None: Elasticsearch) — part of the index key, so
    that BM25 results of one engine's analyzer are never taken for the other's."""
    from .opensearch import BM25_MAPPING

    return BM25_MAPPING if engine == "opensearch" else "bm25_index.json"


def backend_for(target: Any = None) -> SearchBackend:
    """The backend of ``target``: a backend (returned as it is); an engine client (elasticsearch-py's
    ``Elasticsearch``, opensearch-py's ``OpenSearch``); None: an Elasticsearch backend without a cluster, for the
    request and mapping bodies alone (``OpenSearchBackend(None)`` for OpenSearch's). Connecting
    from settings is :func:`esdistill.cluster.connect_backend`'s (the seam sits above the connection, never
    below it: no import circle).

    Which engine a client is: the client's own type says it (``connect`` chose the client from the config's
    ``[cluster] engine`` or the distribution ``GET /`` names)."""
    if isinstance(target, SearchBackend):
        return target
    if target is None:
        return ElasticsearchBackend(None)
    from elasticsearch import Elasticsearch

    if isinstance(target, Elasticsearch):
        return ElasticsearchBackend(target)
    from opensearchpy import OpenSearch

    if isinstance(target, OpenSearch):
        return OpenSearchBackend(target)
    raise TypeError(f"no search backend for {type(target).__name__}: pass a client or a backend "
                    "(esdistill.cluster.connect_backend connects from settings)")
