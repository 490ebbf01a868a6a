"""In-cluster embedding, the Elasticsearch-native scale path (``deploy.embed_in = "cluster"``): the cluster's ML
nodes embed the corpus with the uploaded student (``esdistill export --upload --start``) while ``_reindex``
copies the source index into the versioned dense index through an ingest pipeline, in parallel slices.

The pipeline writes the dense index's ``title`` and ``text`` from the configured text fields (the first is the
title, the rest joined, as :func:`esdistill.indexing.doc_from_source` reads them), embeds ``title text`` — what
the Python deploy embeds — into ``embedding``, and drops its working fields. The reindex runs as a task; when it
ends, its failures must be empty and the dense index must hold exactly the source's document count, or the
alias does not move. Needs ML nodes (a trial or paid license), ``_reindex`` and the ingest processors: the local
test build has none of them, and is refused before anything is created.
"""

from __future__ import annotations

import time
from typing import Any

from elasticsearch import Elasticsearch

from .errors import ClusterError

INPUT_FIELD = "_esdistill_input"


def embed_pipeline(model_id: str, text_fields: list[str]) -> dict[str, Any]:
    """``mappings/embed_pipeline.json`` for ``model_id``, with ``title``/``text`` first set from ``text_fields``
    (when they are other fields) and those source fields removed at the end."""
    from .indexing import load_mapping

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


def reindex_request(source: str, dest: str, pipeline: str, text_fields: list[str],
                    slices: int | str = "auto", batch: int = 200) -> dict[str, Any]:
    """Keyword arguments of ``client.reindex``: the source's text fields only, through ``pipeline``, in
    ``slices`` parallel slices, as a task (polled by :func:`embed_in_cluster`)."""
    return {"source": {"index": source, "_source": list(text_fields), "size": batch},
            "dest": {"index": dest, "pipeline": pipeline, "op_type": "index"},
            "conflicts": "abort", "slices": slices, "wait_for_completion": False, "refresh": True}


def require_deployed(client: Elasticsearch, model_id: str) -> dict[str, Any]:
    """The model's deployment stats, or a clear refusal: no ML (the test build), no such model, not started."""
    from elasticsearch import exceptions as es_exc

    from .ml_ops import require_ml

    require_ml(client)
    try:
        stats = client.ml.get_trained_models_stats(model_id=model_id).body
    except es_exc.NotFoundError:
        raise ClusterError(f"no trained model {model_id!r} in the cluster to embed with",
                           hint="esdistill export --upload --start (or set deploy.model_id)") from None
    records = stats.get("trained_model_stats") or [{}]
    state = (records[0].get("deployment_stats") or {}).get("state")
    if state != "started":
        raise ClusterError(f"trained model {model_id!r} is not deployed (state: {state or 'none'})",
                           hint=f"POST _ml/trained_models/{model_id}/deployment/_start, or esdistill export --start")
    return records[0]


def embed_in_cluster(client: Elasticsearch, model_id: str, source: str, dest: str, text_fields: list[str],
                     expected: int, slices: int | str = "auto", progress=None, poll: float = 2.0,
                     timeout: float = 24 * 3600) -> dict[str, Any]:
    """Fill ``dest`` (already created with the dense mapping) from ``source`` through the model's pipeline;
    returns the task's counts. Raises unless every document arrived: failures, or a count that is not
    ``expected``."""
    require_deployed(client, model_id)
    pipeline = f"{model_id}-embed"
    client.ingest.put_pipeline(id=pipeline, **embed_pipeline(model_id, text_fields))
    task = client.reindex(**reindex_request(source, dest, pipeline, text_fields, slices)).body["task"]
    bar = progress.add_task(f"deploy: embed in the cluster ({model_id})", total=expected) if progress else None
    deadline = time.monotonic() + timeout
    while True:
        status = client.tasks.get(task_id=task).body
        done = (status.get("task", {}).get("status") or {})
        if progress:
            progress.update(bar, completed=done.get("created", 0) + done.get("updated", 0))
        if status.get("completed"):
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"the in-cluster embedding task {task} did not finish in {timeout:.0f}s",
                               hint=f"GET _tasks/{task}; cancel it with POST _tasks/{task}/_cancel")
        time.sleep(poll)
    if status.get("error"):
        raise ClusterError(f"in-cluster embedding failed: {status['error'].get('reason', status['error'])}")
    response = status.get("response", {})
    failures = response.get("failures") or []
    if failures:
        sample = "; ".join(str(f.get("cause", f))[:200] for f in failures[:3])
        raise ClusterError(f"in-cluster embedding: {len(failures)} documents failed ({sample})",
                           hint="the alias was not moved; fix the cause and deploy again")
    client.indices.refresh(index=dest)
    count = client.count(index=dest).body["count"]
    if count != expected:
        raise ClusterError(f"in-cluster embedding: {dest!r} holds {count} documents, the source {expected}",
                           hint="the alias was not moved; deploy again")
    return {"task": task, "created": response.get("created", 0), "updated": response.get("updated", 0),
            "docs": count, "took_ms": response.get("took")}
