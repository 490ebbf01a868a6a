"""``deploy`` stage: a new index with a ``dense_vector`` field, the corpus embedded by the student (client-side).

The index body comes from ``mappings/dense_index.json``; dims are read from the model, similarity is
``dot_product`` for a model that outputs unit vectors (esdistill's students do) and ``cosine`` otherwise, and
``index_options`` are explicit. Each deploy writes a versioned index ``<alias>-<key>`` and points the alias at it
once the count is verified, so searches never see a half-built index. Re-running resumes and syncs: only
documents not yet in the index, or whose text changed, are embedded, and documents gone from the source are
deleted (each dense document carries the hash of the text it was embedded from).
"""

from __future__ import annotations

import hashlib

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from elasticsearch import Elasticsearch, helpers
from elasticsearch import exceptions as es_exc

from .config import DeployConfig
from .data import Doc
from .errors import ClusterError, ModelError
from .indexing import (
    bulk_index,
    create_index,
    drop_own_index,
    index_meta,
    load_mapping,
    verify_count,
)

VECTOR_FIELD = "embedding"
#: the hash of the text a dense document was embedded from (:func:`doc_hash`), so a deploy can tell edits apart
HASH_FIELD = "esdistill_hash"


def dense_body(dims: int, normalized: bool, cfg: DeployConfig) -> dict[str, Any]:
    """The dense index: ``title`` and ``text`` (BM25-searchable, so it can serve hybrid alone) and the vector."""
    body = load_mapping("dense_index.json")
    vec = body["mappings"]["properties"][VECTOR_FIELD]
    vec["dims"] = dims
    vec["similarity"] = "dot_product" if normalized else "cosine"
    opts: dict[str, Any] = {"type": cfg.index_type}
    if "hnsw" in cfg.index_type:
        opts.update(m=cfg.m, ef_construction=cfg.ef_construction)
    vec["index_options"] = opts
    return body


def index_dims(client: Elasticsearch, index: str, field: str = VECTOR_FIELD) -> int | None:
    """The dims of ``field`` in ``index`` (an alias works too); None if there is no such field."""
    try:
        resp = client.indices.get_mapping(index=index).body
    except es_exc.NotFoundError:
        return None
    for mapping in resp.values():
        spec = mapping.get("mappings", {}).get("properties", {}).get(field)
        if spec and spec.get("type") == "dense_vector":
            return int(spec["dims"])
    return None


def check_dims(client: Elasticsearch, index: str, model_dims: int, field: str = VECTOR_FIELD) -> None:
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


def point_alias(client: Elasticsearch, alias: str, index: str) -> list[str]:
    """Move ``alias`` to ``index`` in one atomic request; returns the indices it left."""
    try:
        old = list(client.indices.get_alias(name=alias).body)
    except es_exc.NotFoundError:
        old = []
    actions = [{"remove": {"index": i, "alias": alias}} for i in old if i != index]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(actions=actions)
    return [i for i in old if i != index]


def versioned_index(alias: str, key: str) -> str:
    """The index one deploy of ``alias`` writes: ``<alias>-<first 10 characters of the deploy key>``."""
    return f"{alias}-{key[:10]}"


def is_version_of(index: str, alias: str) -> bool:
    """Whether ``index`` is a version of ``alias`` — and not of a sibling alias that extends its name
    (``<alias>-judgments-<key>`` is not a version of ``<alias>``): keys never contain a dash."""
    return index.startswith(f"{alias}-") and "-" not in index[len(alias) + 1:]


def versions(client: Elasticsearch, alias: str) -> list[dict[str, Any]]:
    """esdistill's versions behind ``alias``, oldest first: name, creation time, doc count, whether live."""
    try:
        live = set(client.indices.get_alias(name=alias).body)
    except es_exc.NotFoundError:
        live = set()
    try:
        settings = client.indices.get_settings(index=f"{alias}-*", name="index.creation_date").body
    except es_exc.NotFoundError:
        return []
    out = []
    for name, s in settings.items():
        if not is_version_of(name, alias):
            continue
        meta = index_meta(client, name)
        if meta:  # only indices esdistill made
            out.append({"index": name, "created": int(s["settings"]["index"]["creation_date"]),
                        "live": name in live, "key": meta.get("key"), "model": meta.get("model")})
    return sorted(out, key=lambda v: (v["created"], v["index"]))


def rollback(client: Elasticsearch, alias: str) -> tuple[str, str]:
    """Point ``alias`` back at the version deployed before the live one; returns (from, to)."""
    vs = versions(client, alias)
    live = [i for i, v in enumerate(vs) if v["live"]]
    if not live:
        raise ClusterError(f"alias {alias!r} points at no esdistill index; nothing to roll back")
    if live[-1] == 0:
        raise ClusterError(f"{vs[0]['index']} is the oldest version kept behind {alias!r}; nothing to roll back to")
    cur, prev = vs[live[-1]]["index"], vs[live[-1] - 1]["index"]
    point_alias(client, alias, prev)
    return cur, prev


def prune(client: Elasticsearch, alias: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions; the live one is never deleted."""
    vs = versions(client, alias)
    doomed = [v["index"] for v in vs[: max(0, len(vs) - keep)] if not v["live"]]
    for name in doomed:
        client.indices.delete(index=name)
    return doomed


def doc_hash(doc: Doc) -> str:
    """What a dense document was embedded from, hashed: a document whose title or text changes in the source
    gets another hash, and is embedded again by the next deploy."""
    return hashlib.sha1(f"{doc.title}\x00{doc.text}".encode()).hexdigest()[:16]


def dense_hashes(client: Elasticsearch, index: str) -> dict[str, str]:
    """id -> :func:`doc_hash` of every document in a dense index (a scan of one small field)."""
    return {h["_id"]: h.get("_source", {}).get(HASH_FIELD, "")
            for h in helpers.scan(client, index=index, query={"query": {"match_all": {}}}, _source=[HASH_FIELD])}


def replica_count(client: Elasticsearch, setting: int | str) -> int:
    """``number_of_replicas`` for a served index: the setting, or with ``auto`` one replica where a second data
    node can hold it, none on a single node (its replica could never be assigned: the index would stay yellow)."""
    if setting != "auto":
        return int(setting)
    try:
        nodes = client.cluster.health().body.get("number_of_data_nodes", 1)
    except es_exc.AuthorizationException:
        nodes = 1
    return 1 if nodes > 1 else 0


def deploy_student(
    client: Elasticsearch,
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
    must then equal ``total`` and the number of documents ``docs`` yielded, or the alias does not move."""
    from .embed import ModelEmbedder

    embedder = model if hasattr(model, "embed") and hasattr(model, "dims") else ModelEmbedder(
        model, cfg.encode_batch_size)
    index = versioned_index(alias, key)
    dims, normalized = embedder.dims, embedder.normalized
    existing = index_meta(client, index)
    replicas = replica_count(client, cfg.replicas)
    if existing and existing.get("key") == key:
        check_dims(client, index, dims)
        have = dense_hashes(client, index)
        client.indices.put_settings(index=index, settings={"number_of_replicas": replicas})
    else:
        drop_own_index(client, index)
        body = dense_body(dims, normalized, cfg)
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
