"""Evaluation results as documents in the cluster, for the Kibana relevance dashboard in ``kibana/``.

:func:`result_docs` turns the output of :func:`esdistill.evaluate.summarize` into one document per (system, query)
(``doc_type: query``: metrics, delta and win/tie/loss against BM25, latency) and one per system
(``doc_type: system``: mean metrics, latency percentiles, share of the pipeline's gain). :func:`write_results`
indexes them under deterministic ids, so evaluating again overwrites instead of duplicating.
:func:`import_saved_objects` loads ``kibana/esdistill.ndjson`` (data view + dashboard) into Kibana.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .backends import EngineError, backend_for
from .errors import ClusterError, InputError
from .indexing import bulk_index
from .redact import redact
from .resources import resource

RESULTS_INDEX = "esdistill-results"
RESULTS_MAPPING = "results_index.json"
SAVED_OBJECTS = resource("kibana", "esdistill.ndjson")
META_KEYS = ("run_id", "evaluate_key", "dataset", "profile", "model_id", "teacher_id")
METRIC_FIELDS = {"ndcg@10": "ndcg_at_10", "recall@100": "recall_at_100", "mrr@10": "mrr_at_10"}
TIE_TOLERANCE = 1e-9


def _num(value: Any) -> float | None:
    """A float for Elasticsearch: None for missing, NaN and infinite values (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def _timestamp(value: Any) -> str:
    if value is None:
        return datetime.now(timezone.utc).isoformat()
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return str(value)


def outcome(delta: float | None) -> str | None:
    """``win``, ``tie`` or ``loss`` of a per-query NDCG@10 difference against BM25 (None without BM25)."""
    if delta is None:
        return None
    return "tie" if abs(delta) <= TIE_TOLERANCE else ("win" if delta > 0 else "loss")


def result_docs(summary: dict, results: dict, queries: dict[str, str], meta: dict) -> list[dict]:
    """Documents for the results index: per (system, query) and per system, without ``_id``.

    ``summary`` is :func:`esdistill.evaluate.summarize` of ``results``; each ``results[name]`` holds ``wall_ms``
    and ``took_ms`` lists aligned to ``sorted(queries)`` (as :func:`esdistill.evaluate.run_system` makes them).
    ``meta`` gives run_id, evaluate_key, dataset, profile, model_id, teacher_id and timestamp (a datetime or
    ISO string; now when missing); other keys are ignored. NaN values are left out.
    """
    order = sorted(queries)
    common = {"@timestamp": _timestamp(meta.get("timestamp")),
              **{k: (None if meta.get(k) is None else str(meta[k])) for k in META_KEYS}}
    systems = summary["systems"]
    base = systems.get("bm25")
    base_ndcg = dict(zip(base["per_query"]["qids"], base["per_query"]["ndcg@10"])) if base else {}
    base_mean = _num(base["ndcg@10"]) if base else None
    docs: list[dict] = []
    for name, s in systems.items():
        r = results.get(name, {})
        wall, took = r.get("wall_ms", []), r.get("took_ms", [])
        if len(wall) != len(order) or len(took) != len(order):
            raise InputError(f"results of system {name!r} hold {len(wall)} latencies for {len(order)} queries",
                             hint="pass the same queries that evaluate.run_system answered")
        wall_by, took_by = dict(zip(order, wall)), dict(zip(order, took))
        pq = s["per_query"]
        for i, qid in enumerate(pq["qids"]):
            ndcg = _num(pq["ndcg@10"][i])
            delta = ndcg - base_ndcg[qid] if ndcg is not None and qid in base_ndcg else None
            docs.append({
                **common, "system": name, "doc_type": "query", "query_id": qid, "query_text": queries.get(qid),
                **{f: _num(pq[m][i]) for m, f in METRIC_FIELDS.items()},
                "ndcg_at_10_delta_vs_bm25": _num(delta), "outcome_vs_bm25": outcome(delta),
                "latency_ms": _num(wall_by.get(qid)), "es_took_ms": _num(took_by.get(qid)),
            })
        ndcg = _num(s["ndcg@10"])
        docs.append({
            **common, "system": name, "doc_type": "system",
            **{f: _num(s[m]) for m, f in METRIC_FIELDS.items()},
            "ndcg_at_10_delta_vs_bm25": (ndcg - base_mean) if ndcg is not None and base_mean is not None else None,
            "latency_ms": _num(s["latency_ms"].get("mean")), "es_took_ms": _mean(took),
            "latency_p50_ms": _num(s["latency_ms"]["p50"]), "latency_p95_ms": _num(s["latency_ms"]["p95"]),
            "share_of_gain": _num(s.get("share_of_gain")), "queries": len(pq["qids"]),
        })
    return [{k: v for k, v in d.items() if v is not None} for d in docs]


def doc_id(doc: dict) -> str:
    """The deterministic ``_id``: ``{evaluate_key}:{system}:{query_id or '_all'}``."""
    return f"{doc.get('evaluate_key')}:{doc['system']}:{doc.get('query_id') or '_all'}"


def ensure_results_index(client, index: str = RESULTS_INDEX) -> bool:
    """Create ``index`` from ``mappings/results_index.json`` (the backend's results mapping) unless it exists
    (then add the fields a newer esdistill writes: mappings only grow); True when created."""
    backend = backend_for(client)
    if backend.index_exists(index):
        try:
            backend.add_fields(index, backend.results_mapping()["mappings"]["properties"])
        except EngineError as e:
            raise ClusterError(f"index {index!r} does not have esdistill's results mapping: {e.message}",
                               hint=f"delete it to recreate it from mappings/{RESULTS_MAPPING}") from None
        return False
    return backend.create_index(index, backend.results_mapping(), exist_ok=True)


def write_results(client, docs: list[dict], index: str = RESULTS_INDEX) -> int:
    """Index ``docs`` under :func:`doc_id` (a rerun overwrites), creating ``index`` if missing; refresh.

    Returns the number of documents written; raises :class:`ClusterError` on any bulk failure. Credentials in a
    URL anywhere in a document are redacted (:func:`esdistill.redact.redact`).
    """
    backend = backend_for(client)
    ensure_results_index(backend, index)
    docs = [redact(d) for d in docs]
    ok, errors = bulk_index(backend, index, ({"_id": doc_id(d), "_source": d} for d in docs))
    backend.refresh(index)
    if errors:
        sample = "; ".join(json.dumps(e)[:300] for e in errors[:3])
        raise ClusterError(f"{len(errors)} of {len(docs)} result documents were refused by index {index!r}: {sample}",
                           hint=f"the index must have the mapping of mappings/{RESULTS_MAPPING}; delete it to recreate")
    return ok


def wait_for_kibana(kibana_url: str, wait: float, headers: dict, auth, clean, interval: float = 2.0) -> None:
    """Poll ``GET /api/status`` until Kibana answers with anything but 503 ("Kibana server is not ready yet") or a
    refused connection, for at most ``wait`` seconds; raises :class:`ClusterError` when it never does."""
    import requests

    url = f"{kibana_url.rstrip('/')}/api/status"
    deadline = time.monotonic() + wait
    last = "no answer"
    while True:
        try:
            resp = requests.get(url, headers=headers, auth=auth, timeout=10)
            if resp.status_code != 503:
                return
            last = "HTTP 503 (Kibana server is not ready yet)"
        except requests.RequestException as e:
            last = f"{type(e).__name__}: {clean(str(e))[:200]}"
        if time.monotonic() >= deadline:
            raise ClusterError(f"Kibana at {redact(kibana_url)} was not ready within {wait:.0f} s ({last})",
                               hint="check that Kibana is up (`docker compose ps`: healthy), or wait longer (--wait)")
        time.sleep(interval)


def import_saved_objects(kibana_url: str, ndjson_path: Path = SAVED_OBJECTS, username: str | None = None,
                         password: str | None = None, api_key: str | None = None, overwrite: bool = True,
                         timeout: float = 60.0, wait: float = 0.0) -> dict:
    """POST ``ndjson_path`` to Kibana's saved objects ``_import`` API; returns its JSON answer.

    Authenticates with ``api_key`` (``Authorization: ApiKey``) or ``username``/``password`` (basic), else none.
    With ``wait`` > 0, first waits (at most that many seconds) for Kibana to be ready: right after
    ``docker compose up`` it refuses connections, then answers 503 for a while. Raises :class:`ClusterError`
    naming the URL (never a secret) when Kibana cannot be reached, answers with an HTTP error, or reports
    ``success: false``.
    """
    import requests

    url = f"{kibana_url.rstrip('/')}/api/saved_objects/_import"
    shown = redact(url)
    secrets = [s for s in (password, api_key) if s]

    def clean(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "***")
        return text

    headers = {"kbn-xsrf": "true"}
    if api_key:
        headers["Authorization"] = f"ApiKey {api_key}"
    auth = (username, password or "") if username and not api_key else None
    if wait > 0:
        wait_for_kibana(kibana_url, wait, headers, auth, clean)
    path = Path(ndjson_path)
    try:
        with path.open("rb") as fh:
            resp = requests.post(url, params={"overwrite": "true"} if overwrite else None, headers=headers, auth=auth,
                                 files={"file": (path.name, fh, "application/ndjson")}, timeout=timeout)
    except FileNotFoundError:
        raise InputError(f"saved objects file missing: {path}") from None
    except requests.RequestException as e:
        raise ClusterError(f"cannot reach Kibana at {shown}: {type(e).__name__}: {clean(str(e))[:300]}",
                           hint="check the Kibana URL and that Kibana is up") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        detail = body.get("message", "") if isinstance(body, dict) else resp.text[:300]
        hint = "check the Kibana credentials" if resp.status_code in (401, 403) else None
        raise ClusterError(f"Kibana at {shown} answered HTTP {resp.status_code}: {clean(str(detail))}", hint=hint)
    if not body.get("success", False):
        errs = "; ".join(f"{e.get('type')}/{e.get('id')}: {(e.get('error') or {}).get('type')}"
                         for e in body.get("errors", [])[:5])
        raise ClusterError(f"Kibana at {shown} refused the saved objects import ({body.get('successCount', 0)} "
                           f"imported): {clean(errs)}")
    return body
