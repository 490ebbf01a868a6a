"""``teacher`` stage: the pipeline's relevance judgments P(d|q) as cross-encoder scores.

Two parts:

* :func:`fit_teacher` (``esdistill teacher fit``) fine-tunes a cross-encoder from judgments (qrels) with
  BM25-mined negatives, starting from a BERT-style body. It *cross-fits*: the judged queries are split into k
  folds, fold model *f* is fit on the other k-1 folds and labels only fold *f*. A teacher that labels queries it
  was fit on overfits and gives near one-hot labels. A ``full`` model fit on all judged queries labels unjudged
  queries (a query log) and serves as the pipeline's reranker at evaluation — it never sees test queries.
* :func:`score_candidates` scores every (query, candidate) pair with the assigned model and stores raw logits in
  ``scores.parquet``. It works in chunks of queries written as they finish, so an interrupted run resumes, and
  a finished one is a cache hit that scores nothing.
* :func:`fuse` / :func:`fuse_frame` blend the teacher with BM25 (per-query z-scores, weight ``w`` on BM25), the
  same way for the labels and for the pipeline at evaluation; :func:`choose_bm25_weight` picks ``w`` from the
  held-out labels of the judged training queries.

Fit losses: ``bce`` (pointwise binary cross-entropy on judged positives and BM25 negatives) or ``listwise``
(softmax cross-entropy of the positive against its BM25 hard negatives and in-batch negatives). A listwise loss
is blind to a constant shift of all scores, so the model cannot settle on the label prior, as BCE does early on.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import distributed
from .cache import StageCache
from .config import TeacherFitConfig
from .console import attach_progress
from .data import Doc, Qrels, fold_of, relevant
from .models import bf16_available, load_cross_encoder, warmup

FULL = "full"
#: written into a fitted model's folder after everything else: only such a folder counts as finished
COMPLETE = ".complete"


def fit_pairs(
    qids: list[str],
    queries: dict[str, str],
    qrels: Qrels,
    candidates: pd.DataFrame,
    docs: Callable[[list[str]], dict[str, Doc]],
    negatives: int,
    negative_depth: int,
    seed: int,
    max_positives: int | None = None,
) -> pd.DataFrame:
    """(query, document, label) rows: every judged positive (at most ``max_positives`` per query), plus
    ``negatives`` BM25 negatives per positive, never a judged document."""
    rng = random.Random(seed)
    by_q = {q: g.sort_values("rank")["docid"].tolist() for q, g in candidates[candidates.qid.isin(qids)].groupby("qid")}
    rows: list[tuple[str, str, float]] = []
    for qid in qids:
        pos = relevant(qid, qrels.get(qid, {}), max_positives)
        if not pos:
            continue
        pool = [d for d in by_q.get(qid, [])[:negative_depth] if d not in qrels.get(qid, {})]
        for p in pos:
            rows.append((qid, p, 1.0))
            for n in rng.sample(pool, min(negatives, len(pool))):
                rows.append((qid, n, 0.0))
    frame = pd.DataFrame(rows, columns=["qid", "docid", "label"])
    texts = docs(frame.docid.unique().tolist())
    frame["query"] = frame.qid.map(queries)
    frame["document"] = frame.docid.map(lambda d: texts[d].full_text if d in texts else None)
    missing = frame.document.isna().sum()
    if missing:
        raise ValueError(f"{missing} training pairs name documents that could not be read")
    return frame


def listwise_rows(frame: pd.DataFrame, negatives: int) -> pd.DataFrame:
    """One row per judged positive: (query, positive, negative_0..n-1) from :func:`fit_pairs`' rows, where each
    positive is followed by its sampled negatives. Short lists are padded by repeating their negatives."""
    rows, cur = [], None
    for r in frame.itertuples(index=False):
        if r.label > 0:
            cur = {"query": r.query, "positive": r.document, "negs": []}
            rows.append(cur)
        elif cur is not None:
            cur["negs"].append(r.document)
    out = []
    for r in rows:
        if not r["negs"]:
            continue
        negs = [r["negs"][i % len(r["negs"])] for i in range(negatives)]
        out.append({"query": r["query"], "positive": r["positive"], **{f"negative_{i}": n for i, n in enumerate(negs)}})
    return pd.DataFrame(out)


def relevant_texts(frame: pd.DataFrame, qrels: Qrels) -> dict[str, set[str]]:
    """Query text → the texts, among ``frame``'s documents, that the judgments call relevant to it (capped
    positives included): what must never be that query's in-batch negative in the listwise fit."""
    text_of = dict(zip(frame.docid, frame.document, strict=True))
    out: dict[str, set[str]] = {}
    for qid, query in frame[["qid", "query"]].drop_duplicates().itertuples(index=False):
        judged = {text_of[d] for d, grade in qrels.get(qid, {}).items() if grade > 0 and d in text_of}
        out.setdefault(query, set()).update(judged)
    return out


def masked_cross_mnrl(model, num_negatives: int | None, relevant: dict[str, set[str]]):
    """The cross-encoder's :class:`MultipleNegativesRankingLoss` whose in-batch negatives skip documents judged
    relevant to the row's query (``relevant``: query text → relevant document texts): another query's positive
    that the judgments call relevant to this query is a false negative. NO_DUPLICATES keeps a query's own rows
    apart; this keeps the other queries' judged-relevant documents out. A row left with fewer clean candidates
    than ``num_negatives`` repeats its clean ones (its own hard negatives when none is clean); the loss's
    ``.masked`` counts what was left out."""
    import torch
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    class MaskedCrossMNRL(MultipleNegativesRankingLoss):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.masked = 0  #: false negatives kept out so far

        def get_in_batch_negatives(self, anchors, candidates):
            if self.num_negatives == 0:
                return
            n, cols = len(anchors), len(candidates)
            flat = [c for col in candidates for c in col]
            clean = ~torch.eye(n, dtype=torch.bool).repeat(1, cols)
            for a, query in enumerate(anchors):
                bad = relevant.get(query)
                if bad:
                    for j, text in enumerate(flat):
                        if clean[a, j] and text in bad:
                            clean[a, j] = False
                            self.masked += 1
            width = min(self.num_negatives or clean.sum(1).max().item(), n * cols - cols)
            picks = []
            for a in range(n):
                ok = clean[a].nonzero().flatten()
                if len(ok) == 0:  # nothing clean in the batch: the row's own hard negatives (or its positive)
                    ok = torch.tensor([a + n * c for c in range(1, cols)] or [a])
                if len(ok) >= width:
                    chosen = ok[torch.randperm(len(ok))[:width]] if self.num_negatives else ok[:width]
                else:
                    chosen = ok[torch.arange(width) % len(ok)]
                picks.append(chosen)
            for column in torch.stack(picks).T:
                yield [flat[i] for i in column.tolist()]

    return MaskedCrossMNRL(model, num_negatives=num_negatives)


def fit_trainer(frame: pd.DataFrame, cfg: TeacherFitConfig, out: Path, base_model: str | None = None,
                qrels: Qrels | None = None):
    """The trainer of one fold's cross-encoder, from :func:`fit_pairs`' rows (not started). ``base_model``
    overrides ``cfg.base_model`` (the corpus teacher, when the judged fit starts from it). With ``qrels`` the
    listwise loss never takes a document judged relevant to a row's query as its in-batch negative."""
    from datasets import Dataset as HFDataset

    base = base_model or cfg.base_model
    if cfg.loss == "listwise":
        return _trainer(listwise_rows(frame, cfg.negatives).sample(frac=1.0, random_state=cfg.seed), cfg, base, out,
                        listwise=True, relevant=relevant_texts(frame, qrels) if qrels else None)
    data = HFDataset.from_pandas(frame[["query", "document", "label"]].sample(frac=1.0, random_state=cfg.seed),
                                 preserve_index=False)
    return _trainer(data, cfg, base, out, listwise=False)


def _trainer(data, cfg, base: str, out: Path, listwise: bool, relevant: dict[str, set[str]] | None = None):
    """A cross-encoder trainer: ``listwise`` rows (``query, positive, negative_i``; a DataFrame) under
    MultipleNegativesRankingLoss with ``cfg.in_batch_negatives`` (masked by ``relevant``:
    :func:`masked_cross_mnrl`), else (query, document, label) rows under BCE.
    ``cfg`` is a :class:`TeacherFitConfig` or a :class:`~esdistill.config.CorpusFitConfig`."""
    from datasets import Dataset as HFDataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MultipleNegativesRankingLoss

    model = load_cross_encoder(base, max_length=cfg.max_length, num_labels=1)
    if listwise:
        data = HFDataset.from_pandas(data, preserve_index=False)
        loss = (masked_cross_mnrl(model, cfg.in_batch_negatives, relevant) if relevant
                else MultipleNegativesRankingLoss(model, num_negatives=cfg.in_batch_negatives))
    else:
        loss = BinaryCrossEntropyLoss(model)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        **warmup(0.1),
        seed=cfg.seed,
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        dataloader_drop_last=False,
        # listwise: another row of the same query in the batch would hand the query one of its own relevant
        # documents as an in-batch negative; NO_DUPLICATES keeps rows that share a text in separate batches
        batch_sampler="no_duplicates" if listwise and cfg.no_duplicates else "batch_sampler",
        bf16=bf16_available(),  # mixed precision on a GPU; float32 on a CPU
        disable_tqdm=True,  # progress is one rich bar (esdistill.console.attach_progress)
        **distributed.trainer_kwargs(),  # torchrun on CPUs: data-parallel over gloo
        **distributed.max_steps(math.ceil(len(data) / cfg.batch_size), cfg.epochs),
    )
    return CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)


def _run(trainer, out: Path, progress, name: str) -> None:
    attach_progress(trainer, progress, f"teacher fit [{name}]")
    trainer.train()
    if distributed.is_main():  # data parallel (torchrun): one process writes
        trainer.model.save_pretrained(str(out))
        (out / COMPLETE).write_text("")  # last: a folder without it was interrupted while being written
    distributed.barrier()  # the next fit may start from this one (the corpus teacher): wait until it is written


def train_listwise(rows: pd.DataFrame, cfg, base_model: str, out: Path, progress=None, name: str = "") -> None:
    """Fit a cross-encoder on listwise rows (``query, positive, negative_0..n-1``) into ``out``."""
    _run(_trainer(rows.sample(frac=1.0, random_state=cfg.seed), cfg, base_model, out, listwise=True), out, progress,
         name)


def _train_cross_encoder(frame: pd.DataFrame, cfg: TeacherFitConfig, out: Path, progress=None,
                         name: str = "", base_model: str | None = None, qrels: Qrels | None = None) -> None:
    _run(fit_trainer(frame, cfg, out, base_model, qrels), out, progress, name)


def fit_teacher(
    cfg: TeacherFitConfig,
    queries: dict[str, str],
    qrels: Qrels,
    candidates: pd.DataFrame,
    docs: Callable[[list[str]], dict[str, Doc]],
    cache: StageCache,
    log: Callable[[str], None] = print,
    max_positives: int | None = None,
    progress=None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """Fit ``cfg.folds`` fold models and one full model; each finished model is kept, so a rerun resumes.
    ``base_model`` (a folder) replaces ``cfg.base_model`` as the starting point: the corpus teacher."""
    if cache.done:
        return {**cache.info(), "cached": True}
    judged = sorted(q for q in queries if any(g > 0 for g in qrels.get(q, {}).values()))
    if len(judged) < cfg.folds:
        raise ValueError(f"teacher fit needs at least {cfg.folds} judged queries, got {len(judged)}")
    folds = {q: fold_of(q, cfg.folds) for q in judged}
    plan = [(str(f), [q for q in judged if folds[q] != f]) for f in range(cfg.folds)] + [(FULL, judged)]
    models = {}
    for name, fit_q in plan:
        out = cache.path(f"model-{name}")
        if not (out / COMPLETE).exists():
            shutil.rmtree(out, ignore_errors=True)  # a fit killed while saving: config.json without weights
            pairs = fit_pairs(fit_q, queries, qrels, candidates, docs, cfg.negatives, cfg.negative_depth, cfg.seed,
                              max_positives)
            log(f"teacher fit [{name}]: {len(fit_q)} queries, {len(pairs)} pairs")
            _train_cross_encoder(pairs, cfg, out, progress, name, base_model, qrels)
        models[name] = str(out)
    return cache.finish(models=models, folds={q: f for q, f in folds.items()}, judged_queries=len(judged),
                        base_model=base_model or cfg.base_model)


def assign_scorers(qids: list[str], fit_info: dict[str, Any] | None, model: str | None) -> dict[str, str]:
    """Which model labels each query: its held-out fold model, the full model for unjudged queries, or the
    user's ready reranker for all."""
    if fit_info is None:
        assert model is not None
        return {q: model for q in qids}
    models, folds = fit_info["models"], fit_info["folds"]
    return {q: models[str(folds[q])] if q in folds else models[FULL] for q in qids}


def score_candidates(
    candidates: pd.DataFrame,
    queries: dict[str, str],
    docs: Callable[[list[str]], dict[str, Doc]],
    scorers: dict[str, str],
    cache: StageCache,
    max_length: int,
    batch_size: int,
    chunk_queries: int = 32,
    progress=None,
    engine=None,
    kind: str = "score",
) -> dict[str, Any]:
    """Score every candidate pair with its query's scorer; raw logits in ``scores.parquet``. Chunks of
    ``chunk_queries`` queries are the unit of work and of resumption (``parts/``), run by ``engine``
    (:mod:`esdistill.engine`: this process by default, or Ray workers). The progress bar (and so the time
    estimate said with it) counts pairs for a cross-encoder and, for a bi-encoder (``kind = "cosine"``), the texts
    it encodes: each query, and each document the first time a chunk meets it — a bi-encoder encodes a document
    once however many queries share it, so counting pairs over-estimated (SciFact, 3,400 queries: "≈ 2.8 h" said,
    18 minutes taken). Ray workers each keep their own document vectors, so there it is a lower bound."""
    if cache.done:
        return {**cache.info(), "cached": True}
    from .engine import LocalEngine

    engine = engine or LocalEngine()
    engine.prepare(sorted(set(scorers.values())))  # every model reachable by every worker before any work
    parts = cache.path("parts")
    parts.mkdir(exist_ok=True)
    qids = sorted(candidates.qid.unique())
    by_model: dict[str, list[str]] = {}
    for q in qids:
        by_model.setdefault(scorers[q], []).append(q)
    plan = []  # (part, chunk, model, work): the work is what the chunk costs, the unit of the progress bar
    for m_idx, (model_name, m_qids) in enumerate(sorted(by_model.items())):
        seen: set[str] = set()
        for c_idx in range(0, len(m_qids), chunk_queries):
            part = parts / f"m{m_idx:02d}-c{chunk_queries}-{c_idx // chunk_queries:05d}.parquet"
            chunk = candidates[candidates.qid.isin(m_qids[c_idx : c_idx + chunk_queries])]
            if kind == "cosine":  # a bi-encoder encodes each text once: its queries and the documents new here
                new = set(chunk.docid) - seen
                seen |= new
                work = chunk.qid.nunique() + len(new)
            else:  # a cross-encoder reads every pair
                work = len(chunk)
            plan.append((part, chunk, model_name, work))
    unit = "texts encoded" if kind == "cosine" else "pairs"
    task = (progress.add_task(f"teacher scoring ({unit})", total=sum(w for *_, w in plan)) if progress else None)

    def jobs():
        for part, chunk, model_name, work in plan:
            if part.exists():
                if progress:
                    progress.advance(task, work)
                continue
            texts = docs(chunk.docid.unique().tolist())
            pairs = [(queries[q], texts[d].full_text) for q, d in zip(chunk.qid, chunk.docid, strict=True)]
            yield (part, chunk, model_name, work), (kind, model_name, max_length, batch_size, pairs)

    scored_now = 0
    for (part, chunk, model_name, work), logits in engine.map(jobs()):
        out = chunk.assign(teacher=logits.reshape(-1).astype("float32"), scorer=model_name)
        out.to_parquet(part.with_suffix(".tmp"), index=False)
        part.with_suffix(".tmp").replace(part)
        scored_now += len(chunk)
        if progress:
            progress.advance(task, work)
    found = sorted(parts.glob(f"*-c{chunk_queries}-*.parquet"))
    frame = (pd.concat([pd.read_parquet(p) for p in found], ignore_index=True) if found
             else candidates.assign(teacher=pd.Series(dtype="float32"), scorer=pd.Series(dtype="object")))
    if len(frame) != len(candidates):
        raise RuntimeError(f"teacher scored {len(frame)} pairs, expected {len(candidates)}")
    frame.to_parquet(cache.path("scores.parquet"), index=False, compression="zstd")
    return cache.finish(pairs=len(frame), queries=len(qids), scored_now=scored_now, output="scores.parquet",
                        engine=engine.name)


def judged_candidates(scores: pd.DataFrame, qrels: Qrels) -> tuple[Qrels, pd.DataFrame]:
    """The judgments of the queries that have BM25 candidates, and those candidates' rows (judged positives
    BM25 missed, ``source == "judged"``, are left out: BM25 has no rank for them)."""
    cands = scores[scores["source"] == "bm25"] if "source" in scores else scores
    have = set(cands.qid)  # once: a set per judgment made this quadratic (hours for tens of thousands of queries)
    judged = {q: d for q, d in qrels.items() if q in have}
    return judged, cands[cands.qid.isin(judged)]


def label_quality(scores: pd.DataFrame, qrels: Qrels) -> dict[str, Any] | None:
    """How good the teacher's labels are where judgments exist: NDCG@10 of the teacher's order of the BM25
    candidates vs BM25's own order, on the judged queries. With cross-fitting every such query was held out
    from the model that labelled it, so this is an honest estimate of the pipeline's gain. None if no query
    is judged."""
    from .evaluate import metrics

    judged, sub = judged_candidates(scores, qrels)
    if not judged:
        return None
    teacher = {q: dict(zip(g.docid, g.teacher.astype(float), strict=True)) for q, g in sub.groupby("qid")}
    bm25 = {q: dict(zip(g.docid, -g["rank"].astype(float), strict=True)) for q, g in sub.groupby("qid")}
    t, b = metrics(judged, teacher)["ndcg@10"], metrics(judged, bm25)["ndcg@10"]
    spread = float(sub.groupby("qid").teacher.std().mean())
    return {"queries": len(judged), "teacher_ndcg@10": t, "bm25_ndcg@10": b, "mean_within_query_std": spread}


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def fuse(teacher: np.ndarray, bm25: np.ndarray, weight: float, scale: float = 1.0) -> np.ndarray:
    """One query's fused scores: ``scale * ((1-w) z(teacher) + w z(bm25))``, z-scores over the query's list.

    Documents BM25 did not return (``nan``) get the query's lowest BM25 score. ``w = 0`` returns the teacher's
    scores unchanged, so a pure teacher keeps its own logit scale."""
    teacher = np.asarray(teacher, dtype=float)
    if weight == 0:
        return teacher
    bm25 = np.asarray(bm25, dtype=float)
    if np.isnan(bm25).all():
        bm25 = np.zeros_like(bm25)
    bm25 = np.where(np.isnan(bm25), np.nanmin(bm25), bm25)
    return scale * ((1 - weight) * _z(teacher) + weight * _z(bm25))


def label_scale(scores: pd.DataFrame) -> float:
    """The scale fused labels are put on: the teacher's mean within-query standard deviation of logits (so
    margins stay on its logit scale), never below 1."""
    return max(float(scores.groupby("qid").teacher.std().mean()), 1.0)


def fuse_frame(scores: pd.DataFrame, weight: float, scale: float | None = None) -> pd.DataFrame:
    """``scores`` with ``teacher`` replaced by the fused label and the raw logit kept in ``teacher_raw``."""
    if weight == 0:
        return scores.assign(teacher_raw=scores.teacher)
    scale = label_scale(scores) if scale is None else scale
    out = scores.assign(teacher_raw=scores.teacher)
    fused = out.groupby("qid", group_keys=False)[["teacher", "bm25"]].apply(
        lambda g: pd.Series(fuse(g.teacher.to_numpy(), g.bm25.to_numpy(), weight, scale), index=g.index))
    out["teacher"] = fused.astype("float32")
    return out


WEIGHT_GRID = tuple(i / 10 for i in range(11))


def _fused_run(sub: pd.DataFrame, weight: float) -> dict[str, dict[str, float]]:
    return {q: dict(zip(g.docid, fuse(g.teacher.to_numpy(), g.bm25.to_numpy(), weight), strict=True))
            for q, g in sub.groupby("qid")}


def choose_bm25_weight(scores: pd.DataFrame, qrels: Qrels, grid: tuple[float, ...] = WEIGHT_GRID,
                       depth: int | None = None) -> dict[str, Any]:
    """The BM25 weight that gives the best NDCG@10 on the judged training queries.

    With cross-fitting every judged query was labelled by a model that never saw it, so the choice is made on
    held-out labels. z-scores depend on the length of the list they are taken over, so ``depth`` fuses each
    query's top-``depth`` BM25 candidates only: the pipeline's rerank depth, where the weight is applied at
    evaluation. Returns the weight and the NDCG@10 of every weight tried (``None`` weight if no query is
    judged)."""
    from .evaluate import metrics

    judged, sub = judged_candidates(scores, qrels)
    if depth is not None:
        sub = sub[sub["rank"] <= depth]
    if not judged:
        return {"weight": None, "ndcg@10": {}}
    tried = {w: metrics(judged, _fused_run(sub, w))["ndcg@10"] for w in grid}
    best = max(tried, key=tried.get)  # ties: the smallest BM25 weight
    return {"weight": best, "ndcg@10": tried, "queries": len(judged), "depth": depth}


def heldout_fusion_quality(scores: pd.DataFrame, qrels: Qrels, grid: tuple[float, ...] = WEIGHT_GRID,
                           depth: int | None = None) -> dict[str, Any] | None:
    """NDCG@10 of the fused labels where each judged query's weight was chosen on the *other* half of the judged
    queries (two folds by a stable hash): the weight that :func:`choose_bm25_weight` picks on all of them is
    measured on the queries it was picked on, which flatters it."""
    from .evaluate import metrics

    judged, sub = judged_candidates(scores, qrels)
    if depth is not None:
        sub = sub[sub["rank"] <= depth]
    if len(judged) < 4:
        return None
    half = {q: fold_of(f"weight:{q}", 2) for q in judged}
    per_query, weights = [], []
    for h in (0, 1):
        fit_q = {q: d for q, d in judged.items() if half[q] != h}
        test_q = {q: d for q, d in judged.items() if half[q] == h}
        if not fit_q or not test_q:
            return None
        w = choose_bm25_weight(sub[sub.qid.isin(fit_q)], fit_q, grid)["weight"]
        weights.append(w)
        per_query += metrics(test_q, _fused_run(sub[sub.qid.isin(test_q)], w), per_query=True)["ndcg@10"]
    return {"teacher_ndcg@10": float(np.mean(per_query)), "weights": weights, "queries": len(per_query)}
