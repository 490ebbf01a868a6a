"""The seam to the search engine: :class:`SearchBackend` (what esdistill asks of a cluster, in its own terms) and
its implementations — :class:`ElasticsearchBackend` today. :func:`backend_for` gives the backend of a client
(:func:`esdistill.cluster.connect_backend`: of connection settings); the module-level functions of ``indexing``, ``deploy``, ``search``, … take
a client or a backend alike and go through it.

Not to be confused with :mod:`esdistill.engine`, the *compute* engine (local or Ray) that trains and embeds.
"""

from __future__ import annotations

from typing import Any

from .base import VECTOR_FIELD, ConnectionLost, EngineError, SearchBackend, load_mapping, reason
from .elasticsearch import ElasticsearchBackend

__all__ = ["VECTOR_FIELD", "ConnectionLost", "ElasticsearchBackend", "EngineError", "SearchBackend", "backend_for",
           "load_mapping", "reason"]


def backend_for(target: Any = None) -> SearchBackend:
    """The backend of ``target``: a backend (returned as it is); an engine client (elasticsearch-py's
    ``Elasticsearch``); None: a backend without a cluster, for the request and mapping bodies alone. Connecting
    from settings is :func:`esdistill.cluster.connect_backend`'s (the seam sits above the connection, never
    below it: no import circle).

    Which engine a client is: the client's own type says it today; an OpenSearch implementation adds its client
    type here (and ``connect_backend`` the distribution ``GET /`` names, or the config's ``[cluster] engine``)."""
    if isinstance(target, SearchBackend):
        return target
    if target is None:
        return ElasticsearchBackend(None)
    from elasticsearch import Elasticsearch

    if isinstance(target, Elasticsearch):
        return ElasticsearchBackend(target)
    raise TypeError(f"no search backend for {type(target).__name__}: pass a client or a backend "
                    "(esdistill.cluster.connect_backend connects from settings)")
