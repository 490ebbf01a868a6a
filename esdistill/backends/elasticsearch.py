"""Elasticsearch behind :class:`~esdistill.backends.base.SearchBackend`: elasticsearch-py's client and helpers
(``streaming_bulk``, ``scan``), the bodies of ``mappings/`` as they are, ``dense_vector`` with explicit
``index_options``, the top-level ``knn`` search, ``_meta`` in the mapping, eland for the model upload and the
``inference`` ingest processor."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import Elasticsearch, helpers
from elasticsearch import exceptions as es_exc

from ..errors import ClusterError
from .base import NOT_STORED, VECTOR_FIELD, ConnectionLost, EngineError, SearchBackend, load_mapping, reason

#: how many documents (the latest writes, the earliest) a search-only identity samples when no UUID can be read
IDENTITY_SAMPLE = 100
#: the ingest pipeline's working field: what the model embeds
INPUT_FIELD = "_esdistill_input"


@contextmanager
def _refused():
    """elasticsearch-py's error statuses as :class:`EngineError` (its text, status, message, body kept)."""
    try:
        yield
    except es_exc.ApiError as e:
        raise EngineError(str(e), e.meta.status, e.message, e.body, getattr(e, "error", None),
                          getattr(e, "info", None)) from e


class ElasticsearchBackend(SearchBackend):
    """An Elasticsearch cluster through elasticsearch-py's ``client``. ``client`` may be None for the body
    builders alone (the ``*_mapping`` and ``*_body`` methods ask nothing of a cluster)."""

    name = "elasticsearch"

    def __init__(self, client: Elasticsearch | None):
        self.client = client

    def __repr__(self) -> str:
        return f"ElasticsearchBackend({self.client!r})"

    # ------------------------------------------------------------------------------------ mappings and bodies
    def bm25_mapping(self) -> dict[str, Any]:
        return load_mapping("bm25_index.json")

    def dense_mapping(self, dims: int, similarity: str, index_type: str, m: int | None = None,
                      ef_construction: int | None = None) -> dict[str, Any]:
        body = load_mapping("dense_index.json")
        vec = body["mappings"]["properties"][VECTOR_FIELD]
        vec["dims"] = dims
        vec["similarity"] = similarity
        opts: dict[str, Any] = {"type": index_type}
        if "hnsw" in index_type:
            opts.update(m=m, ef_construction=ef_construction)
        vec["index_options"] = opts
        return body

    def results_mapping(self) -> dict[str, Any]:
        return load_mapping("results_index.json")

    def embed_pipeline(self, model_id: str, text_fields: list[str]) -> dict[str, Any]:
        """``mappings/embed_pipeline.json`` for ``model_id`` (its ``inference`` processor), with ``title``/``text``
        first set from ``text_fields`` (when they are other fields) and those source fields removed at the end."""
        body = load_mapping("embed_pipeline.json")
        title, rest = (text_fields[0], text_fields[1:]) if len(text_fields) > 1 else (None, list(text_fields))
        first: list[dict[str, Any]] = []
        if title not in (None, "title"):
            first.append({"set": {"field": "title", "value": f"{{{{{{{title}}}}}}}"}})
        if rest != ["text"]:
            first.append({"set": {"field": "text", "value": " ".join(f"{{{{{{{f}}}}}}}" for f in rest)}})
        others = list(dict.fromkeys(f.split(".")[0] for f in text_fields if f not in ("title", "text")))
        for proc in body["processors"]:
            if "inference" in proc:
                proc["inference"]["model_id"] = model_id
            if "remove" in proc and others:
                proc["remove"] = {"field": [INPUT_FIELD, *others], "ignore_missing": True}
        body["processors"] = first + body["processors"]
        return body

    def bm25_body(self, text: str, fields: list[str], size: int, source: bool | list[str] = False) -> dict[str, Any]:
        """``multi_match`` best_fields with tie_breaker 0.5, as BEIR's Elasticsearch baseline."""
        query = {"multi_match": {"query": text, "fields": fields, "type": "best_fields", "tie_breaker": 0.5}}
        return {"query": query, "size": size, "_source": source, "track_total_hits": False}

    def knn_body(self, vector: list[float], k: int, num_candidates: int, field: str = VECTOR_FIELD,
                 filter: dict | None = None, filter_ids: list[str] | None = None,
                 oversample: float | None = None) -> dict[str, Any]:
        """The top-level ``knn`` section; ``oversample`` is its ``rescore_vector`` (int8/bbq)."""
        knn: dict[str, Any] = {"field": field, "query_vector": vector, "k": k,
                               "num_candidates": max(num_candidates, k)}
        if filter_ids is not None:
            filter = {"ids": {"values": list(filter_ids)}}
        if filter:
            knn["filter"] = filter
        if oversample:
            knn["rescore_vector"] = {"oversample": oversample}
        return {"knn": knn, "size": k, "_source": False}

    def knn_text_body(self, text: str, model_id: str, k: int, num_candidates: int, field: str = VECTOR_FIELD,
                      filter: dict | None = None) -> dict[str, Any]:
        """``knn`` with a ``text_embedding`` ``query_vector_builder`` (needs an ML node)."""
        knn: dict[str, Any] = {"field": field, "k": k, "num_candidates": max(num_candidates, k),
                               "query_vector_builder": {"text_embedding": {"model_id": model_id,
                                                                           "model_text": text}}}
        if filter:
            knn["filter"] = filter
        return {"knn": knn, "size": k, "_source": False}

    # ----------------------------------------------------------------------------------------------- indices
    def index_exists(self, index: str) -> bool:
        return bool(self.client.indices.exists(index=index))

    def create_index(self, index: str, body: dict[str, Any], meta: dict[str, Any] | None = None,
                     exist_ok: bool = False) -> bool:
        if meta is not None:
            body = copy.deepcopy(body)
            body["mappings"]["_meta"] = {"esdistill": meta}
        try:
            self.client.indices.create(index=index, **body)
        except es_exc.BadRequestError as e:
            if exist_ok and e.error == "resource_already_exists_exception":
                return False
            raise ClusterError(f"Elasticsearch refused to create index {index!r}: {e.message} {e.info}") from None
        return True

    def add_fields(self, index: str, properties: dict[str, Any]) -> None:
        with _refused():
            self.client.indices.put_mapping(index=index, properties=properties)

    def delete_index(self, index: str, missing_ok: bool = False) -> None:
        if missing_ok:
            self.client.indices.delete(index=index, ignore_unavailable=True)
        else:
            self.client.indices.delete(index=index)

    def index_meta(self, index: str) -> dict[str, Any] | None:
        try:
            resp = self.client.indices.get_mapping(index=index).body
        except es_exc.NotFoundError:
            return None
        (mapping,) = resp.values()
        return mapping.get("mappings", {}).get("_meta", {}).get("esdistill", {})

    def put_meta(self, index: str, meta: dict[str, Any]) -> None:
        self.client.indices.put_mapping(index=index, meta={"esdistill": meta})

    def vector_dims(self, index: str, field: str = VECTOR_FIELD) -> int | None:
        try:
            resp = self.client.indices.get_mapping(index=index).body
        except es_exc.NotFoundError:
            return None
        for mapping in resp.values():
            spec = mapping.get("mappings", {}).get("properties", {}).get(field)
            if spec and spec.get("type") == "dense_vector":
                return int(spec["dims"])
        return None

    def vector_similarity(self, index: str, field: str = VECTOR_FIELD) -> str | None:
        try:
            resp = self.client.indices.get_mapping(index=index).body
        except es_exc.NotFoundError:
            return None
        spec = resp.get(index, {}).get("mappings", {}).get("properties", {}).get(field) or {}
        return spec.get("similarity")

    def refresh(self, index: str) -> None:
        self.client.indices.refresh(index=index)

    def count(self, index: str) -> int:
        return int(self.client.count(index=index).body["count"])

    def set_replicas(self, index: str, replicas: int) -> None:
        self.client.indices.put_settings(index=index, settings={"number_of_replicas": replicas})

    def segment_count(self, index: str) -> int:
        shards = self.client.indices.segments(index=index).body["indices"][index]["shards"]
        return sum(len(c["segments"]) for copies in shards.values() for c in copies if c["routing"]["primary"])

    def creation_dates(self, pattern: str) -> dict[str, int]:
        try:
            settings = self.client.indices.get_settings(index=pattern, name="index.creation_date").body
        except es_exc.NotFoundError:
            return {}
        return {name: int(s["settings"]["index"]["creation_date"]) for name, s in settings.items()}

    def index_identity(self, index: str) -> dict[str, Any]:
        """Each index's UUID, its document and deleted-document counts and the highest sequence number of each
        primary shard (``_stats``). A sequence number grows with every write (index, update, delete), so any
        change to the documents changes this record, and a rebuilt index under the same name has another UUID.

        An API key that may read the index but not its stats (no ``monitor`` privilege) gets it from searches
        (:meth:`_identity_by_search`): the live documents' count and the sum of their ``_seq_no`` (a write gives a
        document a higher one; a deletion lowers the count), the index names the hits come from — and each index's
        UUID, read from a point in time the search opens, so that an index deleted and loaded again under the
        same name with the same count is not taken for the old one."""
        try:
            stats = self.client.indices.stats(index=index, level="shards", metric="docs").body
        except es_exc.NotFoundError:
            raise ClusterError(f"index {index!r} does not exist", hint="check data.index") from None
        except es_exc.AuthorizationException:
            return self._identity_by_search(index)
        out = {}
        for name, st in sorted(stats["indices"].items()):
            seq = {shard: s.get("seq_no", {}).get("max_seq_no", -1) for shard, copies in st.get("shards", {}).items()
                   for s in copies if s["routing"]["primary"]}
            out[name] = {"uuid": st.get("uuid"), "count": st["primaries"]["docs"]["count"],
                         "deleted": st["primaries"]["docs"]["deleted"], "max_seq_no": dict(sorted(seq.items()))}
        return {"indices": out, "from": "stats"}

    def _identity_by_search(self, index: str) -> dict[str, Any]:
        """:meth:`index_identity` with the ``read`` privilege only. The UUIDs come from a point in time's id (which
        names each shard's index by name and UUID; reading it needs only ``read``). Where none can be read, a
        sample of documents — the ids, ``_seq_no``, ``_primary_term`` and source of the :data:`IDENTITY_SAMPLE`
        latest and earliest writes — stands in, with a warning that a re-creation that keeps them cannot be
        detected."""
        import hashlib
        import warnings

        from ..errors import EsdistillWarning

        client = self.client
        resp = client.search(index=index, size=0, track_total_hits=True, aggs={
            "seq_no_sum": {"sum": {"field": "_seq_no"}}, "seq_no_max": {"max": {"field": "_seq_no"}},
            "indices": {"terms": {"field": "_index", "size": 1000}}}).body
        aggs = resp["aggregations"]
        names = sorted(b["key"] for b in aggs["indices"]["buckets"])
        out = {"count": resp["hits"]["total"]["value"], "seq_no_sum": aggs["seq_no_sum"]["value"],
               "seq_no_max": aggs["seq_no_max"]["value"], "indices": names, "from": "search"}
        uuids, why = self._uuids_from_point_in_time(index, names)
        if uuids is not None:
            out["uuids"] = uuids
            return out
        digest = hashlib.sha256()
        for order in ("desc", "asc"):
            hits = client.search(index=index, size=IDENTITY_SAMPLE, sort=[{"_seq_no": order}],
                                 seq_no_primary_term=True, track_total_hits=False).body["hits"]["hits"]
            for h in hits:
                digest.update(json.dumps([h["_index"], h["_id"], h.get("_seq_no"), h.get("_primary_term"),
                                          h.get("_source")], sort_keys=True, default=str).encode())
        out["sample"] = digest.hexdigest()[:16]
        warnings.warn(f"index {index!r}: these credentials may not read its stats (no `monitor` privilege) nor its "
                      f"UUID ({why}); it is keyed on its count, the sum of its `_seq_no` and a sample of "
                      f"{2 * IDENTITY_SAMPLE} documents, so deleting it and loading it again under the same name, "
                      "with the same count and those documents unchanged, cannot be detected — every stage would "
                      "reuse its output. Grant `monitor` on the index, or clear the work dir's caches after "
                      "re-creating it", EsdistillWarning, stacklevel=4)
        return out

    def _uuids_from_point_in_time(self, index: str, names: list[str]) -> tuple[dict[str, str] | None, str | None]:
        """``({index name: UUID}, None)`` read from a point in time opened (and closed at once) on ``index``: its
        id encodes each shard as the index name (a length byte, the name) and its 22-character UUID. ``(None,
        why)`` when the point in time is refused or its id does not hold every name in that form."""
        import base64
        import re

        if not names:
            return {}, None
        try:
            pit = self.client.open_point_in_time(index=index, keep_alive="10s").body["id"]
        except es_exc.ApiError as e:
            return None, f"a point in time was refused: {e.meta.status}"
        try:
            self.client.close_point_in_time(id=pit)
        except es_exc.ApiError:
            pass  # it expires in 10 s
        try:
            raw = base64.urlsafe_b64decode(pit + "=" * (-len(pit) % 4))
        except ValueError:
            return None, "the point in time's id is not base64"
        uuids: dict[str, str] = {}
        for name in names:
            encoded = name.encode()
            if len(encoded) > 127:
                return None, f"index name {name!r} too long to find in the point in time's id"
            found = set(re.findall(re.escape(bytes([len(encoded)]) + encoded) + rb"\x16([A-Za-z0-9_-]{22})", raw))
            if len(found) != 1:
                return None, "the point in time's id does not name the index's UUID in the form expected"
            uuids[name] = found.pop().decode()
        return dict(sorted(uuids.items())), None

    # ----------------------------------------------------------------------------------------------- aliases
    def alias_targets(self, alias: str) -> list[str]:
        try:
            return list(self.client.indices.get_alias(name=alias).body)
        except es_exc.NotFoundError:
            return []

    def has_alias(self, index: str) -> bool:
        try:
            aliases = self.client.indices.get_alias(index=index).body
        except es_exc.NotFoundError:
            return False
        return any(v.get("aliases") for v in aliases.values())

    def move_alias(self, alias: str, index: str, leave: list[str]) -> None:
        actions = [{"remove": {"index": i, "alias": alias}} for i in leave if i != index]
        actions.append({"add": {"index": index, "alias": alias}})
        self.client.indices.update_aliases(actions=actions)

    # --------------------------------------------------------------------------------------------- documents
    def stream_bulk(self, actions: Iterable[dict[str, Any]], chunk_size: int = 500
                    ) -> Iterator[tuple[bool, dict[str, Any]]]:
        stream = helpers.streaming_bulk(self.client, actions, chunk_size=chunk_size, max_retries=0,
                                        raise_on_error=False, raise_on_exception=True)
        try:
            yield from stream
        except (es_exc.ConnectionError, es_exc.ConnectionTimeout) as e:
            raise ConnectionLost(str(e)) from None

    def scan(self, index: str, fields: list[str] | bool = True,
             since: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = ({"range": {since[0]: {"gte": f"now-{since[1]}"}}} if since
                                 else {"match_all": {}})
        with _refused():
            if fields is True:
                yield from helpers.scan(self.client, index=index, query={"query": query})
            else:
                yield from helpers.scan(self.client, index=index, query={"query": query}, _source=fields)

    def get_sources(self, index: str, ids: list[str], fields: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for start in range(0, len(ids), 1000):
            resp = self.client.mget(index=index, ids=ids[start : start + 1000], source=fields).body
            for d in resp["docs"]:
                if d.get("found"):
                    yield d["_id"], d.get("_source", {})

    # ------------------------------------------------------------------------------------------------ search
    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with _refused():
            return self.client.search(index=index, body=body).body

    def msearch(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        with _refused():
            return self.client.msearch(searches=_lines(searches)).body

    def search_template(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with _refused():
            return self.client.search_template(index=index, body=body).body

    def msearch_template(self, searches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        with _refused():
            return self.client.msearch_template(search_templates=_lines(searches)).body

    # ------------------------------------------------------------------------------------------------ cluster
    def check(self, url: str, how: str) -> dict[str, Any]:
        """``GET /_cluster/health`` (the test build has no ``GET /``) with errors rewritten for humans."""
        client = self.client
        try:
            health = client.cluster.health(wait_for_status="yellow", timeout="30s").body
        except es_exc.SSLError:
            raise ClusterError(
                f"TLS verification failed for {url}: the server's certificate is not trusted",
                hint="set ESDISTILL_ES_CA_CERTS to the cluster's CA file, or ESDISTILL_ES_CA_FINGERPRINT to its "
                     "SHA-256",
            ) from None
        except es_exc.ConnectionError:
            raise ClusterError(f"cannot reach Elasticsearch at {url}", hint=how) from None
        except es_exc.AuthenticationException:
            raise ClusterError(
                f"Elasticsearch at {url} refused the credentials (401)",
                hint="check ESDISTILL_ES_API_KEY or ESDISTILL_ES_USERNAME/ESDISTILL_ES_PASSWORD",
            ) from None
        except es_exc.AuthorizationException:
            # 403: the credentials are good but may not read cluster health (an API key or role scoped to
            # indices, without the cluster `monitor` privilege). Everything esdistill does needs index privileges.
            try:
                client.security.authenticate()
            except es_exc.ApiError as e:
                raise ClusterError(f"Elasticsearch at {url} answered {e.meta.status} to the credentials' own "
                                   f"authentication check: {e.message}") from None
            return {"status": None, "note": "no cluster monitor privilege: health not checked"}
        except es_exc.ApiError as e:
            raise ClusterError(f"Elasticsearch at {url} answered {e.meta.status}: {e.message}", hint=how) from None
        return health

    def data_nodes(self) -> int | None:
        try:
            return self.client.cluster.health().body.get("number_of_data_nodes", 1)
        except es_exc.AuthorizationException:
            return None

    def node_versions(self) -> list[str]:
        nodes = self.client.nodes.info(filter_path="nodes.*.version").body.get("nodes", {})
        return [n["version"] for n in nodes.values()]

    def client_version(self) -> str:
        import elasticsearch

        return elasticsearch.__versionstr__

    # --------------------------------------------------------------------------------------- models, ingest
    def require_ml(self, url: str = "the cluster") -> dict[str, Any]:
        """``GET _ml/info`` or a clear refusal: the local test build has no ML, the docker stack has."""
        try:
            return self.client.ml.info().body
        except (es_exc.BadRequestError, es_exc.NotFoundError, es_exc.ApiError) as e:
            raise ClusterError(
                f"{url} has no machine learning ({getattr(e, 'message', e)}); a trained model cannot be uploaded "
                "there",
                hint="use the full stack in docker/ (ML under a trial license) or an Elastic cluster with ML nodes",
            ) from None

    def model_stats(self, model_id: str) -> dict[str, Any] | None:
        try:
            stats = self.client.ml.get_trained_models_stats(model_id=model_id).body
        except es_exc.NotFoundError:
            return None
        return (stats.get("trained_model_stats") or [{}])[0]

    def upload_model(self, export, start: bool = False, replace: bool = False) -> dict[str, Any]:
        """With eland (config, chunked definition, vocabulary): :func:`esdistill.eland_export.upload_with_eland`."""
        from ..eland_export import upload_with_eland

        return upload_with_eland(self, export, start=start, replace=replace)

    def describe(self, kind: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
        """A stored script or search template (``GET _scripts/<id>``: its language, source and options), a trained
        model (``GET _ml/trained_models/<id>``: its whole config, which a re-upload under the same id changes:
        ``create_time``) or an inference endpoint (``GET _inference/<id>``: service, settings)."""
        client = self.client
        try:
            if kind == "script":
                try:
                    answer = client.get_script(id=rid).body
                except es_exc.NotFoundError:  # the cluster answers 404 {"found": false}
                    answer = {}
                return (answer["script"], None) if answer.get("found") else (None, NOT_STORED)
            if kind == "model":
                try:
                    return client.ml.get_trained_models(model_id=rid).body["trained_model_configs"][0], None
                except es_exc.NotFoundError:  # a query vector builder's model_id may name an inference endpoint
                    kind = "inference"
            if kind == "inference":
                return client.inference.get(inference_id=rid).body["endpoints"][0], None
        except es_exc.NotFoundError:
            return None, "not found in the cluster"
        except es_exc.ApiError as e:  # 400 "no handler" (no ML/inference in this build), 403 (no privilege)
            return None, f"the cluster does not describe it ({e.meta.status}: {reason(e.body) or e.message})"
        except (KeyError, IndexError):
            return None, "the cluster's answer holds no description"
        return None, f"unknown kind {kind!r}"

    def put_ingest_pipeline(self, pipeline_id: str, body: dict[str, Any]) -> None:
        self.client.ingest.put_pipeline(id=pipeline_id, **body)

    def start_reindex(self, request: dict[str, Any]) -> str:
        return self.client.reindex(**request).body["task"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.client.tasks.get(task_id=task_id).body


def _lines(searches: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """(index, body) pairs as ``_msearch``'s header and body lines."""
    out: list[dict[str, Any]] = []
    for index, body in searches:
        out += [{"index": index}, body]
    return out
