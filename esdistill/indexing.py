"""``index`` stage: create the BM25 index from ``mappings/`` and bulk-index the corpus.

Also the shared index plumbing the other stages use: loading mapping files, bulk-indexing with
elasticsearch-py's ``streaming_bulk`` (retries with backoff on 429), verifying counts, and reading documents
back from an existing index.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch, helpers
from elasticsearch import exceptions as es_exc

from .data import Doc
from .errors import ClusterError
from .resources import resource_dir

MAPPINGS_DIR = resource_dir("mappings")


def load_mapping(name: str) -> dict[str, Any]:
    """A JSON body from ``mappings/`` (a fresh copy each call)."""
    path = MAPPINGS_DIR / name
    try:
        return copy.deepcopy(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ClusterError(f"mapping file missing: {path}", hint="reinstall esdistill from a full checkout") from None


def index_meta(client: Elasticsearch, index: str) -> dict[str, Any] | None:
    """The ``_meta.esdistill`` of ``index``; ``{}`` when it exists without ours, None when it does not exist."""
    try:
        resp = client.indices.get_mapping(index=index).body
    except es_exc.NotFoundError:
        return None
    (mapping,) = resp.values()
    return mapping.get("mappings", {}).get("_meta", {}).get("esdistill", {})


def index_identity(client: Elasticsearch, index: str) -> dict[str, Any]:
    """What a user's index (or alias) holds right now, as cheaply as the cluster can say it: each index's UUID,
    its document and deleted-document counts and the highest sequence number of each primary shard. A
    sequence number grows with every write (index, update, delete), so any change to the documents changes
    this record, and a rebuilt index under the same name has another UUID.

    An API key that may read the index but not its stats (no ``monitor`` privilege) gets it from searches
    (:func:`_identity_by_search`): the live documents' count and the sum of their ``_seq_no`` (a write gives a
    document a higher one; a deletion lowers the count), the index names the hits come from — and each index's
    UUID, read from a point in time the search opens, so that an index deleted and loaded again under the same
    name with the same count is not taken for the old one."""
    try:
        stats = client.indices.stats(index=index, level="shards", metric="docs").body
    except es_exc.NotFoundError:
        raise ClusterError(f"index {index!r} does not exist", hint="check data.index") from None
    except es_exc.AuthorizationException:
        return _identity_by_search(client, index)
    out = {}
    for name, st in sorted(stats["indices"].items()):
        seq = {shard: s.get("seq_no", {}).get("max_seq_no", -1) for shard, copies in st.get("shards", {}).items()
               for s in copies if s["routing"]["primary"]}
        out[name] = {"uuid": st.get("uuid"), "count": st["primaries"]["docs"]["count"],
                     "deleted": st["primaries"]["docs"]["deleted"], "max_seq_no": dict(sorted(seq.items()))}
    return {"indices": out, "from": "stats"}


#: how many documents (the latest writes, the earliest) a search-only identity samples when no UUID can be read
IDENTITY_SAMPLE = 100


def _identity_by_search(client: Elasticsearch, index: str) -> dict[str, Any]:
    """:func:`index_identity` with the ``read`` privilege only. The UUIDs come from a point in time's id (which
    names each shard's index by name and UUID; reading it needs only ``read``). Where none can be read, a sample
    of documents — the ids, ``_seq_no``, ``_primary_term`` and source of the :data:`IDENTITY_SAMPLE` latest and
    earliest writes — stands in, with a warning that a re-creation that keeps them cannot be detected."""
    import hashlib
    import warnings

    from .errors import EsdistillWarning

    resp = client.search(index=index, size=0, track_total_hits=True, aggs={
        "seq_no_sum": {"sum": {"field": "_seq_no"}}, "seq_no_max": {"max": {"field": "_seq_no"}},
        "indices": {"terms": {"field": "_index", "size": 1000}}}).body
    aggs = resp["aggregations"]
    names = sorted(b["key"] for b in aggs["indices"]["buckets"])
    out = {"count": resp["hits"]["total"]["value"], "seq_no_sum": aggs["seq_no_sum"]["value"],
           "seq_no_max": aggs["seq_no_max"]["value"], "indices": names, "from": "search"}
    uuids, why = _uuids_from_point_in_time(client, index, names)
    if uuids is not None:
        out["uuids"] = uuids
        return out
    digest = hashlib.sha256()
    for order in ("desc", "asc"):
        hits = client.search(index=index, size=IDENTITY_SAMPLE, sort=[{"_seq_no": order}], seq_no_primary_term=True,
                             track_total_hits=False).body["hits"]["hits"]
        for h in hits:
            digest.update(json.dumps([h["_index"], h["_id"], h.get("_seq_no"), h.get("_primary_term"),
                                      h.get("_source")], sort_keys=True, default=str).encode())
    out["sample"] = digest.hexdigest()[:16]
    warnings.warn(f"index {index!r}: these credentials may not read its stats (no `monitor` privilege) nor its UUID "
                  f"({why}); it is keyed on its count, the sum of its `_seq_no` and a sample of "
                  f"{2 * IDENTITY_SAMPLE} documents, so deleting it and loading it again under the same name, with the "
                  "same count and those documents unchanged, cannot be detected — every stage would reuse its "
                  "output. Grant `monitor` on the index, or clear the work dir's caches after re-creating it",
                  EsdistillWarning, stacklevel=3)
    return out


def _uuids_from_point_in_time(client: Elasticsearch, index: str,
                              names: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """``({index name: UUID}, None)`` read from a point in time opened (and closed at once) on ``index``: its id
    encodes each shard as the index name (a length byte, the name) and its 22-character UUID. ``(None, why)`` when
    the point in time is refused or its id does not hold every name in that form (another encoding)."""
    import base64
    import re

    if not names:
        return {}, None
    try:
        pit = client.open_point_in_time(index=index, keep_alive="10s").body["id"]
    except es_exc.ApiError as e:
        return None, f"a point in time was refused: {e.meta.status}"
    try:
        client.close_point_in_time(id=pit)
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


def count(client: Elasticsearch, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index).body["count"])


def create_index(client: Elasticsearch, index: str, body: dict[str, Any], meta: dict[str, Any]) -> None:
    body = copy.deepcopy(body)
    body["mappings"]["_meta"] = {"esdistill": meta}
    try:
        client.indices.create(index=index, **body)
    except es_exc.BadRequestError as e:
        raise ClusterError(f"Elasticsearch refused to create index {index!r}: {e.message} {e.info}") from None


def drop_own_index(client: Elasticsearch, index: str) -> None:
    """Delete ``index`` only if esdistill made it (its ``_meta`` says so); refuse to touch anyone else's."""
    meta = index_meta(client, index)
    if meta is None:
        return
    if not meta:
        raise ClusterError(
            f"index {index!r} exists and was not created by esdistill; refusing to overwrite it",
            hint="choose another name in [index] name / [deploy] name, or delete it yourself",
        )
    client.indices.delete(index=index)


def bulk_index(
    client: Elasticsearch,
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
        stream = helpers.streaming_bulk(client, pending, chunk_size=chunk_size, max_retries=0,
                                        raise_on_error=False, raise_on_exception=True)
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
        except (es_exc.ConnectionError, es_exc.ConnectionTimeout) as e:
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


def verify_count(client: Elasticsearch, index: str, expected: int, errors: list[dict]) -> int:
    """Refresh and check that ``index`` holds ``expected`` documents; raise with the first failures if not."""
    got = count(client, index)
    if got != expected or errors:
        sample = "; ".join(json.dumps(e)[:300] for e in errors[:3])
        raise ClusterError(
            f"index {index!r} holds {got} documents, expected {expected} ({len(errors)} bulk failures: {sample})",
            hint="rerun the stage: it resumes and fills in what is missing",
        )
    return got


def existing_ids(client: Elasticsearch, index: str) -> set[str]:
    """All document ids in ``index`` (a scan without sources)."""
    return {h["_id"] for h in helpers.scan(client, index=index, query={"query": {"match_all": {}}}, _source=False)}


def bm25_source(doc: Doc) -> dict[str, str]:
    return {"title": doc.title, "text": doc.text}


def build_bm25_index(
    client: Elasticsearch,
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
    meta = index_meta(client, index)
    resumed = False
    if meta and meta.get("key") == key:
        have = existing_ids(client, index)
        if len(have) == len(corpus) and have == set(corpus):
            return {"index": index, "docs": len(corpus), "cached": True}
        todo = [d for i, d in corpus.items() if i not in have]
        resumed = True
    else:
        drop_own_index(client, index)
        create_index(client, index, load_mapping("bm25_index.json"), {"key": key, "docs": len(corpus)})
        todo = list(corpus.values())
    task = progress.add_task(f"index {index}", total=len(todo)) if progress else None
    ok, errors = bulk_index(
        client,
        index,
        ({"_id": d.id, "_source": bm25_source(d)} for d in todo),
        chunk_size=chunk_size,
        on_progress=(lambda n: progress.advance(task, n)) if progress else None,
    )
    verify_count(client, index, len(corpus), errors)
    return {"index": index, "docs": len(corpus), "indexed": ok, "resumed": resumed, "cached": False}


def fetch_docs(client: Elasticsearch, index: str, ids: Iterable[str], text_fields: list[str]) -> dict[str, Doc]:
    """Documents by id from an existing index (``mget`` in batches). Missing ids are simply absent."""
    ids = list(dict.fromkeys(ids))
    out: dict[str, Doc] = {}
    for start in range(0, len(ids), 1000):
        resp = client.mget(index=index, ids=ids[start : start + 1000], source=text_fields).body
        for d in resp["docs"]:
            if d.get("found"):
                out[d["_id"]] = doc_from_source(d["_id"], d.get("_source", {}), text_fields)
    return out


def iter_index_docs(client: Elasticsearch, index: str, text_fields: list[str]) -> Iterator[Doc]:
    for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}}, _source=text_fields):
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
