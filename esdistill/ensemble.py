"""Teacher ensembles (``teacher.ensemble``): several teachers fused per query into one label.

Members, named as the config names them:

* ``fit`` — the teacher fitted here (``[teacher.fit]``; each judged query labelled by the fold model that never
  saw it);
* ``corpus`` — the inverse-cloze teacher from the corpus alone (:mod:`esdistill.ict`);
* ``cross_encoder:<model>`` — a ready cross-encoder (hub id or folder);
* ``bi_encoder:<model>`` — the cosine of a bi-encoder (e.g. ``bi_encoder:minilm``, the zero-shot base);
* ``request`` — the user's own search (``teacher.request``): its ``_score`` of each candidate, from the request
  run with the candidates' ids as its ``post_filter`` (so its ``rescore`` reaches all of them);
* ``bm25`` — BM25's own score.

Every member scores the same candidate pairs. Per query, each member's scores become z-scores over the query's
list and the label is their weighted sum — today's BM25 blend (:func:`esdistill.teacher.fuse`) with any number
of members. The weights are the point of the simplex grid (step 0.1) that ranks the judged training queries best;
those queries were labelled by models that never saw them (cross-fitting, or a teacher that never sees a query),
so the choice is made on held-out labels, and :func:`heldout_quality` measures it on queries it was not chosen on.
The pipeline at evaluation fuses the same members with the same weights over its rerank depth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .data import Qrels, fold_of

MODEL_KINDS = ("cross_encoder", "bi_encoder")
PLAIN_KINDS = ("fit", "corpus", "bm25", "request")


@dataclass(frozen=True)
class Member:
    spec: str  #: as the config names it
    kind: str  #: fit | corpus | bm25 | request | cross_encoder | bi_encoder
    model: str | None = None

    @property
    def column(self) -> str:
        """Its column in the teacher's score frame."""
        return "bm25" if self.kind == "bm25" else f"m:{self.spec}"


def parse(spec: str) -> Member:
    """A member from its config name; ``ValueError`` naming what is accepted."""
    kind, _, model = spec.partition(":")
    if kind in PLAIN_KINDS and not model:
        return Member(spec, kind)
    if kind in MODEL_KINDS and model:
        return Member(spec, kind, model)
    raise ValueError(f"unknown teacher ensemble member {spec!r}: use fit, corpus, bm25, request, "
                     "cross_encoder:<model> or bi_encoder:<model>")


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if np.isnan(x).all():
        return np.zeros_like(x)
    x = np.where(np.isnan(x), np.nanmin(x), x)  # BM25 did not return it: the query's lowest score
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def fuse_many(columns: list[np.ndarray], weights: tuple[float, ...] | list[float], scale: float = 1.0) -> np.ndarray:
    """One query's fused scores: ``scale * sum_i w_i z(column_i)``, z-scores over the query's list."""
    out = np.zeros(len(columns[0]), dtype=float)
    for col, w in zip(columns, weights, strict=True):
        if w:
            out += w * _z(col)
    return scale * out


def simplex(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` members on a grid of ``step`` that sums to 1."""
    units = round(1 / step)
    return [tuple(c / units for c in combo) for combo in itertools.product(range(units + 1), repeat=n)
            if sum(combo) == units]


def _prepared(frame: pd.DataFrame, members: list[Member], qrels: Qrels, depth: int | None):
    """Per judged query: its members' z-score matrix, the gain of each candidate, and its ideal DCG@10."""
    cands = frame[frame["source"] == "bm25"] if "source" in frame else frame
    if depth is not None:
        cands = cands[cands["rank"] <= depth]
    have = set(cands.qid)
    judged = {q: d for q, d in qrels.items() if q in have and any(g >= 1 for g in d.values())}
    out = []
    for q, g in cands[cands.qid.isin(judged)].groupby("qid"):
        rel = {d: grade for d, grade in judged[q].items() if grade >= 1}
        z = np.column_stack([_z(g[m.column].to_numpy()) for m in members])
        gains = np.array([rel.get(d, 0) for d in g.docid], dtype=float)
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(x / np.log2(i + 2) for i, x in enumerate(ideal)) or 1.0
        out.append((q, z, gains, idcg))
    return out


_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def _ndcg(prepared, weights: np.ndarray) -> np.ndarray:
    """NDCG@10 of each prepared query under ``weights`` (linear gains, as ranx; ties by list order)."""
    out = np.empty(len(prepared))
    for i, (_, z, gains, idcg) in enumerate(prepared):
        order = np.argsort(-(z @ weights), kind="stable")[:10]
        out[i] = float((gains[order] * _DISCOUNT[: len(order)]).sum() / idcg)
    return out


def choose_weights(frame: pd.DataFrame, members: list[Member], qrels: Qrels, depth: int | None = None,
                   step: float = 0.1) -> dict[str, Any]:
    """The simplex point that ranks the judged training queries best (ties: the first in grid order), each
    member alone, and how many queries decided it. ``depth`` fuses each query's top-``depth`` BM25 candidates
    only (the pipeline's rerank depth: z-scores over 30 candidates are not those over 100)."""
    prepared = _prepared(frame, members, qrels, depth)
    if not prepared:
        return {"weights": None, "queries": 0}
    grid = simplex(len(members), step)
    scores = [float(_ndcg(prepared, np.array(w)).mean()) for w in grid]
    best = int(np.argmax(scores))
    alone = {m.spec: float(_ndcg(prepared, np.eye(len(members))[i]).mean()) for i, m in enumerate(members)}
    return {"weights": list(grid[best]), "ndcg@10": scores[best], "alone": alone, "queries": len(prepared),
            "depth": depth, "grid_points": len(grid)}


def heldout_quality(frame: pd.DataFrame, members: list[Member], qrels: Qrels, depth: int | None = None,
                    step: float = 0.1) -> dict[str, Any] | None:
    """NDCG@10 of the ensemble where each judged query's weights were chosen on the *other* half of the judged
    queries (two halves by a stable hash): the weights :func:`choose_weights` picks on all of them are measured
    on the queries they were picked on, which flatters them."""
    prepared = _prepared(frame, members, qrels, depth)
    if len(prepared) < 4:
        return None
    grid = [np.array(w) for w in simplex(len(members), step)]
    halves = [[p for p in prepared if fold_of(f"weight:{p[0]}", 2) == h] for h in (0, 1)]
    if not all(halves):
        return None
    per_query, weights = [], []
    for h in (0, 1):
        fit, test = halves[1 - h], halves[h]
        best = max(range(len(grid)), key=lambda i: (float(_ndcg(fit, grid[i]).mean()), -i))
        weights.append(grid[best].tolist())
        per_query += _ndcg(test, grid[best]).tolist()
    return {"ndcg@10": float(np.mean(per_query)), "weights": weights, "queries": len(per_query)}


def fuse_frame(frame: pd.DataFrame, members: list[Member], weights: list[float], scale: float) -> pd.DataFrame:
    """``frame`` with ``teacher`` replaced by the ensemble's label (its raw value kept in ``teacher_raw``)."""
    out = frame.assign(teacher_raw=frame.teacher)
    cols = [m.column for m in members]
    fused = out.groupby("qid", group_keys=False)[cols].apply(
        lambda g: pd.Series(fuse_many([g[c].to_numpy() for c in cols], weights, scale), index=g.index))
    out["teacher"] = fused.astype("float32")
    return out


class EnsembleReranker:
    """The pipeline's reranker for an ensemble: each member scores BM25's head (a cross-encoder's logits, a
    bi-encoder's cosine, BM25's own score) and the scores are fused as the labels were."""

    def __init__(self, scorers: list[tuple[Member, Any]], weights: list[float]):
        self.scorers, self.weights = scorers, weights
        #: when a dict: :meth:`fused` keeps each query's members' scores there (text -> (document ids, columns))
        self.record: dict[str, tuple[list[str], list[np.ndarray]]] | None = None

    def describe(self) -> str:
        return " + ".join(f"{w:g}·{m.spec}" for (m, _), w in zip(self.scorers, self.weights, strict=True) if w)

    def memoized(self, vectors_for: Callable[[Member, Any], dict] | None = None) -> EnsembleReranker | None:
        """The same reranker with each bi-encoder member's document vectors kept across queries
        (:class:`DocumentMemo`; ``vectors_for(member, model)``: where, e.g. the work dir's store the teacher's
        scoring filled): the same scores, each document encoded once over a run of many queries. None when no
        member is a bi-encoder (a cross-encoder scores pairs: nothing to keep)."""
        if not any(m.kind == "bi_encoder" for m, _ in self.scorers):
            return None
        return EnsembleReranker([(m, DocumentMemo(model, vectors_for(m, model) if vectors_for else None)
                                  if m.kind == "bi_encoder" else model) for m, model in self.scorers], self.weights)

    def fused(self, text: str, docs: list, bm25: list[float], batch_size: int = 64) -> np.ndarray:
        """The pipeline's score of each of ``docs``: the members' :meth:`columns` fused with the weights (and kept
        in :attr:`record` when it is a dict)."""
        cols = self.columns(text, docs, bm25, batch_size)
        if self.record is not None:
            self.record[text] = ([x.id for x in docs], cols)
        return fuse_many(cols, self.weights)

    def columns(self, text: str, docs: list, bm25: list[float], batch_size: int = 64) -> list[np.ndarray]:
        """Each member's own score of each of ``docs`` for ``text``, in member order: what :meth:`fused` fuses,
        and each member's ranking alone (the report's "the pipeline's members alone")."""
        import torch

        cols = []
        for member, model in self.scorers:
            if member.kind == "bm25":
                cols.append(np.asarray(bm25, dtype=float))
            elif member.kind == "request":  # the user's search, restricted to these documents
                cols.append(model.score_docs(text, [x.id for x in docs]))
            elif member.kind == "bi_encoder":  # with the model's query / document prompts, as the labels were
                q = model.encode_query([text], normalize_embeddings=True, show_progress_bar=False)[0]
                d = model.encode_document([x.full_text for x in docs], batch_size=batch_size,
                                          normalize_embeddings=True, show_progress_bar=False)
                cols.append(np.asarray(d @ q, dtype=float))
            else:
                cols.append(np.asarray(model.predict([(text, x.full_text) for x in docs], batch_size=batch_size,
                                                     activation_fn=torch.nn.Identity(), show_progress_bar=False),
                                       dtype=float).reshape(-1))
        return cols


class DocumentMemo:
    """A bi-encoder whose document vectors are kept by text: ``encode_document`` encodes only texts it has not
    seen, so a run over many queries whose candidates overlap encodes each document once. Queries pass through.
    For measuring a pipeline's quality over many queries (its latency is timed on the model itself). ``vectors``:
    where they are kept (text digest -> unit vector; a work dir's :class:`esdistill.vectors.DocumentVectors`,
    which the teacher's scoring of the same model fills) — else in memory."""

    def __init__(self, model, vectors: dict | None = None):
        self.model, self.vectors = model, ({} if vectors is None else vectors)

    def encode_query(self, texts, **kwargs):
        return self.model.encode_query(texts, **kwargs)

    def missing(self, texts) -> list[str]:
        """The distinct ``texts`` with no vector kept yet, in order."""
        from .vectors import text_digest

        return [t for t in dict.fromkeys(texts) if text_digest(t) not in self.vectors]

    def prefill(self, texts, batch_size: int = 32, advance=None, chunk: int = 256) -> None:
        """Encode the ``texts`` not kept yet, ``chunk`` at a time, calling ``advance(n)`` after each (a progress
        bar over :meth:`missing`: like work, so its estimate holds)."""
        todo = self.missing(texts)
        for i in range(0, len(todo), chunk):
            self.encode_document(todo[i:i + chunk], batch_size=batch_size, normalize_embeddings=True,
                                 show_progress_bar=False)
            if advance:
                advance(len(todo[i:i + chunk]))

    def encode_document(self, texts, **kwargs):
        """Unit vectors of ``texts`` (every caller normalises: the vectors kept are unit length)."""
        from .vectors import text_digest

        keys = [text_digest(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.vectors}
        if todo:
            kwargs["normalize_embeddings"] = True
            self.vectors.update(zip(todo, self.model.encode_document(list(todo.values()), **kwargs), strict=True))
        return np.stack([self.vectors[k] for k in keys]) if texts else np.zeros((0, 0), dtype=np.float32)
