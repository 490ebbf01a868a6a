"""``deploy`` stage: a new index with a vector field, the corpus embedded by the student (client-side).

The index body is the backend's dense mapping (Elasticsearch: ``mappings/dense_index.json``, a ``dense_vector``);
dims are read from the model, similarity is ``dot_product`` for a model that outputs unit vectors (esdistill's
students do) and ``cosine`` otherwise, and ``index_options`` are explicit. Each deploy writes a versioned index
``<alias>-<key>`` and points the alias at it once the count is verified, so searches never see a half-built index.
Re-running resumes and syncs: only documents not yet in the index, or whose text changed, are embedded, and
documents gone from the source are deleted (each dense document carries the hash of the text it was embedded from).
"""

from __future__ import annotations

import hashlib

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from .backends import VECTOR_FIELD, backend_for
from .config import DeployConfig
from .data import Doc
from .errors import ClusterError, ModelError
from .indexing import (
    bulk_index,
    create_index,
    drop_own_index,
    index_meta,
    verify_count,
)

#: a cluster as the functions here take it: an engine client, or its backend
Cluster = Any
#: the hash of the text a dense document was embedded from (:func:`doc_hash`), so a deploy can tell edits apart
HASH_FIELD = "esdistill_hash"


def dense_body(dims: int, normalized: bool, cfg: DeployConfig, backend: Cluster = None) -> dict[str, Any]:
    """The dense index: ``title`` and ``text`` (BM25-searchable, so it can serve hybrid alone) and the vector —
    as ``backend`` (a client or a backend; default: Elasticsearch) maps it (its ``dense_mapping``)."""
    return backend_for(backend).dense_mapping(dims, "dot_product" if normalized else "cosine", cfg.index_type,
                                              cfg.m, cfg.ef_construction)


def index_dims(client: Cluster, index: str, field: str = VECTOR_FIELD) -> int | None:
    """The dims of ``field`` in ``index`` (an alias works too); None if there is no such field."""
    return backend_for(client).vector_dims(index, field)


def check_dims(client: Cluster, index: str, model_dims: int, field: str = VECTOR_FIELD) -> None:
    """Refuse to pair a model with an index whose vectors have another size, naming both numbers."""
    have = index_dims(client, index, field)
    if have is not None and have != model_dims:
        raise ModelError(
            f"index {index!r} field {field!r} holds {have}-dim vectors but the model makes {model_dims}-dim vectors",
            hint="deploy the model into a new index (esdistill deploy) or use the model that built this index",
        )


def _batches(it: Iterable[Doc], n: int) -> Iterator[list[Doc]]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def point_alias(client: Cluster, alias: str, index: str, by: str = "deploy") -> list[str]:
    """Move ``alias`` to ``index`` in one atomic request; returns the indices it left.

    The move is then written into the ``_meta.esdistill.served`` history of the indices esdistill made: the index
    the alias moved onto gets ``{"from": <time>, "by": <deploy|rollback>}``, each index it left has its open
    entry closed with ``until`` (an index served before esdistill kept this history gets ``{"from": null,
    "until": <time>}``: it was served). Only indices with such a history (or the live one) are versions of the
    alias (:func:`versions`): an index built for evaluation alone never is."""
    client = backend_for(client)
    old = client.alias_targets(alias)
    client.move_alias(alias, index, [i for i in old if i != index])
    now = _now()
    left = [i for i in old if i != index]
    for name in left:
        meta = index_meta(client, name)
        if meta:
            history = list(meta.get(SERVED, []))
            if history and "until" not in history[-1]:
                history[-1] = {**history[-1], "until": now}
            else:
                history.append({"from": None, "until": now})
            update_meta(client, name, {SERVED: history})
    if index not in old:
        meta = index_meta(client, index)
        if meta:
            update_meta(client, index, {SERVED: [*meta.get(SERVED, []), {"from": now, "by": by}]})
    return left


#: the ``_meta.esdistill`` field holding when an alias served the index (:func:`point_alias`)
SERVED = "served"


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def update_meta(client: Cluster, index: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge ``fields`` into the ``_meta.esdistill`` of ``index`` (the mapping's ``_meta`` is replaced whole, so
    it is read first); returns the new record."""
    backend = backend_for(client)
    meta = {**(backend.index_meta(index) or {}), **fields}
    backend.put_meta(index, meta)
    return meta


def was_served(meta: dict[str, Any] | None) -> bool:
    """Whether an alias ever moved onto the index with this ``_meta.esdistill`` (its history says so)."""
    return bool(meta and meta.get(SERVED))


def in_use(client: Cluster, index: str, meta: dict[str, Any] | None = None) -> bool:
    """Whether ``index`` is or was served: an alias points at it now, or its history says one did. Such an index
    is only written by ``esdistill deploy``: evaluation reads it as it is."""
    if was_served(meta if meta is not None else index_meta(client, index)):
        return True
    return backend_for(client).has_alias(index)


def versioned_index(alias: str, key: str) -> str:
    """The index one deploy of ``alias`` writes: ``<alias>-<first 10 characters of the deploy key>``."""
    return f"{alias}-{key[:10]}"


def is_version_of(index: str, alias: str) -> bool:
    """Whether ``index`` is a version of ``alias`` — and not of a sibling alias that extends its name
    (``<alias>-judgments-<key>`` is not a version of ``<alias>``): keys never contain a dash."""
    return index.startswith(f"{alias}-") and "-" not in index[len(alias) + 1:]


def versions(client: Cluster, alias: str) -> list[dict[str, Any]]:
    """esdistill's versions behind ``alias``, in the order the alias first served them (oldest first): name,
    creation time, when it was first served and its whole ``served`` history, doc count, whether live. Only
    indices the alias serves or served are versions: one that ``evaluate`` built for an experiment (the alias
    never moved onto it) is not, so it is neither rolled back to nor counted by :func:`prune`."""
    client = backend_for(client)
    live = set(client.alias_targets(alias))
    dates = client.creation_dates(f"{alias}-*")
    if not dates:
        return []
    out = []
    for name, created in dates.items():
        if not is_version_of(name, alias):
            continue
        meta = client.index_meta(name)
        # only indices esdistill made, and only those an alias served
        if meta and (was_served(meta) or name in live):
            history = meta.get(SERVED, [])
            first = next((h["from"] for h in history if h.get("from")), None)
            out.append({"index": name, "created": created, "served": first, "history": history,
                        "live": name in live, "key": meta.get("key"), "model": meta.get("model")})

    def order(v):  # first served (ISO times sort as text); served before the history was kept: its creation
        from datetime import datetime, timezone

        ms = (datetime.fromisoformat(v["served"]).timestamp() * 1000 if v["served"] else v["created"])
        return (ms, v["created"], v["index"])

    return sorted(out, key=order)


def rollback(client: Cluster, alias: str) -> tuple[str, str]:
    """Point ``alias`` back at the version served before the live one (:func:`versions`: only indices the alias
    served, never one built for evaluation alone); returns (from, to)."""
    vs = versions(client, alias)
    live = [i for i, v in enumerate(vs) if v["live"]]
    if not live:
        raise ClusterError(f"alias {alias!r} points at no esdistill index; nothing to roll back")
    if live[-1] == 0:
        raise ClusterError(f"{vs[0]['index']} is the oldest version kept behind {alias!r}; nothing to roll back to")
    cur, prev = vs[live[-1]]["index"], vs[live[-1] - 1]["index"]
    point_alias(client, alias, prev, by="rollback")
    return cur, prev


def prune(client: Cluster, alias: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions (:func:`versions`: indices the alias served); the live one is
    never deleted, nor is an index built for evaluation alone."""
    backend = backend_for(client)
    vs = versions(backend, alias)
    doomed = [v["index"] for v in vs[: max(0, len(vs) - keep)] if not v["live"]]
    for name in doomed:
        backend.delete_index(name)
    return doomed


def doc_hash(doc: Doc) -> str:
    """What a dense document was embedded from, hashed: a document whose title or text changes in the source
    gets another hash, and is embedded again by the next deploy."""
    return hashlib.sha1(f"{doc.title}\x00{doc.text}".encode()).hexdigest()[:16]


def dense_hashes(client: Cluster, index: str) -> dict[str, str]:
    """id -> :func:`doc_hash` of every document in a dense index (a scan of one small field)."""
    return {h["_id"]: h.get("_source", {}).get(HASH_FIELD, "")
            for h in backend_for(client).scan(index, [HASH_FIELD])}


def replica_count(client: Cluster, setting: int | str) -> int:
    """``number_of_replicas`` for a served index: the setting, or with ``auto`` one replica where a second data
    node can hold it, none on a single node (its replica could never be assigned: the index would stay yellow)."""
    if setting != "auto":
        return int(setting)
    nodes = backend_for(client).data_nodes()
    return 1 if nodes is not None and nodes > 1 else 0


def deploy_student(
    client: Cluster,
    model,
    docs: Iterable[Doc],
    total: int,
    alias: str,
    key: str,
    cfg: DeployConfig,
    meta: dict[str, Any],
    progress=None,
    move_alias: bool = True,
) -> dict[str, Any]:
    """Embed ``docs`` into ``<alias>-<key>`` and (with ``move_alias``) move ``alias`` onto it once all are in.

    ``model`` is a bi-encoder, or an embedder of :mod:`esdistill.embed` (vectors computed elsewhere). An index
    already made for ``key`` is brought in line with ``docs``: documents that are new or whose title or text
    changed are embedded, documents whose ids are gone from ``docs`` are deleted, the rest are kept. Its count
    must then equal ``total`` and the number of documents ``docs`` yielded, or the alias does not move.

    Without ``move_alias`` (an index built for evaluation) an index of ``key`` that is or was served
    (:func:`in_use`) is only read: nothing is embedded, deleted or set on it (``read_only`` in the result) —
    only ``esdistill deploy`` writes to what an alias serves. With ``move_alias`` the record ``meta`` is merged
    into its ``_meta``."""
    from .encoding import ModelEmbedder

    client = backend_for(client)
    index = versioned_index(alias, key)
    existing = client.index_meta(index)
    if (existing and existing.get("key") == key and existing.get("weights") and meta.get("weights")
            and existing["weights"] != meta["weights"]):
        raise ClusterError(
            f"{index} holds the vectors of another model trained from the same inputs (deploy key {key}; its weights "
            f"{existing['weights']}, this model's {meta['weights']}: a training within a time budget takes as many "
            f"steps as its machine allows, so two runs of one config can differ). Searching it with this model would "
            "encode queries with one model against the other's vectors",
            hint=f"serve the model that embedded it (its folder: {existing.get('model')}), or delete {index} (move "
                 f"{alias!r} off it first if it serves it) and deploy again")
    if existing and existing.get("key") == key and not move_alias and in_use(client, index, existing):
        client.refresh(index)
        n = client.count(index)
        return {"index": index, "alias": alias, "docs": n, "source_docs": total, "embedded_now": 0,
                "deleted_now": 0, "from_vectors": 0, "dims": index_dims(client, index), "pruned": [],
                "truncated_docs": 0, "read_only": True, "alias_left": [], "alias_moved": False}
    embedder = model if hasattr(model, "embed") and hasattr(model, "dims") else ModelEmbedder(
        model, cfg.encode_batch_size)
    dims, normalized = embedder.dims, embedder.normalized
    replicas = replica_count(client, cfg.replicas)
    if existing and existing.get("key") == key:
        check_dims(client, index, dims)
        have = dense_hashes(client, index)
        client.set_replicas(index, replicas)
        if move_alias:
            update_meta(client, index, {k: v for k, v in meta.items() if k not in ("key", "dims")})
    else:
        drop_own_index(client, index)
        body = dense_body(dims, normalized, cfg, client)
        body["settings"]["number_of_replicas"] = replicas
        create_index(client, index, body, {"key": key, "dims": dims, **meta})
        have = {}
    task = progress.add_task(f"deploy: embed + index {index}", total=total) if progress else None
    seen: set[str] = set()
    sent, truncated = 0, 0

    def changed() -> Iterator[tuple[Doc, str]]:
        for d in docs:
            seen.add(d.id)
            h = doc_hash(d)
            if have.get(d.id) == h:
                if progress:
                    progress.advance(task, 1)
                continue
            yield d, h

    def actions():
        nonlocal sent, truncated
        for batch in _batches(changed(), cfg.batch_size):
            vecs, cut = embedder.embed(batch)
            truncated += sum(cut)
            for (d, h), v in zip(batch, vecs, strict=True):
                yield {"_id": d.id, "_source": {"title": d.title, "text": d.text, HASH_FIELD: h,
                                                VECTOR_FIELD: v.tolist()}}
            sent += len(batch)

    ok, errors = bulk_index(client, index, actions(), chunk_size=cfg.batch_size,
                            on_progress=(lambda n: progress.advance(task, n)) if progress else None)
    gone = sorted(set(have) - seen)
    if gone:
        _, del_errors = bulk_index(client, index, ({"_op_type": "delete", "_id": i} for i in gone),
                                   chunk_size=cfg.batch_size)
        errors += del_errors
    # raises before the alias moves: a failed deploy never serves
    verify_count(client, index, total, errors)
    if len(seen) != total:
        raise ClusterError(f"the source yielded {len(seen)} documents but held {total} when the deploy began: it "
                           "changed during the deploy", hint="rerun the deploy: it embeds only what changed")
    left, pruned = [], []
    if move_alias:
        left = point_alias(client, alias, index)
        pruned = prune(client, alias, cfg.keep_versions)
    return {"index": index, "alias": alias, "docs": len(seen), "embedded_now": sent, "deleted_now": len(gone),
            "from_vectors": getattr(embedder, "from_vectors", 0),
            "dims": dims, "pruned": pruned, "truncated_docs": truncated, "max_tokens": embedder.max_tokens,
            "similarity": "dot_product" if normalized else "cosine", "index_options": cfg.index_type,
            "replicas": replicas, "alias_left": left, "alias_moved": move_alias}
