"""How closely one ranking of a query's candidates follows another's — the measure that shows distillation.

A student has learned its teacher when, given the teacher's own candidates, it puts them in the teacher's order.
Each function takes two score maps over the same candidates (``{docid: score}``: the reference, e.g. the
teacher's or the pipeline's, and the ranking under test) and returns one number per query:

* :func:`ndcg_at` — NDCG@10 of the tested order, graded by the reference order (the reference's top document
  gains 10, its 10th gains 1, the rest 0);
* :func:`overlap_at` — the share of the reference's top 10 in the tested top 10;
* :func:`rbo` — rank-biased overlap (Webber et al. 2010, extrapolated form) with persistence ``p`` = 0.9: the
  agreement of the two whole orders, weighted toward the top.

:func:`agreement` measures all three over many queries, with bootstrap 95% intervals (:func:`bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

DEPTH = 10


def _order(scores: Mapping[str, float]) -> list[str]:
    """Documents by score, best first; ties by document id (a stable, input-order-free order)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def ndcg_at(reference: Mapping[str, float], tested: Mapping[str, float], k: int = DEPTH) -> float:
    """NDCG@k of ``tested``'s order, graded by ``reference``'s: its top document gains k, its k-th 1."""
    ref = _order(reference)[:k]
    gain = {d: k - i for i, d in enumerate(ref)}
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(gain.get(d, 0) * disc[i] for i, d in enumerate(_order(tested)[:k]))
    ideal = sum(g * disc[i] for i, g in enumerate(sorted(gain.values(), reverse=True)))
    return float(dcg / ideal) if ideal else float("nan")


def overlap_at(reference: Mapping[str, float], tested: Mapping[str, float], k: int = DEPTH) -> float:
    """The share of ``reference``'s top k that ``tested`` also ranks in its top k."""
    ref = set(_order(reference)[:k])
    return len(ref & set(_order(tested)[:k])) / len(ref) if ref else float("nan")


def rbo(reference: Mapping[str, float], tested: Mapping[str, float], p: float = 0.9) -> float:
    """Rank-biased overlap of the two whole orders (extrapolated, lists of equal length: 1.0 = identical)."""
    a, b = _order(reference), _order(tested)
    n = min(len(a), len(b))
    if n == 0:
        return float("nan")
    seen_a, seen_b, overlap, total = set(), set(), 0, 0.0
    for depth in range(1, n + 1):
        x, y = a[depth - 1], b[depth - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += (overlap / depth) * p ** depth
    return float((1 - p) / p * total + (overlap / n) * p ** n)


def bootstrap_ci(values, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of the mean of ``values`` (queries resampled with replacement)."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=float)
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def agreement(reference: Mapping[str, Mapping[str, float]], tested: Mapping[str, Mapping[str, float]],
              per_query: bool = False) -> dict:
    """NDCG@10, overlap@10 and RBO of ``tested`` against ``reference`` over the queries both rank (each query's
    documents: those ``reference`` scores; one the tested ranking misses counts as its lowest), the mean of
    each with its bootstrap 95% interval, and how many queries were measured."""
    rows = {}
    for q, ref in reference.items():
        if q not in tested or len(ref) < 2:
            continue
        t = tested[q]
        floor = min(t.values(), default=0.0) - 1.0
        t = {d: t.get(d, floor) for d in ref}
        rows[q] = {"ndcg@10": ndcg_at(ref, t), "overlap@10": overlap_at(ref, t), "rbo": rbo(ref, t)}
    out: dict = {"queries": len(rows)}
    for m in ("ndcg@10", "overlap@10", "rbo"):
        vals = [r[m] for r in rows.values()]
        out[m] = float(np.nanmean(vals)) if vals else float("nan")
        out[f"{m}_ci95"] = list(bootstrap_ci(vals))
    if per_query:
        out["per_query"] = rows
    return out
