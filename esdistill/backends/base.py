"""What esdistill asks of a search engine, in esdistill's terms: :class:`SearchBackend`.

Every module that talks to the cluster (indexing, candidates, deploy, search, results, the request teacher,
in-cluster embedding, monitor, the served path, the model upload) goes through one of these methods, so a second
engine is a second implementation of this class, not ``if``s through the stages. An implementation builds the
engine's own request bodies (a BM25 query, a kNN query, a vector mapping, an ingest pipeline) from esdistill's
parameters; callers never write a raw body themselves, except the user's own search request (``teacher.request``),
which is passed through as the user wrote it.

Answers keep the shape both Elasticsearch and OpenSearch give them: a search response is the engine's JSON
(``took``, ``_shards``, ``hits.hits[]`` with ``_id``, ``_index``, ``_score``, ``_source``), checked by
:func:`esdistill.cluster.check_shards`; a bulk item is what elasticsearch-py's / opensearch-py's
``streaming_bulk`` yields.

Refusals callers handle are raised as :class:`EngineError` (an error status with the engine's own explanation)
and :class:`ConnectionLost` (the cluster went away mid-request); what no caller handles is left as the client
library raises it.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import ClusterError
from ..resources import resource_dir

MAPPINGS_DIR = resource_dir("mappings")
#: the dense index's vector field
VECTOR_FIELD = "embedding"
#: :meth:`SearchBackend.describe`'s reason for a stored script or template that the cluster does not hold
NOT_STORED = "not stored in the cluster"


def load_mapping(name: str) -> dict[str, Any]:
    """A JSON body from ``mappings/`` (a fresh copy each call)."""
    path = MAPPINGS_DIR / name
    try:
        return copy.deepcopy(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ClusterError(f"mapping file missing: {path}", hint="reinstall esdistill from a full checkout") from None


def reason(body: Any) -> str:
    """The cluster's own explanation from an error body (root cause first)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            root = (err.get("root_cause") or [{}])[0]
            parts = [err.get("type"), err.get("reason"), root.get("reason") if root is not err else None]
            caused = err.get("caused_by", {})
            if isinstance(caused, dict) and caused.get("reason"):
                parts.append(caused["reason"])
            return "; ".join(dict.fromkeys(p for p in parts if p))
        return str(err)
    return str(body)


class EngineError(Exception):
    """The engine answered a request with an error: ``status`` (HTTP), ``message`` (its one-line summary),
    ``body`` (its error JSON, as :func:`reason` reads it), ``error`` (the error type,
    e.g. ``resource_already_exists_exception``) and ``info``. ``str()`` is the client library's own text."""

    def __init__(self, text: str, status: int | None = None, message: str = "", body: Any = None,
                 error: str | None = None, info: Any = None):
        super().__init__(text)
        self.status, self.message, self.body, self.error, self.info = status, message, body, error, info


class ConnectionLost(Exception):
    """The cluster could not be reached (refused, reset, timed out) while a request was under way."""


class SearchBackend(ABC):
    """One search engine (cluster) as esdistill uses it. ``client`` is the engine's own client (elasticsearch-py's
    ``Elasticsearch``, opensearch-py's ``OpenSearch``), for the few callers that have not moved yet; ``name`` says
    which engine (``elasticsearch``, ``opensearch``)."""

    name: str = "?"
    client: Any

    # ------------------------------------------------------------------------------------ mappings and bodies
    @abstractmethod
    def bm25_mapping(self) -> dict[str, Any]:
        """The BM25 index body (settings and mappings): ``title`` and ``text`` with esdistill's analyzer."""

    @abstractmethod
    def dense_mapping(self, dims: int, similarity: str, index_type: str, m: int | None = None,
                      ef_construction: int | None = None) -> dict[str, Any]:
        """The dense index body: ``title``, ``text`` (BM25-searchable), the text hash and a ``dims``-dim vector
        field :data:`VECTOR_FIELD` compared by ``similarity`` (``dot_product``, ``cosine``) in an index of
        ``index_type`` (``hnsw``, ``int8_hnsw``, ``flat``, …; ``m``/``ef_construction`` for the HNSW kinds)."""

    @abstractmethod
    def results_mapping(self) -> dict[str, Any]:
        """The results index body (evaluation and monitor documents for the dashboard)."""

    @abstractmethod
    def embed_pipeline(self, model_id: str, text_fields: list[str]) -> dict[str, Any]:
        """The ingest pipeline that embeds ``title text`` (set from ``text_fields``: the first is the title, the
        rest the text) into :data:`VECTOR_FIELD` with the cluster's model ``model_id``, and drops its work fields."""

    @abstractmethod
    def bm25_body(self, text: str, fields: list[str], size: int, source: bool | list[str] = False) -> dict[str, Any]:
        """The search body of esdistill's BM25 query for ``text`` over ``fields``: its top ``size`` hits, with
        ``source`` (False: ids and scores only; a list: those fields)."""

    @abstractmethod
    def knn_body(self, vector: list[float], k: int, num_candidates: int, field: str = VECTOR_FIELD,
                 filter: dict | None = None, filter_ids: list[str] | None = None,
                 oversample: float | None = None) -> dict[str, Any]:
        """The search body of a kNN search: the ``k`` nearest of ``vector`` in ``field``, ``num_candidates`` per
        shard (at least ``k``); ``filter`` (a query) or ``filter_ids`` (only these documents) applied during the
        search; ``oversample`` re-scores ``k * oversample`` quantized hits with the full vectors."""

    @abstractmethod
    def knn_text_body(self, text: str, model_id: str, k: int, num_candidates: int, field: str = VECTOR_FIELD,
                      filter: dict | None = None) -> dict[str, Any]:
        """A kNN search whose query vector the cluster computes from ``text`` with its model ``model_id``."""

    def hybrid_text_body(self, text: str, fields: list[str], model_id: str, k: int, num_candidates: int,
                         weights: tuple[float, float], normalization: str = "min_max",
                         combination: str = "arithmetic_mean", field: str = VECTOR_FIELD) -> dict[str, Any]:
        """The cluster's own hybrid search: BM25 over ``fields`` and kNN of ``text`` encoded by the cluster's model
        ``model_id``, each normalised (``normalization``) and combined (``combination``, ``weights``: BM25, kNN)
        inside the cluster. Refused where the engine has none (Elasticsearch: its RRF retriever needs a paid
        license and has no score normalization; the ``hybrid`` system fuses on the client)."""
        raise ClusterError(f"the cluster's own hybrid query (evaluate system `hybrid_cluster`) is OpenSearch's "
                           f"(neural-search's `hybrid` query with a normalization pipeline); {self.name} has none",
                           hint="remove \"hybrid_cluster\" from evaluate.systems: `hybrid` fuses BM25 and the "
                                "student's kNN on the client (reciprocal rank fusion) on any engine")

    # ----------------------------------------------------------------------------------------------- indices
    @abstractmethod
    def index_exists(self, index: str) -> bool:
        """Whether ``index`` (or an alias of that name) exists."""

    @abstractmethod
    def create_index(self, index: str, body: dict[str, Any], meta: dict[str, Any] | None = None,
                     exist_ok: bool = False) -> bool:
        """Create ``index`` from ``body`` (a ``*_mapping`` of this backend), with ``meta`` as its
        ``_meta.esdistill`` when given. True when created; with ``exist_ok`` an index that exists already is
        False; any other refusal is a :class:`ClusterError` naming the index and the engine's reason."""

    @abstractmethod
    def add_fields(self, index: str, properties: dict[str, Any]) -> None:
        """Add ``properties`` to the mapping of ``index`` (mappings only grow); :class:`EngineError` if refused."""

    @abstractmethod
    def delete_index(self, index: str, missing_ok: bool = False) -> None:
        """Delete ``index`` (with ``missing_ok``, nothing when there is none)."""

    @abstractmethod
    def index_meta(self, index: str) -> dict[str, Any] | None:
        """The ``_meta.esdistill`` of ``index``; ``{}`` when it exists without one, None when it does not exist."""

    @abstractmethod
    def put_meta(self, index: str, meta: dict[str, Any]) -> None:
        """Replace the ``_meta.esdistill`` of ``index`` with ``meta``."""

    @abstractmethod
    def vector_dims(self, index: str, field: str = VECTOR_FIELD) -> int | None:
        """The dims of the vector field ``field`` of ``index`` (an alias works); None without such a field."""

    @abstractmethod
    def vector_similarity(self, index: str, field: str = VECTOR_FIELD) -> str | None:
        """The similarity the vector field ``field`` of ``index`` (not an alias) compares by (``dot_product``,
        ``cosine``, …); None when its mapping names none or there is no such field."""

    @abstractmethod
    def refresh(self, index: str) -> None:
        """Make everything written to ``index`` searchable."""

    @abstractmethod
    def count(self, index: str) -> int:
        """The number of documents ``index`` holds (as last refreshed)."""

    @abstractmethod
    def set_replicas(self, index: str, replicas: int) -> None:
        """Set ``number_of_replicas`` of ``index``."""

    @abstractmethod
    def segment_count(self, index: str) -> int:
        """Searchable segments of the primary shards of ``index``: each holds a vector graph of its own that a kNN
        search visits."""

    @abstractmethod
    def creation_dates(self, pattern: str) -> dict[str, int]:
        """index name -> creation time (ms since the epoch) of every index matching ``pattern``; {} for none."""

    @abstractmethod
    def index_identity(self, index: str) -> dict[str, Any]:
        """What ``index`` (or alias) holds right now, as cheaply as the cluster can say it: a record that any write,
        and any re-creation under the same name, changes (it is a cache key input: keep it stable)."""

    # ----------------------------------------------------------------------------------------------- aliases
    @abstractmethod
    def alias_targets(self, alias: str) -> list[str]:
        """The indices ``alias`` points at ([] when there is no such alias)."""

    @abstractmethod
    def has_alias(self, index: str) -> bool:
        """Whether any alias points at ``index`` (False when it does not exist)."""

    @abstractmethod
    def move_alias(self, alias: str, index: str, leave: list[str]) -> None:
        """In one atomic request, remove ``alias`` from the indices ``leave`` and point it at ``index``."""

    # --------------------------------------------------------------------------------------------- documents
    @abstractmethod
    def stream_bulk(self, actions: Iterable[dict[str, Any]], chunk_size: int = 500
                    ) -> Iterator[tuple[bool, dict[str, Any]]]:
        """Send bulk ``actions`` (``_index``, ``_id``, ``_source`` or ``_op_type``) in chunks, no retries; yield
        ``(ok, item)`` per document as the client's ``streaming_bulk`` does (a failure does not raise). Losing the
        cluster raises :class:`ConnectionLost`."""

    @abstractmethod
    def scan(self, index: str, fields: list[str] | bool = True,
             since: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every hit of ``index`` (``_id`` and ``_source`` with ``fields``; False: none; True: all), or with
        ``since`` = (date field, period such as ``7d``) only those whose field is within that period of now.
        A refused read raises :class:`EngineError`."""

    @abstractmethod
    def get_sources(self, index: str, ids: list[str], fields: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, ``_source`` with ``fields``) of each of ``ids`` that ``index`` holds, in that order."""

    # ------------------------------------------------------------------------------------------------ search
    @abstractmethod
    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search of ``index`` with ``body`` (a ``*_body`` of this backend, or the user's own request);
        the response. A refusal raises :class:`EngineError`."""

    @abstractmethod
    def msearch(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Several (index, body) searches in one round trip: ``{"took"?, "responses": [...]}`` in order (a failed
        search is a response with ``error``). A refusal of the whole raises :class:`EngineError`."""

    @abstractmethod
    def search_template(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search with a stored template (``body``: ``id`` and ``params``)."""

    @abstractmethod
    def msearch_template(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """:meth:`msearch` of stored templates."""

    def bm25_msearch(self, index: str, queries: list[str], fields: list[str], size: int) -> list[dict[str, Any]]:
        """esdistill's BM25 query for each of ``queries`` on ``index``, in one round trip: the responses in order."""
        return self.msearch([(index, self.bm25_body(q, fields, size)) for q in queries])["responses"]

    def knn_search(self, index: str, vector: list[float], k: int, num_candidates: int, field: str = VECTOR_FIELD,
                   filter: dict | None = None, filter_ids: list[str] | None = None,
                   oversample: float | None = None) -> dict[str, Any]:
        """:meth:`knn_body` searched on ``index``: the response."""
        return self.search(index, self.knn_body(vector, k, num_candidates, field, filter, filter_ids, oversample))

    # ------------------------------------------------------------------------------------------------ cluster
    @abstractmethod
    def check(self, url: str, how: str) -> dict[str, Any]:
        """Check that the cluster answers and takes the credentials: its health (``status``), or — credentials
        that may not read it but authenticate — ``{"status": None, "note": …}``. Unreachable, untrusted TLS,
        refused credentials: a :class:`ClusterError` naming ``url`` with ``how`` to fix it."""

    @abstractmethod
    def data_nodes(self) -> int | None:
        """How many data nodes the cluster has; None when these credentials may not ask."""

    @abstractmethod
    def node_versions(self) -> list[str]:
        """The version of every node."""

    @abstractmethod
    def client_version(self) -> str:
        """The version of the engine's client library (for the environment record of a report)."""

    # --------------------------------------------------------------------------------------- models, ingest
    @abstractmethod
    def require_ml(self, url: str = "the cluster") -> dict[str, Any]:
        """The cluster's machine-learning info, or a :class:`ClusterError`: a model cannot be served there."""

    @abstractmethod
    def model_stats(self, model_id: str) -> dict[str, Any] | None:
        """The deployment record of the cluster's model ``model_id`` (``deployment_stats.state``); None if absent."""

    @abstractmethod
    def upload_model(self, export, start: bool = False, replace: bool = False) -> dict[str, Any]:
        """Upload an exported student (:class:`esdistill.eland_export.ElandExport`) to the cluster's models,
        optionally start it; an existing model of that id is refused unless ``replace``."""

    @abstractmethod
    def describe(self, kind: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(description, None)`` of what the cluster keeps under ``rid`` — ``kind`` ``script`` (a stored script or
        template), ``model`` (a trained model, or failing that an inference endpoint), ``inference`` — or
        ``(None, why)`` (:data:`NOT_STORED` for a script that is not there)."""

    @abstractmethod
    def put_ingest_pipeline(self, pipeline_id: str, body: dict[str, Any]) -> None:
        """Store the ingest pipeline ``body`` (an :meth:`embed_pipeline`) under ``pipeline_id``."""

    @abstractmethod
    def start_reindex(self, request: dict[str, Any]) -> str:
        """Start a ``_reindex`` (``request``: source, dest, slices, …) as a task; its id."""

    @abstractmethod
    def task(self, task_id: str) -> dict[str, Any]:
        """The status of a task (``completed``, ``task.status``, ``response``, ``error``)."""
