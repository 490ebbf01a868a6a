"""``index`` stage: create the BM25 index from ``mappings/`` and bulk-index the corpus.

Also the shared index plumbing the other stages use: loading mapping files, bulk-indexing (the backend's
``streaming_bulk``, with retries and backoff on 429 here), verifying counts, and reading documents back from an
existing index. Every function takes an engine client or a :class:`~esdistill.backends.SearchBackend` and talks
to the cluster through the backend (:func:`~esdistill.backends.backend_for`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .backends import ConnectionLost, backend_for
from .backends.base import MAPPINGS_DIR, load_mapping  # noqa: F401 - their home before the backends
from .backends.elasticsearch import IDENTITY_SAMPLE  # noqa: F401
from .data import Doc
from .errors import ClusterError

#: a cluster as the functions here take it: an engine client, or its backend
Cluster = Any


def index_meta(client: Cluster, index: str) -> dict[str, Any] | None:
    """The ``_meta.esdistill`` of ``index``; ``{}`` when it exists without ours, None when it does not exist."""
    return backend_for(client).index_meta(index)


def index_identity(client: Cluster, index: str) -> dict[str, Any]:
    """What a user's index (or alias) holds right now, as cheaply as the cluster can say it
    (:meth:`~esdistill.backends.SearchBackend.index_identity`; Elasticsearch: each index's UUID, its document and
    deleted-document counts and the highest sequence number of each primary shard — or, for credentials that may
    not read its stats, what searches and a point in time tell). Any write changes it, and so does a rebuilt index
    under the same name; it is a cache key input."""
    return backend_for(client).index_identity(index)


def count(client: Cluster, index: str) -> int:
    """Refresh ``index`` and count its documents."""
    backend = backend_for(client)
    backend.refresh(index)
    return backend.count(index)


def create_index(client: Cluster, index: str, body: dict[str, Any], meta: dict[str, Any]) -> None:
    """Create ``index`` from ``body`` with ``meta`` as its ``_meta.esdistill``; a refusal is a ClusterError."""
    backend_for(client).create_index(index, body, meta)


def drop_own_index(client: Cluster, index: str) -> None:
    """Delete ``index`` only if esdistill made it (its ``_meta`` says so); refuse to touch anyone else's."""
    backend = backend_for(client)
    meta = backend.index_meta(index)
    if meta is None:
        return
    if not meta:
        raise ClusterError(
            f"index {index!r} exists and was not created by esdistill; refusing to overwrite it",
            hint="choose another name in [index] name / [deploy] name, or delete it yourself",
        )
    backend.delete_index(index)


def bulk_index(
    client: Cluster,
    index: str,
    actions: Iterable[dict[str, Any]],
    chunk_size: int = 500,
    on_progress: Callable[[int], None] | None = None,
    max_retries: int = 8,
    on_retry: Callable[[int, int, float], None] | None = None,
    initial_backoff: float = 1.0,
    max_backoff: float = 60.0,
) -> tuple[int, list[dict]]:
    """Index ``actions`` (each with ``_id`` and ``_source``); returns (ok, errors).

    Documents the cluster rejects with 429 (bulk queue full) are re-sent with exponential backoff
    (``initial_backoff`` doubling up to ``max_backoff`` seconds, ``max_retries`` rounds); ``on_retry(round, documents, wait_s)`` is told each time, so the user
    sees the back-pressure. Other per-document failures are returned; losing the cluster raises.
    """
    backend = backend_for(client)
    ok, errors = 0, []
    in_flight: dict[str, dict] = {}  # sent, not yet confirmed: about one chunk, plus what is being retried

    def remember(source: Iterable[dict[str, Any]]):
        for a in source:
            action = {"_index": index, **a}
            in_flight[str(action["_id"])] = action
            yield action

    pending: Iterable[dict[str, Any]] = remember(actions)
    for attempt in range(max_retries + 1):
        rejected: list[dict] = []
        stream = backend.stream_bulk(pending, chunk_size=chunk_size)
        try:
            for success, item in stream:
                op = next(iter(item.values()))
                action = in_flight.pop(str(op.get("_id")), None)
                if not success and op.get("status") == 429 and attempt < max_retries and action is not None:
                    rejected.append(action)
                    continue
                if success:
                    ok += 1
                else:
                    errors.append(item)
                if on_progress:
                    on_progress(1)
        except ConnectionLost as e:
            raise ClusterError(
                f"lost Elasticsearch while bulk-indexing into {index!r} after {ok} documents were confirmed ({e})",
                hint="bring the cluster back and rerun the same command: it resumes and sends only what is missing",
            ) from None
        if not rejected:
            break
        wait = min(max_backoff, initial_backoff * 2.0**attempt)
        (on_retry or _tell_retry)(attempt + 1, len(rejected), wait)
        time.sleep(wait)
        pending = remember(rejected)
    return ok, errors


def _tell_retry(attempt: int, n: int, wait: float) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]bulk:[/] {n} documents rejected by a full write queue (429); "
                               f"retry {attempt} in {wait:g} s")


def verify_count(client: Cluster, index: str, expected: int, errors: list[dict]) -> int:
    """Refresh and check that ``index`` holds ``expected`` documents; raise with the first failures if not."""
    got = count(client, index)
    if got != expected or errors:
        sample = "; ".join(json.dumps(e)[:300] for e in errors[:3])
        raise ClusterError(
            f"index {index!r} holds {got} documents, expected {expected} ({len(errors)} bulk failures: {sample})",
            hint="rerun the stage: it resumes and fills in what is missing",
        )
    return got


def existing_ids(client: Cluster, index: str) -> set[str]:
    """All document ids in ``index`` (a scan without sources)."""
    return {h["_id"] for h in backend_for(client).scan(index, False)}


def bm25_source(doc: Doc) -> dict[str, str]:
    return {"title": doc.title, "text": doc.text}


def build_bm25_index(
    client: Cluster,
    index: str,
    corpus: dict[str, Doc],
    key: str,
    chunk_size: int = 500,
    progress=None,
) -> dict[str, Any]:
    """Create ``index`` from ``mappings/bm25_index.json`` and index ``corpus`` into it; idempotent by ``key``.

    An index that already carries this ``key`` and the full count is reused as is (cache hit). One with the
    same key and fewer documents is resumed: only missing ids are sent. Otherwise it is rebuilt.
    """
    backend = backend_for(client)
    meta = backend.index_meta(index)
    resumed = False
    if meta and meta.get("key") == key:
        have = existing_ids(backend, index)
        if len(have) == len(corpus) and have == set(corpus):
            return {"index": index, "docs": len(corpus), "cached": True}
        todo = [d for i, d in corpus.items() if i not in have]
        resumed = True
    else:
        drop_own_index(backend, index)
        backend.create_index(index, backend.bm25_mapping(), {"key": key, "docs": len(corpus)})
        todo = list(corpus.values())
    task = progress.add_task(f"index {index}", total=len(todo)) if progress else None
    ok, errors = bulk_index(
        backend,
        index,
        ({"_id": d.id, "_source": bm25_source(d)} for d in todo),
        chunk_size=chunk_size,
        on_progress=(lambda n: progress.advance(task, n)) if progress else None,
    )
    verify_count(backend, index, len(corpus), errors)
    return {"index": index, "docs": len(corpus), "indexed": ok, "resumed": resumed, "cached": False}


def fetch_docs(client: Cluster, index: str, ids: Iterable[str], text_fields: list[str]) -> dict[str, Doc]:
    """Documents by id from an existing index (``mget`` in batches). Missing ids are simply absent."""
    ids = list(dict.fromkeys(ids))
    return {i: doc_from_source(i, source, text_fields)
            for i, source in backend_for(client).get_sources(index, ids, text_fields)}


def iter_index_docs(client: Cluster, index: str, text_fields: list[str]) -> Iterator[Doc]:
    """Every document of ``index`` (a scan of ``text_fields``)."""
    for hit in backend_for(client).scan(index, text_fields):
        yield doc_from_source(hit["_id"], hit.get("_source", {}), text_fields)


def doc_from_source(doc_id: str, source: dict, text_fields: list[str]) -> Doc:
    """A Doc from an index's ``_source``: the first text field is the title when there are several."""
    values = [_flatten(source, f) for f in text_fields]
    if len(values) > 1:
        return Doc(doc_id, values[0], " ".join(v for v in values[1:] if v))
    return Doc(doc_id, "", values[0] if values else "")


def _flatten(source: dict, dotted: str) -> str:
    value: Any = source
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v is not None)
    return "" if value is None else str(value)
