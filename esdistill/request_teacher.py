"""The user's own search request as the teacher: the pipeline they already serve, distilled as it is.

A request body (a JSON file in which every ``"{{query}}"`` is replaced by the query text) — or a stored search
template (``params.query``) where the cluster has mustache — is sent for every training query with
``_msearch``: its hits are the candidates and its ``_score`` the labels, on their raw scale, per query. Any
search the cluster runs works: ``rescore`` (a learning-to-rank rescorer among them), ``function_score``,
retrievers, ``text_similarity_reranker``. esdistill sets ``size`` (``candidates.k``) and ``_source: false``.

At evaluation the same request is the pipeline system, so the report compares the student with what the
application really serves.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
from .backends import EngineError, backend_for, reason
from .backends.base import NOT_STORED
from .cluster import check_shards
from .config import fingerprint
from .errors import ClusterError, InputError

PLACEHOLDER = "{{query}}"


def load_request(path: Path | str) -> dict[str, Any]:
    """The request body in ``path``; refuses (naming the file, line and column) what cannot be one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"teacher.request: no such file: {path}", hint="a JSON search request body with \"{{query}}\"")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(body, dict):
        raise InputError(f"{path}: a search request body is a JSON object, not {type(body).__name__}")
    if PLACEHOLDER not in json.dumps(body):
        raise InputError(f"{path}: no \"{PLACEHOLDER}\" in the request, so every query would get the same hits",
                         hint=f'put "{PLACEHOLDER}" where the query text goes, e.g. "match": {{"text": "{PLACEHOLDER}"}}')
    if body.get("from", 0):
        raise InputError(f"{path}: \"from\": {body['from']} skips the best hits; the teacher needs them from the top")
    for key in ("sort", "collapse"):
        if key in body:
            raise InputError(f"{path}: \"{key}\" changes the order away from the scores the teacher's labels are",
                             hint=f"remove \"{key}\" from the teacher's request")
    return body


def fill(node: Any, text: str) -> Any:
    """``node`` with every ``{{query}}`` in its strings (keys left alone) replaced by ``text``."""
    if isinstance(node, str):
        return node.replace(PLACEHOLDER, text)
    if isinstance(node, list):
        return [fill(n, text) for n in node]
    if isinstance(node, dict):
        return {k: fill(v, text) for k, v in node.items()}
    return node


def named_resources(node: Any) -> dict[str, tuple[str, str]]:
    """What a request body names by id and the cluster keeps — ``"<kind>:<id>" -> (kind, id)``: stored scripts
    (``"script": {"id": …}``), models (``model_id``: a learning-to-rank rescorer's, a ``text_embedding`` query
    vector builder's — a trained model or an inference endpoint) and inference endpoints (``inference_id``: a
    ``text_similarity_reranker``, a ``semantic`` or ``sparse_vector`` query). Editing one of them changes what the
    request returns without changing its body. Ids holding a mustache placeholder are left out."""
    found: dict[str, tuple[str, str]] = {}

    def walk(n: Any) -> None:
        if isinstance(n, list):
            for v in n:
                walk(v)
        elif isinstance(n, dict):
            for k, v in n.items():
                if k == "script" and isinstance(v, dict) and isinstance(v.get("id"), str):
                    found.setdefault(f"script:{v['id']}", ("script", v["id"]))
                elif k == "inference_id" and isinstance(v, str):
                    found.setdefault(f"inference:{v}", ("inference", v))
                elif k == "model_id" and isinstance(v, str):
                    found.setdefault(f"model:{v}", ("model", v))
                walk(v)

    walk(node)
    return {name: r for name, r in found.items() if "{{" not in r[1]}


def describe(client, kind: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
    """What the cluster says a named resource is — ``(description, None)``, or ``(None, why not)``: a stored script
    or search template (its language, source and options), a trained model (its whole config, which a re-upload
    under the same id changes) or an inference endpoint (service, settings). ``client``: an engine client or a
    backend (:meth:`~esdistill.backends.SearchBackend.describe`)."""
    return backend_for(client).describe(kind, rid)


class RequestSearch:
    """Runs the user's request (a body, or a stored template id) for queries, in ``_msearch`` batches.

    Its cache identity (:meth:`fingerprint`) is its body or template id plus what the cluster says about what it
    names by id (:meth:`described`): a stored template's source, a learning-to-rank model's or an inference
    endpoint's configuration, a stored script's source. ``described`` given (a bundle carries what the cluster
    side read) is used as it is, without asking the cluster."""

    def __init__(self, client, index: str, body: dict[str, Any] | None = None,
                 template_id: str | None = None, source: str = "teacher.request",
                 described: dict[str, str] | None = None):
        if (body is None) == (template_id is None):
            raise ValueError("a request body or a template id, not both")
        self.client, self.index, self.body, self.template_id, self.source = client, index, body, template_id, source
        self.backend = backend_for(client)
        self._described = described

    def fingerprint(self) -> str:
        """What identifies this search in cache keys: its body, or its template id — with, when it names anything
        by id that the cluster describes, those descriptions (a body that names nothing keeps the key it had)."""
        base = {"body": self.body, "template": self.template_id}
        described = self.described()
        return fingerprint({**base, "described": described} if described else base)

    def described(self) -> dict[str, str]:
        """``"<kind>:<id>" -> fingerprint`` of each resource the request names (:func:`named_resources`; a
        template: the template itself, then what its source names) as the cluster describes it, asked once. A
        stored template the cluster does not hold is an error (nothing could run); anything else it cannot
        describe is left out of the key with a warning that its changes will not be seen."""
        if self._described is not None:
            return self._described
        import warnings

        from .errors import EsdistillWarning

        out: dict[str, str] = {}
        named = named_resources(self.body) if self.body is not None else {}
        if self.template_id:
            script, why = self.backend.describe("script", self.template_id)
            if script is None and why == NOT_STORED:
                raise ClusterError(f"{self.source}: search template {self.template_id!r} is {why} "
                                   f"(GET _scripts/{self.template_id})", hint=self._hint())
            if script is None:
                warnings.warn(f"{self.source}: {why}: the template's source cannot be part of the cache keys, so "
                              "an edit of it will not be seen — after editing it, use another template id",
                              EsdistillWarning, stacklevel=2)
            else:
                out[f"template:{self.template_id}"] = fingerprint(script)
                source = script.get("source")
                if isinstance(source, str):
                    try:
                        source = json.loads(source)
                    except ValueError:
                        source = None  # mustache text that is not JSON until rendered
                named = named_resources(source)
        for name, (kind, rid) in sorted(named.items()):
            what, why = self.backend.describe(kind, rid)
            if what is None:
                warnings.warn(f"{self.source} names {kind} {rid!r}, which cannot be part of the cache keys ({why}): "
                              f"a change to it will not reach candidates, labels, student or the pipeline's "
                              f"evaluation — after changing it, clear the work dir's caches or give it a new id",
                              EsdistillWarning, stacklevel=2)
            else:
                out[name] = fingerprint(what)
        self._described = out
        return out

    def searches(self, text: str, k: int) -> list[dict[str, Any]]:
        if self.template_id:
            return [{"index": self.index}, {"id": self.template_id, "params": {"query": text, "size": k}}]
        body = fill(copy.deepcopy(self.body), text)
        body.update(size=k, _source=False)
        return [{"index": self.index}, body]

    def run(self, queries: dict[str, str], k: int, batch_size: int = 32, progress=None,
            label: str = "candidates (your search request)") -> dict[str, list[tuple[str, float]]]:
        """qid -> [(docid, _score), ...] in the request's order."""
        return self._each(queries, lambda text, _q: self.searches(text, k), batch_size, progress, label)

    def restricted(self, text: str, ids: list[str]) -> list[dict[str, Any]]:
        """The request for ``text`` with only ``ids`` let through (a ``post_filter``, which applies before
        ``rescore``, so a rescorer reaches each of them), all of them returned."""
        assert self.body is not None, "a stored template cannot be restricted (refused by the config)"
        body = fill(copy.deepcopy(self.body), text)
        only = {"ids": {"values": list(ids)}}
        body["post_filter"] = {"bool": {"filter": [body["post_filter"], only]}} if "post_filter" in body else only
        body.update(size=len(ids), _source=False)
        return [{"index": self.index}, body]

    def score(self, queries: dict[str, str], ids: dict[str, list[str]], batch_size: int = 32, progress=None,
              label: str = "teacher (your search request)") -> dict[str, dict[str, float]]:
        """qid -> {docid: the request's ``_score``} for each query's documents ``ids[qid]``; a document the
        request does not match gets the query's lowest returned score (0 when it returns none)."""
        hits = self._each(queries, lambda text, q: self.restricted(text, ids[q]), batch_size, progress, label)
        out = {}
        for q, found in hits.items():
            got = dict(found)
            low = min(got.values(), default=0.0)
            out[q] = {d: got.get(d, low) for d in ids[q]}
        return out

    def score_docs(self, text: str, ids: list[str]):
        """The request's scores of ``ids`` for one query, in that order (the pipeline's ensemble member)."""
        import numpy as np

        scores = self.score({"q": text}, {"q": ids})["q"]
        return np.array([scores[d] for d in ids], dtype=float)

    def _each(self, queries: dict[str, str], lines, batch_size: int, progress, label: str):
        qids = list(queries)
        out: dict[str, list[tuple[str, float]]] = {}
        task = progress.add_task(label, total=len(qids)) if progress else None
        for start in range(0, len(qids), batch_size):
            batch = qids[start:start + batch_size]
            searches = [line for q in batch for line in lines(queries[q], q)]
            pairs = [(header["index"], body) for header, body in zip(searches[::2], searches[1::2], strict=True)]
            try:
                if self.template_id:
                    resp = self.backend.msearch_template(pairs)
                else:
                    resp = self.backend.msearch(pairs)
            except EngineError as e:
                raise ClusterError(f"{self.source}: the cluster refused the request: {_reason(e.body) or e}",
                                   hint=self._hint()) from None
            for qid, r in zip(batch, resp["responses"], strict=True):
                if "error" in r:
                    raise ClusterError(f"{self.source}: the cluster refused the request for query {qid!r} "
                                       f"({queries[qid][:60]!r}): {_reason(r)}", hint=self._hint())
                check_shards(r, f"{self.source} for query {qid!r} on {self.index!r}")
                hits = r["hits"]["hits"]
                if any(h.get("_score") is None for h in hits):
                    raise ClusterError(f"{self.source}: hits without a _score (sorted by a field?): the teacher's "
                                       "labels are the scores", hint="remove the sort, or add \"track_scores\": true")
                out[qid] = [(h["_id"], float(h["_score"])) for h in hits]
            if progress:
                progress.advance(task, len(batch))
        return out

    def _hint(self) -> str:
        if self.template_id:
            return ("stored search templates need the cluster's mustache module (the local test build has none); "
                    "otherwise check that the template exists and takes params.query")
        return f"run it once against {self.index!r} (curl, Kibana's console) with a real query in place of {PLACEHOLDER}"


#: the cluster's own explanation from an error body (root cause first)
_reason = reason


def to_frame(results: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    """Candidates as every stage reads them, the request's ``_score`` in ``request`` (``bm25`` is empty: the
    hits are not BM25's)."""
    rows = [(q, d, r, float("nan"), s) for q, hits in results.items() for r, (d, s) in enumerate(hits, 1)]
    return pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "request"])


def labels(pairs: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """The teacher's scores of ``pairs``: the request's ``_score``. A judged positive the request did not return
    gets its query's lowest returned score (training's ``judged_above_teacher`` lifts it above the negatives)."""
    lowest = pairs.groupby("qid")["request"].transform("min")
    score = pairs["request"].fillna(lowest).fillna(0.0).astype("float32")
    return pairs.assign(teacher=score, scorer=scorer)
