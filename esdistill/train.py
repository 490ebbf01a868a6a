"""``train`` stage: distill the teacher's scores into a sentence-transformers bi-encoder (the student).

Examples are built per query from the teacher's ranking of its candidates: the positive is a judged relevant
document where one is known (``use_judged_positives``), else the teacher's top document; ``negatives`` more are
drawn from the teacher's ranks 2..``negative_depth``. Losses (sentence-transformers):

* ``kl`` (default) — :class:`DistillKLDivLoss`: listwise KL between softmax(teacher) and softmax(student) over
  the list. On the quick profile it beat MarginMSE on the same labels (bench/README.md).
* ``margin_mse`` — :class:`MarginMSELoss`: the student's score margins pos-neg_i regress onto the teacher's
  logit margins. Near-constant teacher logits make it push the student's margins toward zero.
* ``judgments`` — no teacher: :class:`MultipleNegativesRankingLoss` on the judged (query, positive, one BM25 hard
  negative) triplets alone. ``scores`` then holds BM25's scores in its ``teacher`` column. This is the control
  that shows what distillation adds.

With ``judged_loss`` (default) the distilling losses are trained next to MNRL on the judged triplets, so the
student learns from judged positives where they exist and from the teacher's soft labels everywhere. With
``judged_above_teacher`` (default) a judged positive's label is raised, where the teacher ranks it below one of
its sampled negatives, to one standard deviation of the query's labels above the best of them: otherwise the
distilling loss would push the student to rank a judged positive below a negative while MNRL pulls it up.

The student scores with ``score_scale * cosine`` so its margins live on the teacher's logit scale. A held-out
dev slice of the training queries (never trained on) is evaluated before and after training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from . import distributed
from .budget import budget_guard, fmt_seconds, list_width, measure_seconds_per_text, plan_training
from .cache import StageCache
from .config import TrainConfig
from .console import attach_progress
from .data import Doc, Qrels, relevant
from .memory import CACHED_COST, cached_distill_loss, plan_step, step_log
from .models import embedding_info, load_bi_encoder, model_fingerprint, st_modules, training_bf16
from .st_compat import st_losses
from .training_args import training_args  # noqa: F401 - re-exported


def split_dev(qids: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, dev): a stable hash split, so the dev slice never changes between runs."""
    def u(q: str) -> float:
        return int(hashlib.sha1(f"dev:{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    dev = sorted(q for q in qids if u(q) < fraction)
    return sorted(set(qids) - set(dev)), dev


def build_examples(
    scores: pd.DataFrame,
    qids: list[str],
    qrels: Qrels,
    cfg: TrainConfig,
    max_positives: int | None = None,
    stats: dict[str, int] | None = None,
) -> list[tuple[str, str, list[str], list[float]]]:
    """(qid, positive, [negatives], [teacher(pos), teacher(neg_1), ...]) per training example: one per judged
    positive (at most ``max_positives`` per query), else one for the teacher's top document.

    A candidate the teacher scores at or above a judged positive is a suspect negative — likely relevant, only
    unjudged. ``cfg.suspect_negatives`` keeps it (``keep``) or leaves it out of that positive's negatives
    (``drop``, falling back to the suspects when nothing else is left); ``stats`` counts them (``suspect``,
    ``dropped``)."""
    rng = random.Random(cfg.seed)
    if stats is not None:
        stats.setdefault("suspect", 0)
        stats.setdefault("dropped", 0)
    out = []
    grouped = {q: g.sort_values("teacher", ascending=False) for q, g in scores[scores.qid.isin(qids)].groupby("qid")}
    for qid in qids:
        g = grouped.get(qid)
        if g is None or len(g) < 2:
            continue
        ranked = list(zip(g.docid, g.teacher, strict=True))
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        chosen = set(relevant(qid, qrels.get(qid, {}), max_positives))
        positives = [(d, s) for d, s in ranked if d in chosen] if cfg.use_judged_positives else []
        if not positives:
            positives = [ranked[0]]
        depth = cfg.negative_depth or len(ranked)
        pool = [(d, s) for d, s in ranked[1:depth] if d not in judged and d != positives[0][0]]
        if not pool:
            continue
        spread = cfg.judged_margin * float(np.std([s for _, s in ranked])) if cfg.judged_above_teacher else 0.0
        for pos, pos_score in positives:
            candidates = pool
            if pos in judged:
                clean = [(d, sc) for d, sc in pool if sc < pos_score]
                if stats is not None:
                    stats["suspect"] += len(pool) - len(clean)
                if cfg.suspect_negatives == "drop" and clean:
                    if stats is not None:
                        stats["dropped"] += len(pool) - len(clean)
                    candidates = clean
            negs = rng.sample(candidates, min(cfg.negatives, len(candidates)))
            while len(negs) < cfg.negatives:  # fixed width: pad by repeating (a short list, rare)
                negs.append(rng.choice(candidates))
            best_neg = max(s for _, s in negs)
            if cfg.judged_above_teacher and pos in judged and pos_score <= best_neg:
                # the judgment wins where the teacher disagrees: the positive's label tops its list by
                # judged_margin spreads (0: tied with the best)
                pos_score = best_neg + spread
            out.append((qid, pos, [d for d, _ in negs], [float(pos_score)] + [float(s) for _, s in negs]))
    return out


def judged_triplets(examples, qrels: Qrels, seed: int) -> list[tuple[str, str, str]]:
    """(qid, judged positive, one hard negative from the teacher's pool) for every judged positive in
    ``examples`` — the supervised half of the student's loss, next to the teacher's soft labels."""
    rng = random.Random(seed + 1)
    out = []
    for qid, pos, negs, _ in examples:
        if qrels.get(qid, {}).get(pos, 0) > 0:
            out.append((qid, pos, rng.choice(negs)))
    return out


def standardize(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with ``teacher`` replaced by per-query z-scores over the query's scored candidates (a query whose
    scores are all equal gets zeros): labels independent of the teacher's own scale — a cross-encoder's logits, an
    ensemble's weighted z-sum, a search request's ``_score`` — and of an ensemble's member order. The scores as
    they were stay in ``teacher_unscaled``."""
    g = scores.groupby("qid").teacher
    sd = g.transform("std", ddof=0).to_numpy(dtype=float)
    z = (scores.teacher.to_numpy(dtype=float) - g.transform("mean").to_numpy(dtype=float))
    z = np.divide(z, sd, out=np.zeros_like(z), where=sd > 0)
    return scores.assign(teacher_unscaled=scores.teacher, teacher=z.astype("float32"))


def base_spread(model, scores: pd.DataFrame, queries: dict[str, str], texts: dict[str, Doc], score_scale: float,
                batch_size: int = 32, cosines: dict[str, dict[str, float]] | None = None) -> float:
    """The mean within-query standard deviation of ``score_scale * cosine`` that ``model`` gives the queries'
    candidates in ``scores``: the spread of the student's own logits before training, so standardized labels
    times it start the listwise loss on the student's scale (not at a temperature mismatch it could only fix by
    flattening every cosine). ``cosines``: ``model``'s cosines of these pairs, measured already
    (:func:`student_scores`; the dev slice's measurement before training), instead of encoding them again."""
    if cosines is None:
        cosines = student_scores(model, scores, queries, texts, batch_size=batch_size)
    sds = []
    for qid, g in scores.groupby("qid"):
        if len(g) < 2:
            continue
        sds.append(float(np.std(score_scale * np.array([cosines[qid][d] for d in g.docid]))))
    if not sds:
        raise ValueError("train.label_scale = 'auto' needs queries with at least two scored candidates")
    return float(np.mean(sds))


def _top_weighted_sample(rng: np.random.Generator, pool: list, n: int) -> list:
    """``n`` of ``pool`` (in the teacher's order, best first) without replacement, the i-th drawn with weight
    1/sqrt(i): every candidate can appear, the teacher's head most often; kept in the teacher's order."""
    if n >= len(pool):
        return list(pool)
    w = 1.0 / np.sqrt(np.arange(1, len(pool) + 1))
    idx = np.sort(rng.choice(len(pool), size=n, replace=False, p=w / w.sum()))
    return [pool[i] for i in idx]


def build_lists(
    scores: pd.DataFrame,
    qids: list[str],
    qrels: Qrels,
    cfg: TrainConfig,
    max_positives: int | None = None,
    epoch: int = 0,
) -> list[tuple[str, str, list[str], list[float]]]:
    """One list per query for one epoch: ``(qid, first document, [the others], [labels in that order])``.

    The first document is a judged positive where the query has one (``cfg.use_judged_positives``; a query with
    several takes them in turn, epoch by epoch), else the teacher's top document. The others are drawn from
    every other scored candidate — the teacher's rank 1 included — weighted toward the teacher's top
    (:func:`_top_weighted_sample`), ``cfg.list_size`` documents in all (``all``: every candidate), drawn anew
    for each ``epoch``. Judged documents other than the list's positive are never drawn (under
    ``max_positives`` the capped ones are still relevant). Lists shorter than the width are padded by repeating
    their own documents. Labels are the ``teacher`` column; with ``cfg.judged_above_teacher`` a judged positive
    the teacher ranks below a drawn document is raised ``cfg.judged_margin`` standard deviations of the query's
    labels above it (0: tied with it)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    grouped = {q: g.sort_values("teacher", ascending=False, kind="stable")
               for q, g in scores[scores.qid.isin(qids)].groupby("qid")}
    width = max((len(g) for g in grouped.values()), default=0) if cfg.list_size == "all" else cfg.list_size
    out = []
    for qid in qids:
        g = grouped.get(qid)
        if g is None or len(g) < 2:
            continue
        ranked = list(zip(g.docid, g.teacher.astype(float), strict=True))
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        chosen = set(relevant(qid, qrels.get(qid, {}), max_positives))
        positives = [(d, s) for d, s in ranked if d in chosen] if cfg.use_judged_positives else []
        first = positives[epoch % len(positives)] if positives else ranked[0]
        pool = [(d, s) for d, s in ranked if d != first[0] and d not in judged]
        if not pool:
            continue
        drawn = _top_weighted_sample(rng, pool, min(width, len(ranked)) - 1)
        while len(drawn) < width - 1:  # fixed width: pad by repeating (a short list, rare)
            drawn.append(drawn[int(rng.integers(len(drawn)))])
        label = first[1]
        best = max(s for _, s in drawn)
        if cfg.judged_above_teacher and first[0] in judged and label <= best:
            label = best + cfg.judged_margin * float(np.std([s for _, s in ranked]))
        out.append((qid, first[0], [d for d, _ in drawn], [float(label)] + [float(s) for _, s in drawn]))
    return out


def judged_rows(scores: pd.DataFrame, qids: list[str], qrels: Qrels, cfg: TrainConfig,
                max_positives: int | None = None, epoch: int = 0) -> list[tuple[str, str, str]]:
    """(qid, judged positive, hard negative) for every judged positive of ``qids`` (at most ``max_positives`` a
    query) among the scored candidates: the supervised half of the student's loss (MNRL). The hard negative is
    drawn, anew each ``epoch``, from the teacher's top ``cfg.negative_depth`` candidates that are not judged
    (with ``suspect_negatives = drop``, from those the teacher scores below the positive where any are)."""
    rng = np.random.default_rng([cfg.seed, epoch, 1])
    out = []
    for qid, g in scores[scores.qid.isin(qids)].groupby("qid", sort=True):
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        chosen = set(relevant(qid, qrels.get(qid, {}), max_positives))
        g = g.sort_values("teacher", ascending=False, kind="stable")
        ranked = list(zip(g.docid, g.teacher.astype(float), strict=True))
        pool = [(d, s) for d, s in ranked[: cfg.negative_depth or len(ranked)] if d not in judged]
        if not pool:
            continue
        for pos, pos_score in ((d, s) for d, s in ranked if d in chosen):
            cands = pool
            if cfg.suspect_negatives == "drop":
                cands = [(d, s) for d, s in pool if s < pos_score] or pool
            out.append((qid, pos, cands[int(rng.integers(len(cands)))][0]))
    return out


def teacher_rows(scores: pd.DataFrame, qids: list[str], qrels: Qrels, cfg: TrainConfig,
                 epoch: int = 0) -> tuple[list[tuple[str, str, str]], dict[str, set[str]]]:
    """(qid, one of the teacher's top ``cfg.teacher_positives`` candidates, hard negative) for every query of
    ``qids`` that has no judged MNRL row (no judged positive, or ``judged_loss`` off), and the documents each such
    query's MNRL never takes as a negative (the teacher's top 2N: likely relevant, so another row's positive among
    them is masked like a judged one).

    The pseudo-positives are the teacher's own choice, so the log-only student (no judgment read) gets MNRL's
    in-batch contrast — the part of the default student's loss that judged pairs give it — from the teacher alone.
    The hard negative is drawn anew each ``epoch`` from the teacher's ranks 2N+1 .. ``cfg.negative_depth`` (all
    where unset), skipping the ranks just below the positives, where an unjudged relevant document is likeliest."""
    n = cfg.teacher_positive_count
    rng = np.random.default_rng([cfg.seed, epoch, 2])
    out, likely = [], {}
    for qid, g in scores[scores.qid.isin(qids)].groupby("qid", sort=True):
        if cfg.judged_loss and any(grade > 0 for grade in qrels.get(qid, {}).values()):
            continue  # its judged pairs are its MNRL rows
        ranked = list(g.sort_values("teacher", ascending=False, kind="stable").docid)
        pool = ranked[2 * n: cfg.negative_depth or len(ranked)]
        if not pool:
            continue
        likely[qid] = set(ranked[: 2 * n])
        out += [(qid, pos, pool[int(rng.integers(len(pool)))]) for pos in ranked[:n]]
    return out, likely


def masked_mnrl(model, scale: float, rows: list[tuple[str, str, str]], qrels: Qrels,
                likely: dict[str, set[str]] | None = None):
    """:class:`MultipleNegativesRankingLoss` whose in-batch negatives skip documents judged relevant to the row's
    query (and, for a query without judgments, those in ``likely``: the teacher's top of :func:`teacher_rows`):
    another row's positive (or hard negative) that the judgments call relevant to this query is a false
    negative, masked out of the softmax. Each row's index into ``rows`` (qid, positive, negative) travels in the
    dataset's ``label`` column; the loss counts what it masked in ``.masked``."""
    import torch

    (MultipleNegativesRankingLoss,) = st_losses("MultipleNegativesRankingLoss")

    relevant_to = {q: {d for d, g in qrels.get(q, {}).items() if g > 0} | (likely or {}).get(q, set())
                   for q in {r[0] for r in rows}}

    class MaskedMNRL(MultipleNegativesRankingLoss):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.masked = 0  #: false negatives masked so far (the train record keeps it)

        def forward(self, sentence_features, labels):
            reps = [self.model(f)["sentence_embedding"] for f in sentence_features]
            anchors, cands = reps[0], torch.cat(reps[1:])
            with torch.autocast(anchors.device.type, enabled=False):  # bf16 training: the logits in float32
                logits = self.similarity_fct(anchors.float(), cands.float()) * self.scale
            idx = labels.long().tolist()
            docs = [rows[i][1] for i in idx] + [rows[i][2] for i in idx]
            mask = torch.tensor([[j != a and d in relevant_to[rows[i][0]] for j, d in enumerate(docs)]
                                 for a, i in enumerate(idx)], dtype=torch.bool, device=logits.device)
            self.masked += int(mask.sum())
            logits = logits.masked_fill(mask, float("-inf"))
            return torch.nn.functional.cross_entropy(logits, torch.arange(len(idx), device=logits.device))

    return MaskedMNRL(model, scale=scale)


def to_hf_dataset(examples, queries: dict[str, str], texts: dict[str, Doc], loss: str, scale: float = 1.0):
    """The distilling rows as a dataset: query, positive, negative_0.., and the labels times ``scale`` (for
    ``margin_mse`` the positive's margins over each other document)."""
    from datasets import Dataset as HFDataset

    n = len(examples[0][2])
    cols: dict[str, list] = {"query": [], "positive": [], **{f"negative_{i}": [] for i in range(n)}, "label": []}
    for qid, pos, negs, t in examples:
        cols["query"].append(queries[qid])
        cols["positive"].append(texts[pos].full_text)
        for i, d in enumerate(negs):
            cols[f"negative_{i}"].append(texts[d].full_text)
        t = [scale * x for x in t]
        cols["label"].append([t[0] - x for x in t[1:]] if loss == "margin_mse" else t)
    return HFDataset.from_dict(cols)


class ScaledCosine:
    """``scale * cos(a, b)`` pairwise: the student's score on the teacher's logit scale."""

    def __init__(self, scale: float):
        self.scale = scale
        self.__name__ = f"scaled_cosine_{scale:g}"

    def __call__(self, a, b):
        import torch.nn.functional as F

        return self.scale * (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def student_scores(model, scores: pd.DataFrame, queries: dict[str, str], texts: dict[str, Doc],
                   batch_size: int = 32,
                   doc_vectors: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """``{qid: {docid: cosine}}``: ``model`` scoring each query's candidates in ``scores`` (its own reranking of
    the teacher's candidates). A bi-encoder's vector of a text does not depend on the query beside it, so each
    query and each document is encoded once, however many queries share the document: NFCorpus's dev slice of its
    whole training split is 6,400 pairs over fewer than 3,000 documents, and priced pair by pair its measurements
    took 8 of the quick budget's 15 minutes from training. ``doc_vectors``: the documents' unit vectors by this
    model, encoded already (:class:`DevSlice`), instead of encoding them here."""
    qids, docids = list(dict.fromkeys(scores.qid)), list(dict.fromkeys(scores.docid))
    q = model.encode([queries[x] for x in qids], batch_size=batch_size, normalize_embeddings=True,
                     show_progress_bar=False)
    if doc_vectors is not None:
        d = np.stack([doc_vectors[x] for x in docids])
    else:
        d = model.encode([texts[x].full_text for x in docids], batch_size=batch_size, normalize_embeddings=True,
                         show_progress_bar=False)
    q_row, d_row = {x: i for i, x in enumerate(qids)}, {x: i for i, x in enumerate(docids)}
    qi, di = scores.qid.map(q_row).to_numpy(), scores.docid.map(d_row).to_numpy()
    sims = np.einsum("ij,ij->i", q[qi], d[di]).astype(float)
    out: dict[str, dict[str, float]] = {}
    for qid, docid, sim in zip(scores.qid, scores.docid, sims.tolist(), strict=True):
        out.setdefault(qid, {})[docid] = sim
    return out


def teacher_agreement(model, scores: pd.DataFrame, queries: dict[str, str], texts: dict[str, Doc],
                      cosines: dict[str, dict[str, float]] | None = None) -> dict:
    """How closely the student's ranking of each query's candidates follows the teacher's (``cosines``: the
    student's scores of these pairs, :func:`student_scores`, computed already).

    Returns the rank agreement of :func:`esdistill.agreement.agreement` (NDCG@10 graded by the teacher's order,
    overlap@10, rank-biased overlap, each with a bootstrap 95% interval), the mean per-query Spearman
    correlation and the pairwise ordering accuracy (pairs whose teacher scores differ)."""
    from scipy.stats import spearmanr

    from .agreement import agreement

    student = cosines if cosines is not None else student_scores(model, scores, queries, texts)
    teacher = {q: dict(zip(g.docid, g.teacher.astype(float), strict=True)) for q, g in scores.groupby("qid")}
    rhos, acc = [], []
    for qid, g in scores.groupby("qid"):
        if len(g) < 3:
            continue
        s = np.array([student[qid][d] for d in g.docid])
        t = g.teacher.to_numpy(dtype=float)
        rho = spearmanr(s, t).statistic
        if not np.isnan(rho):
            rhos.append(rho)
        diff_t = np.sign(t[:, None] - t[None, :])
        diff_s = np.sign(s[:, None] - s[None, :])
        mask = diff_t != 0
        acc.append(float((diff_t[mask] == diff_s[mask]).mean()))
    return {**agreement(teacher, student), "spearman": float(np.mean(rhos)) if rhos else float("nan"),
            "pair_accuracy": float(np.mean(acc)) if acc else float("nan"), "queries": len(acc)}


def agreement_summary(before: dict, after: dict, cfg: TrainConfig, stage: str = "train") -> str | None:
    """One console sentence on whether training moved the student toward its teacher on the dev slice: the
    agreement's NDCG@10 against the teacher's order before and after, with the after's 95% interval; where it
    fell and the judgments overruled the teacher in training (``cfg.judged_above_teacher`` with judged
    positives heading the lists), the sentence names that setting, which is what costs the agreement (on
    SciFact: 0.813 -> 0.783 with it, 0.813 -> 0.822 without; bench/README.md). None when either side is
    missing (no dev slice, or the judgments-only control, which has no teacher). ``stage`` heads the line."""
    b, a = before.get("ndcg@10"), after.get("ndcg@10")
    if b is None or a is None or np.isnan(b) or np.isnan(a):
        return None
    lo, hi = (after.get("ndcg@10_ci95") or [float("nan")] * 2)[:2]
    n = after.get("queries")
    line = (f"{stage}: agreement with the teacher on the dev slice's candidates (NDCG@10 against its order"
            f"{f', {n} queries' if n else ''}) {b:.3f} → {a:.3f} [{lo:.3f}, {hi:.3f}]")
    if a >= b:
        return line
    if cfg.use_judgments and cfg.use_judged_positives and cfg.judged_above_teacher:
        raised = "to the teacher's best" if cfg.judged_margin == 0 else "above the teacher's order"
        return (f"{line}: the student follows its teacher less after training — the judged positives were raised "
                f"{raised} (train.judged_above_teacher = true); false keeps the teacher's order "
                "(more agreement, often less relevance: bench/README.md)")
    return f"{line}: the student follows its teacher less after training"


class DevSlice:
    """The dev slice's measurements of a student from one encoding of its documents: the IR metrics against the
    judgments (``ir``, :func:`dev_evaluator`'s, or None) and the agreement with the teacher on the candidates in
    ``scores`` (:func:`teacher_agreement`; None: not measured). Both read the same candidates: measured apart, each
    encoded them — twice the dev slice's cost before and after training and between passes (SciFact's quick dev
    slice: the plan priced the two measurements at 236 s of the 900 on a 2-core AMD EPYC, 114 since)."""

    def __init__(self, ir, scores: pd.DataFrame | None, queries: dict[str, str], texts: dict[str, Doc]):
        self.ir, self.scores, self.queries, self.texts = ir, scores, queries, texts
        ids = list(ir.corpus_ids) if ir is not None else []
        if scores is not None:
            seen = set(ids)
            ids += [d for d in dict.fromkeys(scores.docid) if d not in seen]
        self.docids = ids
        self.cosines: dict[str, dict[str, float]] | None = None  #: the last measurement's student cosines

    @property
    def encodings(self) -> int:
        """The texts one measurement encodes: each document once, the queries once a metric."""
        queries = (len(self.ir.queries) if self.ir is not None else 0) + \
            (self.scores.qid.nunique() if self.scores is not None else 0)
        return len(self.docids) + queries

    def measure(self, model) -> tuple[dict, dict]:
        """``(ir metrics, agreement)`` of ``model`` (each ``{}`` when not measured)."""
        if not self.docids:
            return {}, {}
        emb = model.encode([self.texts[d].full_text for d in self.docids], batch_size=32, normalize_embeddings=True,
                           convert_to_tensor=True, show_progress_bar=False)
        ir = self.ir(model, corpus_embeddings=emb[: len(self.ir.corpus_ids)]) if self.ir is not None else {}
        agree = {}
        if self.scores is not None:
            vectors = dict(zip(self.docids, emb.float().cpu().numpy(), strict=True))
            self.cosines = student_scores(model, self.scores, self.queries, self.texts, doc_vectors=vectors)
            agree = teacher_agreement(model, self.scores, self.queries, self.texts, cosines=self.cosines)
        return ir, agree

    def evaluator(self):
        """A sentence-transformers evaluator of both, so the trainer measures them between passes (the IR
        evaluator's ``dev_*`` metrics and ``agreement_*``)."""
        try:
            from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
        except ImportError:  # sentence-transformers < 5.7
            from sentence_transformers.evaluation import SentenceEvaluator
        dev = self

        class DevSliceEvaluator(SentenceEvaluator):
            def __init__(self):
                super().__init__()
                self.primary_metric = "agreement_ndcg@10" if dev.ir is None else None

            def __call__(self, model, output_path=None, epoch=-1, steps=-1):
                ir, agree = dev.measure(model)
                if dev.ir is not None:
                    self.primary_metric = dev.ir.primary_metric
                return {**ir, **{f"agreement_{k}": float(v) for k, v in agree.items() if isinstance(v, (int, float))}}

        return DevSliceEvaluator()


def dev_evaluator(dev: list[str], queries, qrels: Qrels, scores: pd.DataFrame, texts: dict[str, Doc]):
    """IR evaluator on the dev slice over the documents its queries' candidates cover.

    Relevance: the judgments where known, else the teacher's top document (agreement with the pipeline).
    """
    try:
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers.evaluation import InformationRetrievalEvaluator

    sub = scores[scores.qid.isin(dev)]
    if sub.empty:
        return None
    relevant = {}
    for qid, g in sub.groupby("qid"):
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0 and d in texts}
        relevant[qid] = judged or {g.sort_values("teacher", ascending=False).docid.iloc[0]}
    corpus = {d: texts[d].full_text for d in sub.docid.unique()}
    for docs in relevant.values():
        corpus.update({d: texts[d].full_text for d in docs})
    return InformationRetrievalEvaluator(
        queries={q: queries[q] for q in relevant}, corpus=corpus, relevant_docs=relevant, name="dev",
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10],
        show_progress_bar=False,
    )


def _silent(_msg: str) -> None:
    """The log of a process other than rank 0 (data-parallel training): rank 0 speaks for all."""


def _examples_for(cfg: TrainConfig, scores: pd.DataFrame, train_q: list[str], qrels: Qrels,
                  max_positives: int | None, passes: int, suspects: dict[str, int]):
    """The distilling rows of every pass and the judged (MNRL) rows: per-query lists drawn anew for each pass, or
    the per-positive examples of before (the same each pass). The judged rows are MNRL's: next to the teacher
    (``judged_loss``) or alone (``loss = judgments``, the control); with ``teacher_positives`` they include the
    teacher's rows (:func:`teacher_rows`), whose likely-relevant documents per query come third."""
    supervised = cfg.judged_loss or cfg.loss == "judgments"
    if cfg.lists == "per_positive":
        examples = build_examples(scores, train_q, qrels, cfg, max_positives, suspects)
        examples_by_pass = [examples] * passes
        judged = [judged_triplets(examples, qrels, cfg.seed) if supervised else []] * passes
    else:
        examples_by_pass = [build_lists(scores, train_q, qrels, cfg, max_positives, epoch=e) for e in range(passes)]
        judged = ([judged_rows(scores, train_q, qrels, cfg, max_positives, epoch=e) for e in range(passes)]
                  if supervised else [[] for _ in range(passes)])
    likely: dict[str, set[str]] = {}  # the queries whose MNRL rows take the teacher's top as their positives
    if cfg.teacher_positive_count and cfg.loss != "judgments":  # the teacher's own positives, where no judgment is
        for e, rows in enumerate(judged):
            taught, likely = teacher_rows(scores, train_q, qrels, cfg, epoch=e)
            judged[e] = rows + taught
    return examples_by_pass, judged, likely


def train_student(
    cfg: TrainConfig,
    scores: pd.DataFrame,
    queries: dict[str, str],
    qrels: Qrels,
    docs: Callable[[list[str]], dict[str, Doc]],
    cache: StageCache,
    log: Callable[[str], None] = print,
    max_positives: int | None = None,
    progress=None,
    profile: str | None = None,
    record_extra: dict[str, Any] | None = None,
    member: str | None = None,
) -> dict[str, Any]:
    """Train the student; the model lands in ``<cache>/model``. Checkpoints let a killed run resume.
    ``max_positives`` caps the judged positives a query contributes (``data.max_positives_per_query``);
    ``progress`` (rich) shows the training steps. Before training, :func:`esdistill.budget.plan_training` estimates
    its time on this machine and samples the rows down to ``cfg.budget_minutes`` (``profile`` names whose budget it
    is in the log); ``record_extra`` goes into the train record as it is.

    Labels (``cfg.label_scale``): the teacher's scores become per-query z-scores (:func:`standardize`) times the
    base model's own logit spread (``auto``, :func:`base_spread`) or a given number; ``raw`` keeps them as they
    are. Each of ``ceil(epochs)`` passes draws its own lists (``cfg.lists = per_query``); the dev slice's
    agreement with the teacher is measured before training and after every pass. With ``cfg.use_judgments``
    off, no judgment is read: the training queries are an unjudged log.

    ``cfg.embedding_passes`` > 0: the student copies ``member`` (the teacher's bi-encoder member) — its embeddings
    of the training queries and their scored candidates (:class:`esdistill.embedding_distill.Copy`), within
    ``cfg.embedding_share`` of the budget — before the ranking losses (``embedding_copy = "before"``,
    :func:`~esdistill.embedding_distill.copy_member`) or as a third dataset in their batches (``"mixed"``, the
    squared distance as its loss); the ranking losses get the budget that is left."""
    if cache.done:
        return {**cache.info(), "cached": True}
    import math

    from datasets import Dataset as HFDataset
    from datasets import concatenate_datasets
    from sentence_transformers import SentenceTransformerTrainer
    DistillKLDivLoss, MarginMSELoss, MultipleNegativesRankingLoss = st_losses(
        "DistillKLDivLoss", "MarginMSELoss", "MultipleNegativesRankingLoss")
    (Normalize,) = st_modules("Normalize")

    judgments_only = cfg.loss == "judgments"
    if not cfg.use_judgments:
        if judgments_only:
            raise ValueError("train.loss = 'judgments' needs the judgments: it cannot run with use_judgments = false")
        qrels = {}
        cfg = cfg.model_copy(update={"use_judged_positives": False, "judged_loss": False,
                                     "judged_above_teacher": False})
    qids = sorted(scores.qid.unique())
    if judgments_only:
        qids = [q for q in qids if any(g > 0 for g in qrels.get(q, {}).values())]
    train_q, dev_q = split_dev(qids, cfg.dev_fraction)
    if cfg.label_scale != "raw":
        scores = standardize(scores)
    passes = max(1, math.ceil(cfg.epochs)) if cfg.lists == "per_query" else 1
    suspects: dict[str, int] = {}
    examples_by_pass, judged_by_pass, likely = _examples_for(cfg, scores, train_q, qrels, max_positives, passes,
                                                             suspects)
    examples = examples_by_pass[0]
    if not examples:
        raise ValueError("no training examples: every query needs at least two scored candidates")
    judged = judged_by_pass[0]
    needed = {d for ex in examples_by_pass for _, p, negs, _ in ex for d in [p, *negs]}
    needed |= {d for rows in judged_by_pass for _, p, n in rows for d in (p, n)}
    needed |= set(scores[scores.qid.isin(dev_q)].docid) | {d for q in dev_q for d in qrels.get(q, {})}
    spread_q = dev_q or train_q[:50]  # the queries whose candidates measure the base model's spread (label_scale)
    needed |= set(scores[scores.qid.isin(spread_q)].docid)
    copy_docs = []
    if cfg.embedding_passes and not judgments_only:
        if member is None:
            raise ValueError("train.embedding_passes copies the teacher's bi-encoder member: the teacher has none "
                             "(add a bi_encoder:<model> member to teacher.ensemble, or set train.embedding_passes = 0)")
        copy_docs = sorted(set(scores[scores.qid.isin(train_q)].docid))
        needed |= set(copy_docs)
    texts = docs(sorted(needed))

    model = load_bi_encoder(cfg.base_model, max_length=cfg.max_length)
    _, normalized = embedding_info(model)
    if not normalized:
        model.append(Normalize())  # unit vectors: dot_product in Elasticsearch == the cosine trained here
    main = distributed.is_main()  # under torchrun only rank 0 measures and writes
    dev_scores = scores[scores.qid.isin(dev_q)]
    ir_eval = dev_evaluator(dev_q, queries, qrels, scores, texts) if cfg.use_judgments else None
    dev = DevSlice(ir_eval, dev_scores if len(dev_q) and not judgments_only else None, queries, texts)
    evaluator = dev.evaluator() if dev.docids else None
    dev_encodings = dev.encodings  # what one measurement of the dev slice encodes (the plan prices it)
    before, agree_before = dev.measure(model) if main else ({}, {})
    if cfg.label_scale == "auto" and not judgments_only:
        # the base model's cosines of the dev slice's candidates were just measured (one process: under torchrun
        # every rank computes the scale the same way, from its own encoding)
        known = dev.cosines if dev_q and distributed.world_size() == 1 else None
        scale = base_spread(model, scores[scores.qid.isin(spread_q)], queries, texts, cfg.score_scale,
                            cosines=known)
    else:
        scale = 1.0 if isinstance(cfg.label_scale, str) else float(cfg.label_scale)  # MNRL alone reads no label

    ckpt = cache.path("checkpoints")
    found = sorted(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if ckpt.exists() else []
    for partial in [p for p in found if not (p / "trainer_state.json").exists()]:
        if distributed.is_main():
            shutil.rmtree(partial)  # killed while it was being written: trainer_state.json comes last
        found.remove(partial)
    resume = bool(found)
    copied, budget_cfg, mixed, spent = None, cfg, None, None  # spent: the copy's seconds, out of the budget
    minutes = cfg.budget_minutes if isinstance(cfg.budget_minutes, (int, float)) else None
    # under torchrun every rank would measure its own speed and cut the copy's rows differently: all of them there
    share = cfg.embedding_share * minutes * 60 if minutes and distributed.world_size() == 1 else None
    copy_args = (member, [queries[q] for q in train_q], [texts[d].full_text for d in copy_docs]) if copy_docs else ()
    if copy_docs and cfg.embedding_copy == "mixed":  # the copy's rows join the ranking losses' batches
        from .embedding_distill import Copy

        kept = json.loads(cache.path("copy.json").read_text()) if resume and cache.path("copy.json").exists() else {}
        mixed = Copy(model, *copy_args, cfg, cache.path("member"), share, rows=kept.get("rows"))
        if main and not resume:  # what a resumed run rebuilds the same rows from
            cache.path("copy.json").write_text(json.dumps(
                {"rows": len(mixed.rows), "prepare_seconds": round(mixed.prepare_seconds, 1),
                 "estimate_seconds": mixed.estimate_seconds}, indent=2))
        if mixed.estimate_seconds is not None:
            spent = mixed.prepare_seconds + mixed.estimate_seconds
    elif copy_docs and not resume:  # a resumed run's checkpoint holds the copy already
        from .embedding_distill import copy_member

        copied = copy_member(model, *copy_args, cfg, cache.path("member"), share, log if main else _silent, progress)
        if main:
            cache.path("copy.json").write_text(json.dumps(copied, indent=2))
        spent = copied["seconds"]
    elif copy_docs and cache.path("copy.json").exists():
        copied = json.loads(cache.path("copy.json").read_text())
    if minutes and spent is not None:
        budget_cfg = cfg.model_copy(update={"budget_minutes": max(minutes - spent / 60, 0.5)})
    width = list_width(examples_by_pass, distill=not judgments_only)
    bf16 = training_bf16(cfg.precision)
    step = plan_step(cfg, model, width, judged=bool(judged), half_precision=bf16,
                     processes=distributed.world_size())
    if not resume and main:  # a plan kept by a run killed before its first checkpoint holds nothing trained
        cache.path("budget.json").unlink(missing_ok=True)
    plan = None
    if distributed.world_size() == 1:  # one process: under torchrun every rank would measure its own speed
        plan = plan_training(model, budget_cfg, examples_by_pass, judged_by_pass, queries, texts, profile,
                             log if main else _silent, distill=not judgments_only, saved=cache.path("budget.json"),
                             eval_texts=2 * dev_encodings,
                             pass_eval_texts=dev_encodings * (passes if cfg.epochs > 1 else 0),
                             distill_cost=CACHED_COST if step.mini_batch else 1.0,
                             measure=functools.partial(measure_seconds_per_text, bf16=bf16))
        examples_by_pass, judged_by_pass = plan.examples, plan.judged
        judged = judged_by_pass[0]
    data = concatenate_datasets([to_hf_dataset(ex, queries, texts, cfg.loss, scale) for ex in examples_by_pass])
    sim = ScaledCosine(cfg.score_scale)
    loss = (MarginMSELoss(model, similarity_fct=sim) if cfg.loss == "margin_mse"
            else DistillKLDivLoss(model, similarity_fct=sim, temperature=cfg.temperature))
    if step.mini_batch:
        loss = cached_distill_loss(loss, step.mini_batch)
    train_data, train_loss, mnrl = data, loss, None
    if judged:
        rows = [r for rs in judged_by_pass for r in rs]
        judged_data = HFDataset.from_dict({
            "anchor": [queries[q] for q, _, _ in rows], "positive": [texts[p].full_text for _, p, _ in rows],
            "negative": [texts[n].full_text for _, _, n in rows],
            **({"label": list(range(len(rows)))} if cfg.mask_judged_negatives else {})})
        mnrl = (masked_mnrl(model, cfg.score_scale, rows, qrels, likely) if cfg.mask_judged_negatives
                else MultipleNegativesRankingLoss(model, scale=cfg.score_scale))
        if judgments_only:
            train_data, train_loss = judged_data, mnrl
        else:
            train_data = {"distill": data, "judged": judged_data}
            train_loss = {"distill": loss, "judged": mnrl}
    elif judgments_only:
        raise ValueError("loss 'judgments' needs judged training queries (qrels) with a BM25 candidate each")
    if mixed is not None:
        from .embedding_distill import distance_loss

        if not isinstance(train_data, dict):
            train_data, train_loss = {"distill": train_data}, {"distill": train_loss}
        train_data["copy"], train_loss["copy"] = mixed.dataset(), distance_loss(model)
        if main:
            log(mixed.describe("in the ranking losses' batches"))
    between = cfg.epochs > 1 and (plan is None or plan.record.get("evaluate_between_passes", True))

    parts = train_data.values() if isinstance(train_data, dict) else [train_data]
    batches = sum(-(-len(d) // cfg.batch_size) for d in parts)  # what one process takes over every pass
    per_pass = max(1, batches // passes)
    epochs = cfg.epochs / passes  # the passes are in the data: one trainer epoch holds them all
    args = training_args(cfg.model_copy(update={"epochs": epochs}), ckpt, mnrl=bool(judged),
                         batches_per_epoch=batches,
                         eval_steps=per_pass if evaluator is not None and between else None)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_data, loss=train_loss,
                                         evaluator=evaluator if between else None)
    estimate = plan.record["estimate_seconds"] if plan else None
    if estimate is not None and mixed is not None and mixed.estimate_seconds is not None:
        estimate += mixed.estimate_seconds
    guard = None
    if plan and plan.record.get("minutes"):  # the budget is a limit: the schedule runs out with it, then the steps
        steps_share = plan.record["minutes"] * 60 - plan.record["evaluation_seconds"]
        if mixed is not None and mixed.estimate_seconds is not None:
            steps_share += mixed.estimate_seconds  # the copy's rows train in the same steps
        guard = budget_guard(steps_share)
        trainer.add_callback(guard)
    attach_progress(trainer, progress, "train (judgments only)" if judgments_only else "train", estimate=estimate,
                    steps=guard.expected_steps if guard is not None else None)
    if step.mini_batch and main:
        log(step_log(step, cfg, width))
    if suspects.get("suspect") and not judgments_only and main:
        log(f"train: {suspects['suspect']} candidates scored by the teacher at or above a judged positive (likely "
            f"relevant, unjudged): {suspects['dropped']} left out of that positive's negatives "
            f"(train.suspect_negatives = {cfg.suspect_negatives!r})")
    skipped = len(set(train_q) - {q for q, *_ in examples})
    if skipped and main:
        log(f"train: {skipped} training queries give no example (fewer than two scored candidates)")
    if not main:
        log = _silent
    taught = sum(q in likely for q, _, _ in judged)
    shape = (f"{len(examples)} lists of {len(examples[0][2]) + 1} (drawn anew in each of {passes} passes)"
             if cfg.lists == "per_query" else f"{len(examples)} examples")
    log(f"train: {shape} from {len(train_q) - skipped} queries, dev {len(dev_q)} queries, "
        + (f"MNRL on {len(judged)} judged pairs only (no teacher)" if judgments_only else
           f"loss {cfg.loss}, labels "
           + ("raw" if cfg.label_scale == "raw" else f"z-scored x {scale:.2f}"
              + (" (the base model's spread)" if cfg.label_scale == "auto" else ""))
           + (f" + MNRL on {len(judged) - taught} judged pairs" if len(judged) > taught else "")
           + (f" + MNRL on {taught} pairs of the teacher's top {cfg.teacher_positive_count} (train.teacher_positives)"
              if taught else "")
           + ("" if cfg.use_judgments else "; judgments unused (an unjudged query log)"))
        + ("; bf16 mixed precision" if bf16 else "")
        + (" (resuming from checkpoint)" if resume else ""))
    trainer.train(resume_from_checkpoint=str(found[-1]) if resume else None)
    if not distributed.is_main():  # data parallel (torchrun): rank 0 writes the model and the record
        distributed.barrier()
        return {"rank": distributed.rank(), "steps": trainer.state.global_step}

    if guard is not None:
        plan.record.update(steps_seconds=guard.seconds_run, stopped_at_step=guard.stopped_at,
                           paced_from_step=guard.paced_from)
        if guard.stopped_at is not None:
            r = plan.record
            priced = (r.get("planned_seconds", r["estimate_seconds"]) - r["evaluation_seconds"]) / r["steps_allowed"]
            ran = guard.seconds_run / guard.stopped_at
            log(f"train: the budget's time was spent after {guard.stopped_at} of {r['steps_allowed']} steps planned "
                f"({fmt_seconds(guard.seconds_run)}; {ran:.1f} s a step where the first batches priced "
                f"{priced:.1f}): stopped there"
                + (f", the learning rate's decay paced by the clock from step {guard.paced_from} so that it ran out "
                   "with the time" if guard.paced_from is not None else "")
                + " — train.budget_minutes is a limit, not an estimate")
    if mixed is not None:  # its steps are its batches in the mix; its seconds the member's encoding and the fit
        copied = {**mixed.record(model, -(-len(mixed.rows) // cfg.batch_size), mixed.prepare_seconds),
                  "mixed": True, "estimate_seconds": mixed.estimate_seconds}
    after, agree_after = dev.measure(model)
    by_pass = [{k.removeprefix("eval_"): v for k, v in h.items() if "agreement_" in k or "ndcg@10" in k}
               | {"epoch": h.get("epoch"), "step": h.get("step")}
               for h in trainer.state.log_history if any("agreement_" in k for k in h)]
    out = cache.path("model")
    model.save(str(out))
    dims, _ = embedding_info(model)
    meta = {"base_model": cfg.base_model, "loss": cfg.loss, "max_length": cfg.max_length, "dims": dims,
            "normalized": True, "teacher_key": cache.inputs.get("teacher_key"), "train_key": cache.key}
    (out / "esdistill.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    used = {q for q, *_ in examples}
    record = cache.finish(
        model=str(out), weights=model_fingerprint(str(out)), examples=len(examples),
        judged_pairs=len(judged) - taught, teacher_pairs=taught,
        train_queries=len(train_q),
        dev_queries=len(dev_q),
        queries_without_examples=len(set(train_q) - used),
        resumed_from=found[-1].name if found else None, steps=trainer.state.global_step,
        dev_before={k: float(v) for k, v in before.items()}, dev_after={k: float(v) for k, v in after.items()},
        agreement_before=agree_before, agreement_after=agree_after, agreement_by_pass=by_pass,
        suspect_negatives=suspects, lists=cfg.lists, passes=passes, label_scale=scale,
        masked_false_negatives=getattr(mnrl, "masked", 0), use_judgments=cfg.use_judgments,
        processes=distributed.world_size(), budget=plan.record if plan else None, copied_member=copied,
        memory=step.record, precision="bf16" if bf16 else "fp32",
        **(record_extra or {}),
    )
    distributed.barrier()  # the others wait until the model and the record are written
    return record
