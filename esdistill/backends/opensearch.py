"""OpenSearch behind :class:`~esdistill.backends.base.SearchBackend`: opensearch-py's client and helpers
(``streaming_bulk``, ``scan``), the bodies of ``mappings/opensearch-*.json``, ``knn_vector`` fields with their
method written out (HNSW in the ``lucene`` engine: the k-NN plugin's faiss and nmslib engines need native
libraries that not every cluster has, and ``lucene`` answers ``knn`` queries with a filter during the search),
the ``knn`` query clause, ``_meta`` in the mapping.

What differs from Elasticsearch, and how it is mapped:

* similarity → the field's ``space_type``: ``cosine`` → ``cosinesimil``, ``dot_product`` → ``innerproduct``,
  ``l2_norm`` → ``l2`` (:data:`SPACE_TYPES`; :meth:`OpenSearchBackend.vector_similarity` maps them back);
* ``deploy.index_type``: ``hnsw`` as it is, ``int8_hnsw`` → lucene HNSW with its scalar-quantization encoder
  (``sq``: int7 vectors beside the float ones, as Elasticsearch's int8_hnsw); ``bbq_hnsw``, ``flat`` and
  ``int8_flat`` have no lucene-engine counterpart in OpenSearch and are refused naming the setting;
* ``num_candidates`` → the query's ``method_parameters.ef_search`` (the HNSW beam, as Elasticsearch's
  num_candidates); ``evaluate.oversample`` (Elasticsearch's ``rescore_vector``) is refused: lucene's ``sq``
  already scores with the float vectors;
* BM25's analyzer: OpenSearch's ``english`` (stemming, English stop words) when the cluster has the
  ``analysis-common`` module (every distribution and managed service does; a bare integration-test build does
  not: then the ``standard`` analyzer of ``mappings/bm25_index.json`` with a warning);
* search templates need the ``lang-mustache`` module: without it a clear refusal (write the request inline);
* the in-cluster model (ml-commons): :meth:`upload_model` (``esdistill export --upload``) traces the student into
  ml-commons' TorchScript zip, registers and deploys it and checks ``_predict`` against sentence-transformers
  before anything is served (:mod:`esdistill.opensearch_ml`); the ``neural`` query (:meth:`knn_text_body`), the
  cluster's ``hybrid`` query with its normalization pipeline (:meth:`hybrid_text_body`), the ``text_embedding``
  ingest processor (:meth:`embed_pipeline`), ``_reindex`` and the model's deployment state. ml-commons gives a
  model an id of its own: esdistill's model id (``deploy.model_id``, the name ``esdistill export`` gives the
  student) is the model's ``name`` there, and every method here takes either (:meth:`model_ref`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opensearchpy import OpenSearch, helpers
from opensearchpy import exceptions as os_exc

from ..errors import ClusterError, EsdistillWarning
from .base import NOT_STORED, VECTOR_FIELD, ConnectionLost, EngineError, SearchBackend, load_mapping, reason

#: esdistill's similarity (Elasticsearch's names) -> the k-NN plugin's space_type
SPACE_TYPES = {"cosine": "cosinesimil", "dot_product": "innerproduct", "l2_norm": "l2"}
#: the lucene engine's HNSW parameters per ``deploy.index_type`` (encoder); missing types are refused
INDEX_TYPES: dict[str, dict[str, Any]] = {"hnsw": {}, "int8_hnsw": {"encoder": {"name": "sq"}}}
#: the ingest pipeline's working field: what the model embeds
INPUT_FIELD = "_esdistill_input"
#: the mapping files of this engine (``mappings/``): they differ from Elasticsearch's in the analyzer and vectors
BM25_MAPPING, DENSE_MAPPING, RESULTS_MAPPING = ("opensearch-bm25_index.json", "opensearch-dense_index.json",
                                                "opensearch-results_index.json")


def _engine_error(e: os_exc.TransportError) -> EngineError:
    body = e.info if isinstance(e.info, dict) else {"error": e.error}
    err = body.get("error")
    kind = err.get("type") if isinstance(err, dict) else e.error
    status = e.status_code if isinstance(e.status_code, int) else None
    return EngineError(str(e), status, reason(body) or str(e.error), body, kind, e.info)


@contextmanager
def _refused():
    """opensearch-py's error statuses as :class:`EngineError` (its text, status, reason, body kept); a lost
    connection stays the client's own error."""
    try:
        yield
    except (os_exc.ConnectionError, os_exc.ConnectionTimeout):
        raise
    except os_exc.TransportError as e:
        raise _engine_error(e) from e


class OpenSearchBackend(SearchBackend):
    """An OpenSearch cluster through opensearch-py's ``client`` (None: the body builders alone, which then assume
    the ``english`` analyzer is there)."""

    name = "opensearch"

    def __init__(self, client: OpenSearch | None):
        self.client = client
        self._english: bool | None = None if client is not None else True
        self._model_ids: dict[str, str] = {}  # esdistill's model id (the ml-commons name) -> ml-commons' own id

    def __repr__(self) -> str:
        return f"OpenSearchBackend({self.client!r})"

    # ------------------------------------------------------------------------------------ mappings and bodies
    def has_english(self) -> bool:
        """Whether every node has the ``analysis-common`` module (the ``english`` analyzer); asked once."""
        if self._english is None:
            try:
                nodes = self.client.nodes.info(metric="plugins", filter_path="nodes.*.modules.name")["nodes"]
                self._english = bool(nodes) and all(
                    any(m.get("name") == "analysis-common" for m in n.get("modules", [])) for n in nodes.values())
            except os_exc.AuthorizationException:  # may not read node info: analysis-common is in every distribution
                self._english = True
        return self._english

    def _with_analyzer(self, name: str) -> dict[str, Any]:
        body = load_mapping(name)
        if not self.has_english():
            warnings.warn("the OpenSearch cluster has no analysis-common module (no `english` analyzer): BM25 "
                          "uses the standard analyzer with English stop words, without stemming", EsdistillWarning,
                          stacklevel=3)
            body["settings"]["analysis"] = load_mapping("bm25_index.json")["settings"]["analysis"]
        return body

    def bm25_mapping(self) -> dict[str, Any]:
        return self._with_analyzer(BM25_MAPPING)

    def dense_mapping(self, dims: int, similarity: str, index_type: str, m: int | None = None,
                      ef_construction: int | None = None) -> dict[str, Any]:
        """A ``knn_vector`` of ``dims`` in the lucene engine's HNSW, ``space_type`` from ``similarity``."""
        if similarity not in SPACE_TYPES:
            raise ClusterError(f"vector similarity {similarity!r} has no OpenSearch space_type",
                               hint=f"one of {', '.join(SPACE_TYPES)}")
        if index_type not in INDEX_TYPES:
            raise ClusterError(
                f"deploy.index_type = {index_type!r} has no counterpart in OpenSearch's lucene k-NN engine",
                hint="set deploy.index_type to \"hnsw\" or \"int8_hnsw\" (lucene HNSW with scalar quantization) "
                     "for OpenSearch; bbq and flat indices are Elasticsearch's")
        body = self._with_analyzer(DENSE_MAPPING)
        vec = body["mappings"]["properties"][VECTOR_FIELD]
        vec["dimension"] = dims
        params: dict[str, Any] = {"m": m or 16, "ef_construction": ef_construction or 100, **INDEX_TYPES[index_type]}
        vec["method"] = {"name": "hnsw", "engine": "lucene", "space_type": SPACE_TYPES[similarity],
                         "parameters": params}
        return body

    def results_mapping(self) -> dict[str, Any]:
        return self._with_analyzer(RESULTS_MAPPING)

    def embed_pipeline(self, model_id: str, text_fields: list[str]) -> dict[str, Any]:
        """``title text`` (from ``text_fields``: the first is the title) joined into a working field by a
        ``script`` processor, embedded into :data:`VECTOR_FIELD` by neural-search's ``text_embedding`` processor,
        the working field (and source fields other than ``title``/``text``) removed."""
        model_id = self.model_ref(model_id) or model_id
        title, rest = (text_fields[0], text_fields[1:]) if len(text_fields) > 1 else (None, list(text_fields))
        join = ("String v(def d, String f) { def x = d; for (String p : f.splitOnToken('.')) { "
                "if (!(x instanceof Map)) return ''; x = x.get(p); } return x == null ? '' : x.toString(); } "
                "String t = v(ctx, params.title == null ? 'title' : params.title); "
                "List parts = new ArrayList(); for (String f : params.rest) { parts.add(v(ctx, f)); } "
                "String text = String.join(' ', parts); "
                "if (params.title != null) { ctx['title'] = t; } ctx['text'] = text; "
                "ctx['" + INPUT_FIELD + "'] = (t + ' ' + text).trim();")
        others = list(dict.fromkeys(f.split(".")[0] for f in text_fields if f not in ("title", "text")))
        return {"description": f"esdistill: embed title + text with ml-commons model {model_id} into "
                               f"`{VECTOR_FIELD}`",
                "processors": [
                    {"script": {"lang": "painless", "source": join, "params": {"title": title, "rest": rest}}},
                    {"text_embedding": {"model_id": model_id, "field_map": {INPUT_FIELD: VECTOR_FIELD}}},
                    {"remove": {"field": [INPUT_FIELD, *others], "ignore_missing": True}}]}

    def bm25_body(self, text: str, fields: list[str], size: int, source: bool | list[str] = False) -> dict[str, Any]:
        """``multi_match`` best_fields with tie_breaker 0.5, as on Elasticsearch."""
        query = {"multi_match": {"query": text, "fields": fields, "type": "best_fields", "tie_breaker": 0.5}}
        return {"query": query, "size": size, "_source": source, "track_total_hits": False}

    def knn_body(self, vector: list[float], k: int, num_candidates: int, field: str = VECTOR_FIELD,
                 filter: dict | None = None, filter_ids: list[str] | None = None,
                 oversample: float | None = None) -> dict[str, Any]:
        """The ``knn`` query clause: ``k`` neighbours, ``ef_search`` = ``num_candidates`` (at least ``k``), the
        filter applied during the HNSW search (lucene engine)."""
        if oversample:
            raise ClusterError("evaluate.oversample (Elasticsearch's rescore_vector) has no counterpart on "
                               "OpenSearch's lucene engine, whose int8_hnsw already scores with the float vectors",
                               hint="remove evaluate.oversample for OpenSearch")
        clause: dict[str, Any] = {"vector": vector, "k": k,
                                  "method_parameters": {"ef_search": max(num_candidates, k)}}
        if filter_ids is not None:
            filter = {"ids": {"values": list(filter_ids)}}
        if filter:
            clause["filter"] = filter
        return {"query": {"knn": {field: clause}}, "size": k, "_source": False}

    def knn_text_body(self, text: str, model_id: str, k: int, num_candidates: int, field: str = VECTOR_FIELD,
                      filter: dict | None = None) -> dict[str, Any]:
        """neural-search's ``neural`` query: the cluster encodes ``text`` with its model ``model_id``."""
        from ..opensearch_ml import neural_clause

        query = neural_clause(field, text, self.model_ref(model_id) or model_id, k)
        query["neural"][field]["method_parameters"] = {"ef_search": max(num_candidates, k)}
        if filter:
            query["neural"][field]["filter"] = filter
        return {"query": query, "size": k, "_source": False}

    def hybrid_text_body(self, text: str, fields: list[str], model_id: str, k: int, num_candidates: int,
                         weights: tuple[float, float], normalization: str = "min_max",
                         combination: str = "arithmetic_mean", field: str = VECTOR_FIELD) -> dict[str, Any]:
        """neural-search's ``hybrid`` query: esdistill's BM25 query over ``fields`` and the ``neural`` query
        (:meth:`knn_text_body`) on one index, their scores normalised and combined with ``weights`` (BM25, kNN)
        by a normalization search pipeline carried in the request."""
        from ..opensearch_ml import hybrid_body

        lexical = self.bm25_body(text, fields, k)["query"]
        neural = self.knn_text_body(text, model_id, k, num_candidates, field)["query"]
        return hybrid_body(lexical, neural, k, list(weights), normalization, combination)

    # ----------------------------------------------------------------------------------------------- indices
    def index_exists(self, index: str) -> bool:
        return bool(self.client.indices.exists(index=index))

    def create_index(self, index: str, body: dict[str, Any], meta: dict[str, Any] | None = None,
                     exist_ok: bool = False) -> bool:
        if meta is not None:
            body = copy.deepcopy(body)
            body.setdefault("mappings", {})["_meta"] = {"esdistill": meta}
        try:
            self.client.indices.create(index=index, body=body)
        except os_exc.RequestError as e:
            err = _engine_error(e)
            if exist_ok and err.error == "resource_already_exists_exception":
                return False
            raise ClusterError(f"OpenSearch refused to create index {index!r}: {err.message}") from None
        return True

    def add_fields(self, index: str, properties: dict[str, Any]) -> None:
        with _refused():
            self.client.indices.put_mapping(index=index, body={"properties": properties})

    def delete_index(self, index: str, missing_ok: bool = False) -> None:
        if missing_ok:
            self.client.indices.delete(index=index, ignore_unavailable=True)
        else:
            self.client.indices.delete(index=index)

    def _mappings(self, index: str) -> dict[str, Any] | None:
        try:
            return self.client.indices.get_mapping(index=index)
        except os_exc.NotFoundError:
            return None

    def index_meta(self, index: str) -> dict[str, Any] | None:
        resp = self._mappings(index)
        if resp is None:
            return None
        (mapping,) = resp.values()
        return mapping.get("mappings", {}).get("_meta", {}).get("esdistill", {})

    def put_meta(self, index: str, meta: dict[str, Any]) -> None:
        self.client.indices.put_mapping(index=index, body={"_meta": {"esdistill": meta}})

    def vector_dims(self, index: str, field: str = VECTOR_FIELD) -> int | None:
        for mapping in (self._mappings(index) or {}).values():
            spec = mapping.get("mappings", {}).get("properties", {}).get(field)
            if spec and spec.get("type") == "knn_vector":
                return int(spec["dimension"])
        return None

    def vector_similarity(self, index: str, field: str = VECTOR_FIELD) -> str | None:
        """The field's ``space_type`` in esdistill's (Elasticsearch's) names (``cosinesimil`` → ``cosine``)."""
        spec = (self._mappings(index) or {}).get(index, {}).get("mappings", {}).get("properties", {}).get(field) or {}
        space = (spec.get("method") or {}).get("space_type") or spec.get("space_type")
        return {v: k for k, v in SPACE_TYPES.items()}.get(space, space)

    def refresh(self, index: str) -> None:
        self.client.indices.refresh(index=index)

    def count(self, index: str) -> int:
        return int(self.client.count(index=index)["count"])

    def set_replicas(self, index: str, replicas: int) -> None:
        self.client.indices.put_settings(index=index, body={"index": {"number_of_replicas": replicas}})

    def segment_count(self, index: str) -> int:
        shards = self.client.indices.segments(index=index)["indices"][index]["shards"]
        return sum(len(c["segments"]) for copies in shards.values() for c in copies if c["routing"]["primary"])

    def creation_dates(self, pattern: str) -> dict[str, int]:
        try:
            settings = self.client.indices.get_settings(index=pattern, name="index.creation_date")
        except os_exc.NotFoundError:
            return {}
        return {name: int(s["settings"]["index"]["creation_date"]) for name, s in settings.items()}

    def index_identity(self, index: str) -> dict[str, Any]:
        """As on Elasticsearch (``_stats``: UUID, counts, each primary's highest sequence number). Credentials that
        may not read the stats get the live count, the sum and maximum of ``_seq_no`` and a digest of the 200
        latest and earliest writes, with a warning: a re-created index that keeps them is not detected."""
        try:
            stats = self.client.indices.stats(index=index, level="shards", metric="docs")
        except os_exc.NotFoundError:
            raise ClusterError(f"index {index!r} does not exist", hint="check data.index") from None
        except os_exc.AuthorizationException:
            return self._identity_by_search(index)
        out = {}
        for name, st in sorted(stats["indices"].items()):
            seq = {shard: s.get("seq_no", {}).get("max_seq_no", -1) for shard, copies in st.get("shards", {}).items()
                   for s in copies if s["routing"]["primary"]}
            out[name] = {"uuid": st.get("uuid"), "count": st["primaries"]["docs"]["count"],
                         "deleted": st["primaries"]["docs"]["deleted"], "max_seq_no": dict(sorted(seq.items()))}
        return {"indices": out, "from": "stats"}

    def _identity_by_search(self, index: str) -> dict[str, Any]:
        import hashlib
        import json

        resp = self.client.search(index=index, body={
            "size": 0, "track_total_hits": True,
            "aggs": {"seq_no_sum": {"sum": {"field": "_seq_no"}}, "seq_no_max": {"max": {"field": "_seq_no"}},
                     "indices": {"terms": {"field": "_index", "size": 1000}}}})
        aggs = resp["aggregations"]
        out = {"count": resp["hits"]["total"]["value"], "seq_no_sum": aggs["seq_no_sum"]["value"],
               "seq_no_max": aggs["seq_no_max"]["value"],
               "indices": sorted(b["key"] for b in aggs["indices"]["buckets"]), "from": "search"}
        digest = hashlib.sha256()
        for order in ("desc", "asc"):
            hits = self.client.search(index=index, body={"size": 100, "sort": [{"_seq_no": order}],
                                                         "seq_no_primary_term": True})["hits"]["hits"]
            for h in hits:
                digest.update(json.dumps([h["_index"], h["_id"], h.get("_seq_no"), h.get("_primary_term"),
                                          h.get("_source")], sort_keys=True, default=str).encode())
        out["sample"] = digest.hexdigest()[:16]
        warnings.warn(f"index {index!r}: these credentials may not read its stats (indices:monitor/stats); it is "
                      "keyed on its count, its `_seq_no` and a sample of 200 documents, so deleting it and loading "
                      "it again unchanged cannot be detected. Grant the monitor permission on the index, or clear "
                      "the work dir's caches after re-creating it", EsdistillWarning, stacklevel=4)
        return out

    # ----------------------------------------------------------------------------------------------- aliases
    def alias_targets(self, alias: str) -> list[str]:
        try:
            return list(self.client.indices.get_alias(name=alias))
        except os_exc.NotFoundError:
            return []

    def has_alias(self, index: str) -> bool:
        try:
            aliases = self.client.indices.get_alias(index=index)
        except os_exc.NotFoundError:
            return False
        return any(v.get("aliases") for v in aliases.values())

    def move_alias(self, alias: str, index: str, leave: list[str]) -> None:
        actions = [{"remove": {"index": i, "alias": alias}} for i in leave if i != index]
        actions.append({"add": {"index": index, "alias": alias}})
        self.client.indices.update_aliases(body={"actions": actions})

    # --------------------------------------------------------------------------------------------- documents
    def stream_bulk(self, actions: Iterable[dict[str, Any]], chunk_size: int = 500
                    ) -> Iterator[tuple[bool, dict[str, Any]]]:
        stream = helpers.streaming_bulk(self.client, actions, chunk_size=chunk_size, max_retries=0,
                                        raise_on_error=False, raise_on_exception=True)
        try:
            yield from stream
        except (os_exc.ConnectionError, os_exc.ConnectionTimeout) as e:
            raise ConnectionLost(str(e)) from None

    def scan(self, index: str, fields: list[str] | bool = True,
             since: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = ({"range": {since[0]: {"gte": f"now-{since[1]}"}}} if since
                                 else {"match_all": {}})
        body: dict[str, Any] = {"query": query}
        if fields is not True:
            body["_source"] = fields
        with _refused():
            yield from helpers.scan(self.client, query=body, index=index)

    def get_sources(self, index: str, ids: list[str], fields: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for start in range(0, len(ids), 1000):
            resp = self.client.mget(index=index, body={"ids": ids[start : start + 1000]}, _source=fields)
            for d in resp["docs"]:
                if d.get("found"):
                    yield d["_id"], d.get("_source", {})

    # ------------------------------------------------------------------------------------------------ search
    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with _refused():
            return self.client.search(index=index, body=body)

    def msearch(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        with _refused():
            return self.client.msearch(body=_lines(searches))

    def _no_mustache(self, e: EngineError) -> ClusterError | EngineError:
        if "no handler found" in str(e.message) or "lang-mustache" in str(e):
            return ClusterError("this OpenSearch cluster runs no search templates (it lacks the lang-mustache "
                                f"module): {e.message}",
                                hint="write the request inline (teacher.request = {...} with \"{{query}}\") "
                                     "instead of a stored template, or install lang-mustache")
        return e

    def search_template(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with _refused():
                return self.client.search_template(index=index, body=body)
        except EngineError as e:
            raise self._no_mustache(e) from None

    def msearch_template(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        try:
            with _refused():
                return self.client.msearch_template(body=_lines(searches))
        except EngineError as e:
            raise self._no_mustache(e) from None

    # ------------------------------------------------------------------------------------------------ cluster
    def check(self, url: str, how: str) -> dict[str, Any]:
        """``GET /_cluster/health`` with errors rewritten for humans; credentials that may not read it but
        authenticate (``GET _plugins/_security/authinfo``) pass with a note."""
        client = self.client
        try:
            # the path carries the server-side timeout: opensearch-py reads a `timeout` argument as its own
            return client.transport.perform_request("GET", "/_cluster/health?wait_for_status=yellow&timeout=30s")
        except os_exc.SSLError:
            raise ClusterError(f"TLS verification failed for {url}: the server's certificate is not trusted",
                               hint="set ESDISTILL_ES_CA_CERTS to the cluster's CA file") from None
        except (os_exc.ConnectionError, os_exc.ConnectionTimeout):
            raise ClusterError(f"cannot reach OpenSearch at {url}", hint=how) from None
        except os_exc.AuthenticationException:
            raise ClusterError(f"OpenSearch at {url} refused the credentials (401)",
                               hint="check ESDISTILL_ES_USERNAME/ESDISTILL_ES_PASSWORD") from None
        except os_exc.AuthorizationException:
            try:
                client.transport.perform_request("GET", "/_plugins/_security/authinfo")
            except os_exc.TransportError as e:
                raise ClusterError(f"OpenSearch at {url} answered {e.status_code} to the credentials' own "
                                   f"authentication check: {e.error}") from None
            return {"status": None, "note": "no cluster monitor permission: health not checked"}
        except os_exc.TransportError as e:
            raise ClusterError(f"OpenSearch at {url} answered {e.status_code}: {e.error}", hint=how) from None

    def data_nodes(self) -> int | None:
        try:
            return self.client.cluster.health().get("number_of_data_nodes", 1)
        except os_exc.AuthorizationException:
            return None

    def node_versions(self) -> list[str]:
        nodes = self.client.nodes.info(filter_path="nodes.*.version").get("nodes", {})
        return [n["version"] for n in nodes.values()]

    def client_version(self) -> str:
        import opensearchpy

        return opensearchpy.__versionstr__

    # --------------------------------------------------------------------------------------- models, ingest
    def require_ml(self, url: str = "the cluster") -> dict[str, Any]:
        """The ml-commons plugin's presence, or a clear refusal naming what to install."""
        from .. import opensearch_ml

        try:
            opensearch_ml.require_ml(self.client)
        except ClusterError as e:
            raise ClusterError(f"{url}: {e}", hint=e.hint) from None
        return {"plugin": "opensearch-ml"}

    def _model(self, model_id: str) -> dict[str, Any] | None:
        try:
            return self.client.transport.perform_request("GET", f"/_plugins/_ml/models/{model_id}")
        except os_exc.NotFoundError:
            return None
        except os_exc.RequestError as e:  # ml-commons answers 400 to some ids it cannot parse
            if "Failed to find model" in str(e.info) or "Fail to find model" in str(e.info):
                return None
            raise

    def model_ref(self, model_id: str) -> str | None:
        """ml-commons' own id of the model esdistill calls ``model_id``: that id itself when ml-commons has a model
        under it, else the newest model registered under that name; None when there is neither."""
        if model_id in self._model_ids:
            return self._model_ids[model_id]
        if self.client is None:
            return None
        from .. import opensearch_ml

        found = None
        if self._model(model_id) is not None:
            found = model_id
        else:
            named = opensearch_ml.models_named(self.client, model_id)
            found = named[0]["model_id"] if named else None
        if found:
            self._model_ids[model_id] = found
        return found

    def model_stats(self, model_id: str) -> dict[str, Any] | None:
        """ml-commons' model record (``model_id``: its id or esdistill's name for it, :meth:`model_ref`), with
        ``deployment_stats.state`` ``started`` when it is ``DEPLOYED``."""
        ref = self.model_ref(model_id)
        model = self._model(ref) if ref else None
        if model is None:
            self._model_ids.pop(model_id, None)
            return None
        state = str(model.get("model_state", "")).lower()
        return {**model, "cluster_model_id": ref,
                "deployment_stats": {"state": "started" if state == "deployed" else state}}

    def upload_model(self, export, start: bool = False, replace: bool = False) -> dict[str, Any]:
        """The student into ml-commons (:mod:`esdistill.opensearch_ml`): traced from ``export.source`` into a
        TorchScript zip with ``tokenizer.json`` (checked against sentence-transformers), registered under the name
        ``export.model_id`` in ``upload_chunk`` requests, deployed, and its ``_predict`` compared with
        sentence-transformers (cosine > :data:`~esdistill.opensearch_ml.MIN_COSINE`) on the export's sample texts
        — a model that fails any step is undeployed and deleted, so nothing unverified is served. Without ``start``
        the verified model is undeployed again (registered, ready to deploy). Models already registered under that
        name are refused unless ``replace``, which undeploys and deletes them first."""
        from .. import opensearch_ml as ml
        from ..errors import ModelError

        if export is None or getattr(export, "source", None) is None:
            raise ClusterError("OpenSearch's upload traces the student from its sentence-transformers folder, and "
                               "this export does not name one", hint="run `esdistill export --upload` again")
        self.require_ml()
        name, client = export.model_id, self.client
        existing = ml.models_named(client, name)
        if existing and not replace:
            raise ClusterError(f"ml-commons already holds a model named {name!r} (id "
                               f"{existing[0]['model_id']}, {existing[0].get('model_state', '?')})",
                               hint="pass --replace, or set deploy.model_id to another name")
        for old in existing:
            ml.remove(client, old["model_id"])
        self._model_ids.pop(name, None)
        zp = ml.torchscript_zip(export.source, Path(export.model_path).parent / "opensearch", export.max_length)
        version = min(self.node_versions(), default="?")
        model_id = ml.register(client, zp, name)
        try:
            ml.deploy(client, model_id)
            cos = ml.verify_predict(client, model_id, export.source)
            if not start:
                ml.remove_deployment(client, model_id)
        except (ClusterError, ModelError) as e:
            ml.remove(client, model_id)
            raise type(e)(f"OpenSearch {version} did not serve the student {name!r}, so it was deleted again: {e}",
                          hint=e.hint) from None
        except BaseException:
            ml.remove(client, model_id)
            raise
        self._model_ids[name] = model_id
        return {"model_id": name, "cluster_model_id": model_id, "started": start, "cluster_version": version,
                "predict_min_cosine": cos, "zip": str(zp.path), "zip_sha256": zp.sha256}

    def describe(self, kind: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
        """A stored script or template (``GET _scripts/<id>``) or an ml-commons model (``GET
        _plugins/_ml/models/<id>``); OpenSearch has no inference endpoints."""
        client = self.client
        try:
            if kind == "script":
                try:
                    answer = client.get_script(id=rid)
                except os_exc.NotFoundError:
                    answer = {}
                return (answer["script"], None) if answer.get("found") else (None, NOT_STORED)
            if kind == "model":
                return client.transport.perform_request("GET", f"/_plugins/_ml/models/{rid}"), None
            if kind == "inference":
                return None, "OpenSearch has no inference endpoints (its models are ml-commons models)"
        except os_exc.NotFoundError:
            return None, "not found in the cluster"
        except os_exc.TransportError as e:
            return None, f"the cluster does not describe it ({e.status_code}: {reason(e.info) or e.error})"
        except (KeyError, IndexError):
            return None, "the cluster's answer holds no description"
        return None, f"unknown kind {kind!r}"

    def put_ingest_pipeline(self, pipeline_id: str, body: dict[str, Any]) -> None:
        self.client.ingest.put_pipeline(id=pipeline_id, body=body)

    def start_reindex(self, request: dict[str, Any]) -> str:
        """``_reindex`` as a task: the request's body parts (source, dest, script, conflicts, max_docs) as its
        body, the rest (slices, refresh, …) as its parameters."""
        body_keys = ("source", "dest", "script", "conflicts", "max_docs", "size")
        body = {k: v for k, v in request.items() if k in body_keys}
        params = {k: v for k, v in request.items() if k not in body_keys}
        params["wait_for_completion"] = False
        return self.client.reindex(body=body, **params)["task"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.client.tasks.get(task_id=task_id)


def _lines(searches: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """(index, body) pairs as ``_msearch``'s header and body lines."""
    out: list[dict[str, Any]] = []
    for index, body in searches:
        out += [{"index": index}, body]
    return out
