"""In-cluster embedding, the Elasticsearch-native scale path (``deploy.embed_in = "cluster"``): the cluster's ML
nodes embed the corpus with the uploaded student (``esdistill export --upload --start``) while ``_reindex``
copies the source index into the versioned dense index through an ingest pipeline, in parallel slices.

The pipeline writes the dense index's ``title`` and ``text`` from the configured text fields (the first is the
title, the rest joined, as :func:`esdistill.indexing.doc_from_source` reads them), embeds ``title text`` — what
the Python deploy embeds — into ``embedding``, and drops its working fields. The reindex runs as a task; when it
ends, its failures must be empty and the dense index must hold exactly the source's document count, or the
alias does not move. Needs ML nodes (a trial or paid license), ``_reindex`` and the ingest processors: the local
test build has none of them, and is refused before anything is created.

On OpenSearch (free: ml-commons and neural-search) the same path runs through the backend: the pipeline's
``text_embedding`` processor embeds with the student ``esdistill export --upload`` registered and deployed in
ml-commons (found by its name, :meth:`~esdistill.backends.OpenSearchBackend.model_ref`).
"""

from __future__ import annotations

import time
from typing import Any

from .backends import backend_for
from .backends.elasticsearch import INPUT_FIELD  # noqa: F401 - the pipeline's working field
from .errors import ClusterError


def embed_pipeline(model_id: str, text_fields: list[str], backend=None) -> dict[str, Any]:
    """The ingest pipeline that embeds with ``model_id`` as ``backend`` (a client or a backend; default:
    Elasticsearch: ``mappings/embed_pipeline.json``'s ``inference`` processor) writes it, with ``title``/``text``
    first set from ``text_fields`` (when they are other fields) and those source fields removed at the end."""
    return backend_for(backend).embed_pipeline(model_id, text_fields)


def reindex_request(source: str, dest: str, pipeline: str, text_fields: list[str],
                    slices: int | str = "auto", batch: int = 200) -> dict[str, Any]:
    """The ``_reindex`` request (:meth:`~esdistill.backends.SearchBackend.start_reindex`): the source's text
    fields only, through ``pipeline``, in ``slices`` parallel slices, as a task (polled by
    :func:`embed_in_cluster`)."""
    return {"source": {"index": source, "_source": list(text_fields), "size": batch},
            "dest": {"index": dest, "pipeline": pipeline, "op_type": "index"},
            "conflicts": "abort", "slices": slices, "wait_for_completion": False, "refresh": True}


def require_deployed(client, model_id: str) -> dict[str, Any]:
    """The model's deployment stats, or a clear refusal: no ML (the test build), no such model, not started."""
    backend = backend_for(client)
    backend.require_ml()
    record = backend.model_stats(model_id)
    if record is None:
        raise ClusterError(f"no trained model {model_id!r} in the cluster to embed with",
                           hint="esdistill export --upload --start (or set deploy.model_id)")
    state = (record.get("deployment_stats") or {}).get("state")
    if state != "started":
        raise ClusterError(f"trained model {model_id!r} is not deployed (state: {state or 'none'})",
                           hint="esdistill export --upload --start --replace" + (
                               f", or POST _ml/trained_models/{model_id}/deployment/_start"
                               if backend.name == "elasticsearch" else
                               f", or POST _plugins/_ml/models/{record.get('cluster_model_id', model_id)}/_deploy"))
    return record


def embed_in_cluster(client, model_id: str, source: str, dest: str, text_fields: list[str],
                     expected: int, slices: int | str = "auto", progress=None, poll: float = 2.0,
                     timeout: float = 24 * 3600) -> dict[str, Any]:
    """Fill ``dest`` (already created with the dense mapping) from ``source`` through the model's pipeline;
    returns the task's counts. Raises unless every document arrived: failures, or a count that is not
    ``expected``."""
    backend = backend_for(client)
    require_deployed(backend, model_id)
    pipeline = f"{model_id}-embed"
    backend.put_ingest_pipeline(pipeline, backend.embed_pipeline(model_id, text_fields))
    task = backend.start_reindex(reindex_request(source, dest, pipeline, text_fields, slices))
    bar = progress.add_task(f"deploy: embed in the cluster ({model_id})", total=expected) if progress else None
    deadline = time.monotonic() + timeout
    while True:
        status = backend.task(task)
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
    backend.refresh(dest)
    count = backend.count(dest)
    if count != expected:
        raise ClusterError(f"in-cluster embedding: {dest!r} holds {count} documents, the source {expected}",
                           hint="the alias was not moved; deploy again")
    return {"task": task, "created": response.get("created", 0), "updated": response.get("updated", 0),
            "docs": count, "took_ms": response.get("took")}
