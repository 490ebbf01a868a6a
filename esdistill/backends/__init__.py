"""The seam to the search engine: :class:`SearchBackend` (what esdistill asks of a cluster, in its own terms) and
its implementations — :class:`ElasticsearchBackend` today. :func:`backend_for` gives the backend of a client, a
connection's settings or a run config; the module-level functions of ``indexing``, ``deploy``, ``search``, … take
a client or a backend alike and go through it.

Not to be confused with :mod:`esdistill.engine`, the *compute* engine (local or Ray) that trains and embeds.
"""

from __future__ import annotations

from typing import Any

from .base import VECTOR_FIELD, ConnectionLost, EngineError, SearchBackend, load_mapping, reason
from .elasticsearch import ElasticsearchBackend

__all__ = ["VECTOR_FIELD", "ConnectionLost", "ElasticsearchBackend", "EngineError", "SearchBackend", "backend_for",
           "load_mapping", "reason"]


def backend_for(target: Any = None, check: bool = True) -> SearchBackend:
    """The backend of ``target``: a backend (returned as it is); an engine client (elasticsearch-py's
    ``Elasticsearch``); connection settings (:class:`~esdistill.config.ClusterSettings`) or a run config
    (:class:`~esdistill.config.RunConfig`, its ``[cluster]``), connected with :func:`esdistill.cluster.connect`
    (``check``: its health first); None: a backend without a cluster, for the request and mapping bodies alone.

    Which engine a client or a cluster is: the client's own type says it today; an OpenSearch implementation adds
    its client type here, and for settings the distribution ``GET /`` names (``version.distribution``) or the
    config's ``[cluster] engine``."""
    if isinstance(target, SearchBackend):
        return target
    if target is None:
        return ElasticsearchBackend(None)
    from elasticsearch import Elasticsearch

    if isinstance(target, Elasticsearch):
        return ElasticsearchBackend(target)
    from ..config import ClusterSettings, RunConfig

    if isinstance(target, RunConfig):
        target = target.cluster_settings()
    if isinstance(target, ClusterSettings):
        from ..cluster import connect

        return ElasticsearchBackend(connect(target, check=check))
    raise TypeError(f"no search backend for {type(target).__name__}: pass a client, a backend, ClusterSettings "
                    "or a RunConfig")
