"""Vectors: the corpus and the test queries embedded by a bi-encoder, with or without the cluster.

``deploy`` embeds as it indexes (:class:`ModelEmbedder`). On a machine that cannot reach the cluster the
``embed`` stage writes the corpus's vectors ahead of time (:func:`embed_corpus`: float16, with the hash of the
text each one was embedded from), and ``deploy`` later indexes them without the model
(:class:`PrecomputedEmbedder`) — re-embedding, with the model, only documents whose text changed since.
``query-vectors`` (:func:`embed_queries`) does the same for the evaluated test queries of a model that is not
on the machine that evaluates.

On a GPU both run under bf16 autocast (:func:`inference_context`), in batches a GPU is busy with.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .cache import StageCache
from .data import Doc
from .deploy import _batches, doc_hash
from .errors import ModelError
from .encoding import ModelEmbedder, inference_context  # noqa: F401 - re-exported
from .models import embedding_info


class PrecomputedEmbedder:
    """Vectors from an ``embed`` stage, looked up by document id and text hash. A document that is new or whose
    text changed since is embedded by ``fallback`` (a model loader, called once) — or refused without one."""

    def __init__(self, cache: StageCache, fallback=None):
        info = cache.info()
        self.dims, self.normalized, self.max_tokens = info["dims"], info["normalized"], info["max_tokens"]
        self.vectors = np.load(cache.path("vectors.npy"))
        ids = cache.path("ids.txt").read_text().split("\n")
        hashes = cache.path("hashes.txt").read_text().split("\n")
        self.row = {(i, h): n for n, (i, h) in enumerate(zip(ids, hashes, strict=True))}
        self.truncated = set(cache.path("truncated.txt").read_text().split("\n")) - {""}
        self._fallback, self._model = fallback, None
        self.from_vectors = 0

    def embed(self, docs: list[tuple[Doc, str]]) -> tuple[np.ndarray, list[bool]]:
        out = np.zeros((len(docs), self.dims), dtype=np.float32)
        missing = [n for n, (d, h) in enumerate(docs) if (d.id, h) not in self.row]
        for n, (d, h) in enumerate(docs):
            if (d.id, h) in self.row:
                out[n] = self.vectors[self.row[(d.id, h)]]
        truncated = [d.id in self.truncated for d, _ in docs]
        self.from_vectors += len(docs) - len(missing)
        if missing:
            if self._fallback is None:
                raise ModelError(f"{len(missing)} documents (e.g. {docs[missing[0]][0].id!r}) changed or appeared "
                                 "since the vectors were computed, and their model is not on this machine",
                                 hint="export a new bundle and embed again, or copy the model here")
            if self._model is None:
                self._model = ModelEmbedder(self._fallback(), batch_size=32)
            vecs, trunc = self._model.embed([docs[n] for n in missing])
            out[missing] = vecs
            for n, t in zip(missing, trunc, strict=True):
                truncated[n] = t
        return out, truncated


def embed_corpus(model_name: str, max_length: int, docs: Iterable[Doc], total: int, cache: StageCache,
                 batch_size: int, progress=None, engine=None, chunk_docs: int = 2048) -> dict[str, Any]:
    """The ``embed`` stage: every document's vector (float16), id, text hash and whether it was truncated.

    Chunks of ``chunk_docs`` documents (in the corpus's order) are the unit of work and of resumption
    (``parts/<n>.npz``, kept with their ids and hashes: a part whose documents changed is redone), run by
    ``engine`` (:mod:`esdistill.engine`: this process by default, or Ray workers)."""
    if cache.done:
        return {**cache.info(), "cached": True}
    from .engine import LocalEngine

    engine = engine or LocalEngine()
    engine.prepare([model_name])  # reachable by every worker before any work
    parts = cache.path("parts")
    parts.mkdir(exist_ok=True)
    task = progress.add_task("embed corpus", total=total) if progress else None
    chunks: list[tuple[Path, list[str], list[str]]] = []

    def jobs():
        for n, batch in enumerate(_batches(((d, doc_hash(d)) for d in docs), chunk_docs)):
            part = parts / f"{n:05d}.npz"
            ids, hashes = [d.id for d, _ in batch], [h for _, h in batch]
            chunks.append((part, ids, hashes))
            if part.exists():
                with np.load(part) as old:
                    if list(old["ids"]) == ids and list(old["hashes"]) == hashes:
                        if progress:
                            progress.advance(task, len(batch))
                        continue
            yield (part, ids, hashes), ("embed", model_name, max_length, batch_size, batch)

    for (part, ids, hashes), (vecs, cut, normalized) in engine.map(jobs()):
        tmp = part.with_suffix(".tmp.npz")
        np.savez(tmp, vectors=vecs.astype(np.float16), ids=np.asarray(ids), hashes=np.asarray(hashes),
                 truncated=np.asarray(cut, dtype=bool), normalized=np.asarray(normalized))
        tmp.replace(part)
        if progress:
            progress.advance(task, len(ids))
    vectors, truncated, ids, hashes, normalized = [], [], [], [], True
    for part, c_ids, c_hashes in chunks:
        with np.load(part) as p:
            vectors.append(p["vectors"])
            truncated += [i for i, t in zip(c_ids, p["truncated"], strict=True) if t]
            normalized = bool(p["normalized"])
        ids += c_ids
        hashes += c_hashes
    if len(ids) != total:
        raise ModelError(f"embedded {len(ids)} documents, the corpus holds {total}")
    if not vectors:
        raise ModelError("the corpus is empty: nothing to embed")
    matrix = np.concatenate(vectors)
    dims = int(matrix.shape[1])
    np.save(cache.path("vectors.npy"), matrix)
    cache.path("ids.txt").write_text("\n".join(ids))
    cache.path("hashes.txt").write_text("\n".join(hashes))
    cache.path("truncated.txt").write_text("\n".join(truncated))
    shutil.rmtree(parts, ignore_errors=True)
    return cache.finish(docs=len(ids), dims=dims, normalized=normalized, max_tokens=max_length,
                        truncated_docs=len(truncated), dtype="float16", engine=engine.name)


def embed_queries(model, queries: dict[str, str], cache: StageCache) -> dict[str, Any]:
    """The ``query-vectors`` stage: each query's vector (float16) by query id, and how long encoding one query
    at a time took (ms, after one warm-up) on this machine."""
    import time

    if cache.done:
        return {**cache.info(), "cached": True}
    qids = sorted(queries)
    dims, normalized = embedding_info(model)
    with inference_context():
        vecs = model.encode([queries[q] for q in qids], normalize_embeddings=normalized, show_progress_bar=False,
                            convert_to_numpy=True, batch_size=64)
        ms = []
        for q in qids[: min(len(qids), 50)] if qids else []:
            t0 = time.perf_counter()
            model.encode(queries[q], normalize_embeddings=normalized, show_progress_bar=False)
            ms.append((time.perf_counter() - t0) * 1e3)
    np.save(cache.path("vectors.npy"), np.asarray(vecs, dtype=np.float16))
    cache.path("qids.txt").write_text("\n".join(qids))
    return cache.finish(queries=len(qids), dims=dims, normalized=normalized,
                        encode_ms_p50=float(np.percentile(ms[1:] or ms, 50)) if ms else None)


class PrecomputedQueryEncoder:
    """Stands in for a bi-encoder at search time where only its query vectors came back (``query-vectors``):
    ``encode(text)`` looks the query up; a text it was not given is an error, not a wrong vector."""

    def __init__(self, cache: StageCache, queries: dict[str, str]):
        vecs = np.load(cache.path("vectors.npy")).astype(np.float32)
        qids = cache.path("qids.txt").read_text().split("\n")
        self.by_text = {queries[q]: v for q, v in zip(qids, vecs, strict=True) if q in queries}
        self.dims = int(vecs.shape[1])
        self.precomputed = True

    def encode(self, text, normalize_embeddings: bool = True, **_: Any):
        if text not in self.by_text:
            raise ModelError(f"no precomputed vector for the query {text[:60]!r}",
                             hint="the model is not on this machine; only the evaluated test queries were encoded")
        return self.by_text[text]
