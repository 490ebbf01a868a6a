"""The query path: one user query answered by each system, timed.

Systems, as small strategy classes sharing one interface (``search(text) -> Result``):

* :class:`BM25` — ``multi_match`` on the BM25 index.
* :class:`Pipeline` — BM25 top-``depth`` with their texts, rescored by the cross-encoder teacher; documents
  below ``depth`` keep their BM25 order after the rescored ones.
* :class:`Student` — the query encoded client-side, top-level ``knn`` on the dense index.
* :class:`Hybrid` — BM25 and student kNN in ONE ``_msearch`` round trip, fused client-side by reciprocal
  rank fusion (no license needed; Elasticsearch's own RRF retriever is a paid feature).
* :class:`Neural` — the query encoded inside the cluster by the uploaded student (OpenSearch's ``neural`` query;
  Elasticsearch's ``query_vector_builder`` where it has ML), kNN on the dense index.
* :class:`ClusterHybrid` — the cluster's own hybrid search (OpenSearch: the ``hybrid`` query of BM25 and
  ``neural`` on the dense index, scores min-max normalised and combined by a normalization search pipeline).

``wall_ms`` is the client's wall time including query encoding / reranking; ``took_ms`` is Elasticsearch's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .backends import VECTOR_FIELD, EngineError, backend_for
from .candidates import bm25_body  # noqa: F401 - where it was imported from before the backends
from .data import Doc
from .cluster import check_shards
from .errors import ClusterError
from .indexing import doc_from_source


@dataclass
class Result:
    hits: list[tuple[str, float]]
    wall_ms: float
    took_ms: float
    extra: dict[str, float] = field(default_factory=dict)


def rrf(rankings: list[list[str]], k: int = 60, size: int | None = None) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: score(d) = sum over rankings of 1 / (k + rank(d)), rank from 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, 1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    fused = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    return fused[:size] if size else fused


def minmax(rankings: list[list[tuple[str, float]]], weights: list[float],
           size: int | None = None) -> list[tuple[str, float]]:
    """Convex combination of min-max normalised scores, as the engines' own hybrid queries fuse (OpenSearch's
    ``normalization-processor`` min_max + arithmetic_mean, Elasticsearch's ``linear`` retriever with the ``minmax``
    normalizer): score(d) = sum over rankings of w_i (s_i(d) - min_i) / (max_i - min_i), over each ranking's own
    hits; a ranking that did not return d adds 0 (its minimum), one whose hits all score alike gives each 1.
    Ties broken by id."""
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        lo, hi = min(x for _, x in ranking), max(x for _, x in ranking)
        for doc, x in ranking:
            scores[doc] = scores.get(doc, 0.0) + w * ((x - lo) / (hi - lo) if hi > lo else 1.0)
    fused = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    return fused[:size] if size else fused


def knn_body(vector: list[float], k: int, num_candidates: int, filter: dict | None = None,
             oversample: float | None = None, backend=None) -> dict[str, Any]:
    """A kNN search of the dense index's vector field (Elasticsearch: top-level ``knn``). ``filter`` is any query
    (applied during the kNN search, not after); ``oversample`` re-ranks ``k * oversample`` quantized hits with the
    full-precision vectors (int8/bbq). As ``backend`` (a client or a backend; default: Elasticsearch) writes it."""
    return backend_for(backend).knn_body(vector, k, num_candidates, VECTOR_FIELD, filter=filter, oversample=oversample)


def knn_builder_body(text: str, model_id: str, k: int, num_candidates: int, filter: dict | None = None,
                     backend=None) -> dict:
    """kNN whose query vector the cluster computes itself with the uploaded student (needs an ML node)."""
    return backend_for(backend).knn_text_body(text, model_id, k, num_candidates, VECTOR_FIELD, filter=filter)


def _hits(resp: dict, what: str = "search") -> list[tuple[str, float]]:
    return [(h["_id"], float(h["_score"])) for h in check_shards(resp, what)["hits"]["hits"]]


class BM25:
    name = "bm25"

    def __init__(self, client, index: str, fields: list[str], k: int = 100):
        self.client, self.index, self.fields, self.k = client, index, fields, k
        self.backend = backend_for(client)

    def request(self, text: str) -> dict[str, Any]:
        """The HTTP request this system sends for ``text``, as an application would send it."""
        return {"method": "POST", "path": f"/{self.index}/_search",
                "body": self.backend.bm25_body(text, self.fields, self.k)}

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        resp = self.backend.search(self.index, self.backend.bm25_body(text, self.fields, self.k))
        return Result(_hits(resp, f"BM25 search on {self.index!r}"), (time.perf_counter() - t0) * 1e3,
                      float(resp["took"]))


class RequestPipeline:
    """The user's own search request (``teacher.request``) as the pipeline: what the application serves today."""

    name = "pipeline"

    def __init__(self, request_search, k: int = 100):
        self.rs, self.k = request_search, k

    def request(self, text: str) -> dict[str, Any]:
        header, body = self.rs.searches(text, self.k)
        if self.rs.template_id:
            return {"method": "POST", "path": f"/{header['index']}/_search/template", "body": body}
        return {"method": "POST", "path": f"/{header['index']}/_search", "body": body}

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        header, body = self.rs.searches(text, self.k)
        from .request_teacher import _reason

        backend = self.rs.backend
        try:
            resp = (backend.search_template(header["index"], body) if self.rs.template_id
                    else backend.search(header["index"], body))
        except EngineError as e:
            raise ClusterError(f"{self.rs.source}: the cluster refused the request: {_reason(e.body) or e}") from None
        return Result(_hits(resp, f"{self.rs.source} on {header['index']!r}"), (time.perf_counter() - t0) * 1e3,
                      float(resp["took"]))


class Pipeline:
    """BM25 → cross-encoder: the good, slow system the student replaces."""

    name = "pipeline"

    def __init__(self, client, index: str, fields: list[str], reranker, depth: int = 100, k: int = 100,
                 batch_size: int = 64, bm25_weight: float = 0.0):
        self.client, self.index, self.fields = client, index, fields
        self.reranker, self.depth, self.k, self.batch_size = reranker, depth, k, batch_size
        self.bm25_weight = bm25_weight  # the teacher's fusion with BM25 (esdistill.teacher.fuse), as in training
        self.backend = backend_for(client)

    def retrieve(self, text: str) -> tuple[list[Doc], list[float], list[str], float]:
        """BM25's top ``depth`` with their texts (what is reranked) and, when ``k`` is larger, its top ``k`` ids
        alone (the tail kept in BM25 order) in one ``_msearch``: only what is reranked is fetched. Returns
        (head documents, their BM25 scores, top-k ids, Elasticsearch's took in ms)."""
        responses = self.backend.msearch(self._pairs(text))["responses"]
        for r in responses:
            check_shards(r, f"pipeline: BM25 search on {self.index!r}")
        head = responses[0]["hits"]["hits"]
        ranked = [h["_id"] for h in (responses[-1]["hits"]["hits"])]
        docs = [doc_from_source(h["_id"], h.get("_source", {}), self.fields) for h in head]
        return docs, [float(h["_score"]) for h in head], ranked, float(max(r["took"] for r in responses))

    def _pairs(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        """(index, body) of each search: BM25's head with the text fields, and — ``k`` larger than ``depth`` —
        its top ``k`` ids."""
        pairs = [(self.index, self.backend.bm25_body(text, self.fields, self.depth, source=self.fields))]
        if self.k > self.depth:
            pairs.append((self.index, self.backend.bm25_body(text, self.fields, self.k)))
        return pairs

    def _searches(self, text: str) -> list[dict[str, Any]]:
        return [line for index, body in self._pairs(text) for line in ({"index": index}, body)]

    def request(self, text: str) -> dict[str, Any]:
        how = (f"the teacher ensemble ({self.reranker.describe()}, z-scores per query)" if hasattr(
            self.reranker, "fused") else f"the cross-encoder (fused with BM25 at weight {self.bm25_weight:g})")
        return {"method": "POST", "path": "/_msearch", "ndjson": self._searches(text),
                "then": f"rerank the first response's {self.depth} hits with {how}; the rest of the second keeps "
                        "BM25's order"}

    def rerank(self, text: str, docs: list[Doc], bm25: list[float], ranked: list[str]) -> list[tuple[str, float]]:
        """The pipeline's ranking: ``docs`` (BM25's head) by the teacher's score — fused with BM25 as in training
        — then the rest of ``ranked`` in BM25 order, ``k`` in all."""
        import torch

        from .embed import inference_context

        with inference_context():
            if hasattr(self.reranker, "fused"):  # a teacher ensemble (esdistill.ensemble), BM25 among its members
                scores = self.reranker.fused(text, docs, bm25, self.batch_size) if docs else []
            else:
                scores = (self.reranker.predict([(text, d.full_text) for d in docs], batch_size=self.batch_size,
                                                activation_fn=torch.nn.Identity(), show_progress_bar=False)
                          if docs else [])
        if docs and self.bm25_weight:
            from .teacher import fuse

            scores = fuse(scores, bm25, self.bm25_weight)
        top = sorted(zip((d.id for d in docs), (float(s) for s in scores), strict=True), key=lambda x: -x[1])
        floor = min((s for _, s in top), default=0.0)
        reranked = {d.id for d in docs}
        tail = [(d, floor - i - 1.0) for i, d in enumerate(d for d in ranked if d not in reranked)]
        return (top + tail)[: self.k]

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        docs, bm25, ranked, took = self.retrieve(text)
        t1 = time.perf_counter()
        hits = self.rerank(text, docs, bm25, ranked)
        rerank_ms = (time.perf_counter() - t1) * 1e3
        return Result(hits, (time.perf_counter() - t0) * 1e3, took, {"rerank_ms": rerank_ms})


class Student:
    """kNN with the query encoded here. ``expect_index``: the versioned index whose model ``model`` is (the served
    path searches the alias); a hit from any other index — the alias moved since the model was loaded — raises."""

    name = "student"

    def __init__(self, client, index: str, model, k: int = 100, num_candidates: int = 200,
                 filter: dict | None = None, oversample: float | None = None, expect_index: str | None = None):
        self.client, self.index, self.model, self.k, self.num_candidates = client, index, model, k, num_candidates
        self.filter, self.oversample, self.expect_index = filter, oversample, expect_index
        self.backend = backend_for(client)

    def check_index(self, resp: dict) -> dict:
        """Refuse hits of an index other than ``expect_index``: vectors of another model give plausible, wrong hits."""
        if self.expect_index:
            other = {h["_index"] for h in resp.get("hits", {}).get("hits", [])} - {self.expect_index}
            if other:
                from .errors import ModelError

                raise ModelError(f"{self.index!r} now serves {', '.join(sorted(other))}, but the query was encoded "
                                 f"by the model of {self.expect_index!r} (the alias moved after it was loaded)",
                                 hint="load the served system again (a new `esdistill search` / `monitor` run)")
        return resp

    def body(self, vector: list[float]) -> dict[str, Any]:
        return self.backend.knn_body(vector, self.k, self.num_candidates, VECTOR_FIELD, filter=self.filter,
                                     oversample=self.oversample)

    def encode(self, text: str) -> list[float]:
        return self.model.encode(text, normalize_embeddings=True, show_progress_bar=False).tolist()

    def request(self, text: str, model_id: str | None = None) -> dict[str, Any]:
        """The kNN request for ``text``: with the query vector this model computes, or — ``model_id``, a model
        uploaded to a cluster with ML — the form where the cluster encodes it (``query_vector_builder``)."""
        body = (self.backend.knn_text_body(text, model_id, self.k, self.num_candidates, VECTOR_FIELD, self.filter)
                if model_id else self.body(self.encode(text)))
        return {"method": "POST", "path": f"/{self.index}/_search", "body": body}

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        vec = self.encode(text)
        t1 = time.perf_counter()
        resp = self.check_index(self.backend.search(self.index, self.body(vec)))
        return Result(_hits(resp, f"kNN search on {self.index!r}"), (time.perf_counter() - t0) * 1e3,
                      float(resp["took"]), {"encode_ms": (t1 - t0) * 1e3})


class Hybrid:
    """Student kNN + BM25 in one ``_msearch``, fused on the client: ``minmax`` (default; :func:`minmax`, the
    student's ``weight`` and BM25's ``1 - weight``) or ``rrf`` (:func:`rrf` with ``rrf_k``)."""

    name = "hybrid"

    def __init__(self, client, bm25_index: str, fields: list[str], dense_index: str, model, k: int = 100,
                 num_candidates: int = 200, rrf_k: int = 60, oversample: float | None = None,
                 expect_index: str | None = None, fusion: str = "minmax", weight: float = 0.5):
        self.client, self.bm25_index, self.fields, self.dense_index = client, bm25_index, fields, dense_index
        self.student = Student(client, dense_index, model, k, num_candidates, oversample=oversample,
                               expect_index=expect_index)
        self.k, self.num_candidates, self.rrf_k = k, num_candidates, rrf_k
        self.fusion, self.weight = fusion, weight
        self.backend = self.student.backend

    def fuse(self, lexical: list[tuple[str, float]], dense: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """BM25's and the student's hits, fused as configured, ``k`` in all."""
        if self.fusion == "rrf":
            return rrf([[d for d, _ in lexical], [d for d, _ in dense]], k=self.rrf_k, size=self.k)
        return minmax([lexical, dense], [1.0 - self.weight, self.weight], size=self.k)

    def describe(self) -> str:
        if self.fusion == "rrf":
            return f"reciprocal rank fusion, score = sum of 1 / ({self.rrf_k} + rank)"
        return (f"min-max normalise each ranking's scores over its own hits (a document it did not return: 0), "
                f"score = {self.weight:g} × the student's + {1 - self.weight:g} × BM25's")

    def _pairs(self, text: str, vec: list[float]) -> list[tuple[str, dict[str, Any]]]:
        return [(self.bm25_index, self.backend.bm25_body(text, self.fields, self.k)),
                (self.dense_index, self.student.body(vec))]

    def _searches(self, text: str, vec: list[float]) -> list[dict[str, Any]]:
        return [line for index, body in self._pairs(text, vec) for line in ({"index": index}, body)]

    def request(self, text: str) -> dict[str, Any]:
        return {"method": "POST", "path": "/_msearch", "ndjson": self._searches(text, self.student.encode(text)),
                "then": f"fuse the two rankings: {self.describe()}"}

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        vec = self.student.encode(text)
        t1 = time.perf_counter()
        resp = self.backend.msearch(self._pairs(text, vec))
        self.student.check_index(resp["responses"][1])
        lexical, dense = (_hits(r, f"hybrid search on {i!r}") for r, i in
                          zip(resp["responses"], (self.bm25_index, self.dense_index), strict=True))
        fused = self.fuse(lexical, dense)
        took = float(resp.get("took", max(r["took"] for r in resp["responses"])))
        return Result(fused, (time.perf_counter() - t0) * 1e3, took, {"encode_ms": (t1 - t0) * 1e3})


class Neural:
    """kNN with the query encoded inside the cluster by its model ``model_id`` (the uploaded student): one request
    carrying the query text (:meth:`~esdistill.backends.SearchBackend.knn_text_body`)."""

    name = "neural"

    def __init__(self, client, index: str, model_id: str, k: int = 100, num_candidates: int = 200,
                 expect_index: str | None = None):
        self.client, self.index, self.model_id, self.k, self.num_candidates = client, index, model_id, k, num_candidates
        self.expect_index = expect_index
        self.backend = backend_for(client)
        self.measured = {"encode": f"queries encoded inside the cluster by its model {model_id!r}"}

    def body(self, text: str) -> dict[str, Any]:
        return self.backend.knn_text_body(text, self.model_id, self.k, self.num_candidates, VECTOR_FIELD)

    def request(self, text: str) -> dict[str, Any]:
        return {"method": "POST", "path": f"/{self.index}/_search", "body": self.body(text)}

    def search(self, text: str) -> Result:
        t0 = time.perf_counter()
        resp = self.backend.search(self.index, self.body(text))
        Student.check_index(self, resp)
        return Result(_hits(resp, f"neural search on {self.index!r}"), (time.perf_counter() - t0) * 1e3,
                      float(resp["took"]))


class ClusterHybrid(Neural):
    """The cluster's own hybrid search on the dense index (which holds ``title`` and ``text`` BM25-searchable):
    esdistill's BM25 query and :class:`Neural`'s kNN, normalised and combined by the cluster
    (:meth:`~esdistill.backends.SearchBackend.hybrid_text_body`) with ``weights`` (BM25, kNN)."""

    name = "hybrid_cluster"
    #: what the dense index holds of each document, BM25-searchable
    FIELDS = ["title", "text"]

    def __init__(self, client, index: str, model_id: str, k: int = 100, num_candidates: int = 200,
                 weights: tuple[float, float] = (0.5, 0.5), normalization: str = "min_max",
                 combination: str = "arithmetic_mean", expect_index: str | None = None):
        super().__init__(client, index, model_id, k, num_candidates, expect_index)
        self.weights, self.normalization, self.combination = weights, normalization, combination
        self.measured = {"encode": f"queries encoded inside the cluster by its model {model_id!r}",
                         "fusion": f"{normalization} normalization, {combination} with weights "
                                   f"{list(weights)} (BM25, kNN), in the cluster"}

    def body(self, text: str) -> dict[str, Any]:
        return self.backend.hybrid_text_body(text, self.FIELDS, self.model_id, self.k, self.num_candidates,
                                             self.weights, self.normalization, self.combination)


def run_load(system, queries: list[str], workers: int = 8, seconds: float = 30.0, max_queries: int = 100_000) -> dict:
    """Bounded concurrent load on one system: ``workers`` threads send ``queries`` round-robin for ``seconds``
    (and at most ``max_queries`` in all). Returns counts, errors and wall-latency percentiles (ms)."""
    import threading

    from .evaluate import pct

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    sent = [0]

    def worker(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= max_queries:
                    return
                sent[0] += 1
            try:
                res = system.search(queries[i % len(queries)])
                if not res.hits:
                    raise RuntimeError("no hits")
                with lock:
                    lat.append(res.wall_ms)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
            i += workers

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {"system": system.name, "workers": workers, "seconds": wall, "queries": len(lat), "errors": len(errors),
            "error_samples": errors[:5], "qps": len(lat) / wall if wall else 0.0, "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99)}
