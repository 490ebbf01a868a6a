"""``evaluate`` stage: every system on the TEST queries, side by side — quality, latency, share of gain.

Metrics are computed by ranx (NDCG@10, Recall@100, MRR@10; trec_eval definitions) with paired t-tests against
BM25. Latency is measured one query at a time, after one untimed warm-up query per system: the client's wall
time (encoding, reranking and the HTTP round trip included) and Elasticsearch's ``took``, p50 and p95.
The report is a Markdown table plus a JSON file with every number, per-query metrics included.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .data import Qrels
from .jsonutil import dumps
from .redact import redact

METRICS = ["ndcg@10", "recall@100", "mrr@10"]
#: every system README's headline table compares (bench/run.py; ``--systems headline`` on run, demo, evaluate):
#: the log-only student and the judgments-only control are trained on the way
HEADLINE_SYSTEMS = ["bm25", "zero_shot", "pipeline", "student", "log_only", "judgments", "hybrid"]
LABELS = {"bm25": "BM25", "pipeline": "pipeline (BM25 → teacher)", "student": "student (kNN)",
          "zero_shot": "zero-shot base bi-encoder", "judgments": "student on judgments only (kNN)",
          "log_only": "student from the log alone, no judgments (kNN)",
          "hybrid": "hybrid (student + BM25)", "neural": "student, query encoded in the cluster (neural)",
          "hybrid_cluster": "hybrid in the cluster (student + BM25, normalized)"}


def run_system(system, queries: dict[str, str], progress=None) -> dict[str, Any]:
    """Answer every query with ``system``: the run (qid -> {docid: score}) and per-query latencies."""
    qids = sorted(queries)
    if qids:
        system.search(queries[qids[0]])  # warm-up: model load, JIT, caches
    run: dict[str, dict[str, float]] = {}
    wall, took, extra = [], [], {}
    task = progress.add_task(f"evaluate: {system.name}", total=len(qids)) if progress else None
    for qid in qids:
        res = system.search(queries[qid])
        run[qid] = {d: s for d, s in res.hits}
        wall.append(res.wall_ms)
        took.append(res.took_ms)
        for k, v in res.extra.items():
            extra.setdefault(k, []).append(v)
        if progress:
            progress.advance(task)
    return {"run": run, "wall_ms": wall, "took_ms": took, "extra_ms": extra}


def latency_sample(qids, n: int) -> list[str]:
    """A stable sample of ``n`` query ids, the same on every run and machine: the first ``n`` by a hash of the id
    (sorted)."""
    return sorted(sorted(qids, key=lambda q: hashlib.blake2b(str(q).encode(), digest_size=8).digest())[:n])


def run_system_sampled(system, fast, queries: dict[str, str], timed: list[str], progress=None) -> dict[str, Any]:
    """Like :func:`run_system`, for a system with a faster twin that ranks the same (``fast``: the pipeline with
    its bi-encoder members' document vectors kept across queries): ``system`` itself answers the ``timed`` queries
    one at a time, as :func:`run_system` times them, then ``fast`` answers every query (the run). Two passes, so
    that each progress bar's estimate is of like work. The latency lists stay aligned to the sorted queries, NaN
    where a query was not timed. ``check`` says how the timed answers compare with the run's: queries whose top 10
    differ, and the largest score difference of a document both ranked (float noise of encoding in other batches;
    a real difference means the twin is not the same)."""
    qids = sorted(queries)
    live: dict[str, Any] = {}
    if timed:
        system.search(queries[sorted(timed)[0]])  # warm-up: model load, JIT, caches
        task = progress.add_task(f"evaluate: {system.name}, timed on {len(timed)} queries", total=len(timed)) \
            if progress else None
        for qid in sorted(timed):
            live[qid] = system.search(queries[qid])
            if progress:
                progress.advance(task)
    run: dict[str, dict[str, float]] = {}
    wall, took, extra = [], [], {}
    differ, worst = [], 0.0
    task = progress.add_task(f"evaluate: {system.name}, every query", total=len(qids)) if progress else None
    for qid in qids:
        res = fast.search(queries[qid])
        run[qid] = {d: s for d, s in res.hits}
        mine = live.get(qid)
        wall.append(mine.wall_ms if mine else float("nan"))
        took.append(mine.took_ms if mine else float("nan"))
        for k in (mine.extra if mine else res.extra):
            extra.setdefault(k, []).append(mine.extra[k] if mine else float("nan"))
        if mine:
            scores = dict(mine.hits)
            worst = max([worst] + [abs(scores[d] - s) for d, s in run[qid].items() if d in scores])
            if [d for d, _ in mine.hits[:10]] != [d for d, _ in res.hits[:10]]:
                differ.append(qid)
        if progress:
            progress.advance(task)
    return {"run": run, "wall_ms": wall, "took_ms": took, "extra_ms": extra,
            "check": {"timed": len(timed), "top10_differ": differ, "max_score_diff": worst}}


def metrics(qrels: Qrels, run: dict[str, dict[str, float]], per_query: bool = False) -> dict[str, Any]:
    """ranx metrics of ``run`` (per query in sorted query-id order, or their means); queries without any hit
    count as zero (ranx would drop them). Where ranx cannot be imported (a training machine without its
    dependencies: ``esdistill run --offline``), :func:`metrics_numpy` computes the same definitions."""
    try:
        from ranx import Qrels as RQ
        from ranx import Run as RR
        from ranx import evaluate as r_eval
    except ImportError:
        return metrics_numpy(qrels, run, per_query)
    full = {q: (run.get(q) or {"__none__": 0.0}) for q in qrels}
    out = r_eval(RQ(qrels), RR(full), METRICS, return_mean=not per_query)
    if per_query:
        return {m: [float(x) for x in v] for m, v in out.items()}
    return {m: float(v) for m, v in out.items()}


def metrics_numpy(qrels: Qrels, run: dict[str, dict[str, float]], per_query: bool = False) -> dict[str, Any]:
    """NDCG@10 (Järvelin: linear gains), Recall@100 and MRR@10 as ranx (and trec_eval) define them, relevance
    grade >= 1, without ranx. Written by hand only so that the offline stages run where ranx's dependencies
    are missing; ``tests/test_evaluate.py`` checks it equals ranx."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for q in sorted(qrels):
        rel = {d: g for d, g in qrels[q].items() if g >= 1}
        ranked = [d for d, _ in sorted((run.get(q) or {}).items(), key=lambda x: -x[1])]
        gains = [rel.get(d, 0) for d in ranked[:10]]
        dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal)) or 1.0
        out["ndcg@10"].append(float(dcg / idcg))
        out["recall@100"].append(sum(d in rel for d in ranked[:100]) / len(rel) if rel else 0.0)
        first = next((i for i, d in enumerate(ranked[:10]) if d in rel), None)
        out["mrr@10"].append(1.0 / (first + 1) if first is not None else 0.0)
    if per_query:
        return out
    return {m: float(np.mean(v)) if v else 0.0 for m, v in out.items()}


def significance(qrels: Qrels, runs: dict[str, dict], baseline: str) -> dict[str, dict[str, float]]:
    """Paired Student t-test p-values of every system against ``baseline`` (ranx ``compare``)."""
    from ranx import Qrels as RQ
    from ranx import Run as RR
    from ranx import compare

    if baseline not in runs or len(runs) < 2 or len(qrels) < 2:
        return {}
    rr = [RR({q: (runs[n].get(q) or {"__none__": 0.0}) for q in qrels}, name=n) for n in runs]
    rep = compare(RQ(qrels), rr, METRICS, stat_test="student").to_dict()
    return {n: {m: float(p) for m, p in rep[n]["comparisons"].get(baseline, {}).items()} for n in runs if n != baseline}


def measured(values: list) -> list[float]:
    """The latencies that were measured: a sampled run's untimed queries are NaN (``null`` read back)."""
    return [float(v) for v in values if v is not None and v == v]


def mean_ms(values: list) -> float:
    values = measured(values)
    return float(np.mean(values)) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    values = measured(values)
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(qrels: Qrels, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every number of the report: per-system metrics, latency percentiles, share of the pipeline's gain."""
    runs = {n: r["run"] for n, r in results.items()}
    systems = {}
    for name, r in results.items():
        per_query = metrics(qrels, r["run"], per_query=True)  # the means are derived, not evaluated again
        systems[name] = {
            **{m: float(np.mean(v)) for m, v in per_query.items()},
            "latency_ms": {"p50": pct(r["wall_ms"], 50), "p95": pct(r["wall_ms"], 95), "mean": mean_ms(r["wall_ms"]),
                           "timed": len(measured(r["wall_ms"]))},
            "took_ms": {"p50": pct(r["took_ms"], 50), "p95": pct(r["took_ms"], 95)},
            "extra_ms": {k: {"p50": pct(v, 50), "p95": pct(v, 95)} for k, v in r["extra_ms"].items()},
            "per_query": {"qids": sorted(qrels), **per_query},
        }
    if "bm25" in systems and "pipeline" in systems:
        base, top = systems["bm25"]["ndcg@10"], systems["pipeline"]["ndcg@10"]
        for s in systems.values():
            # a share of a loss is meaningless: undefined unless the pipeline beats BM25
            s["share_of_gain"] = (s["ndcg@10"] - base) / (top - base) if top > base else float("nan")
    out = {"systems": systems, "p_vs_bm25": significance(qrels, runs, "bm25"),
           "p_vs_pipeline": significance(qrels, runs, "pipeline"), "queries": len(qrels)}
    if members := results.get("pipeline", {}).get("members"):
        out["pipeline_members"] = pipeline_members(qrels, members, runs["pipeline"])
    return out


def pipeline_members(qrels: Qrels, members: dict[str, dict[str, dict[str, float]]],
                     pipeline: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each member of an ensemble pipeline ranking the pipeline's BM25 head alone: NDCG@10, MRR@10 and the paired
    t-test against the pipeline (a member named like a system gets its own key, so nothing is overwritten)."""
    named = {f"member:{m}": run for m, run in members.items()}
    pv = significance(qrels, {"pipeline": pipeline, **named}, "pipeline")
    out = {}
    for name, run in named.items():
        per_query = metrics(qrels, run, per_query=True)
        out[name.removeprefix("member:")] = {"ndcg@10": float(np.mean(per_query["ndcg@10"])),
                                             "mrr@10": float(np.mean(per_query["mrr@10"])),
                                             "p_vs_pipeline": p_value(pv, name)}
    return out


def members_note(summary: dict[str, Any]) -> str | None:
    """One sentence on the pipeline's members alone beside the student, or None without them."""
    members = summary.get("pipeline_members")
    if not members:
        return None
    parts = ", ".join(f"{m} {v['ndcg@10']:.3f}" for m, v in members.items())
    note = f"The pipeline's members alone, each ranking the pipeline's BM25 head: {parts} (NDCG@10)."
    student = summary["systems"].get("student")
    models = {m: v["ndcg@10"] for m, v in members.items() if m != "bm25"}
    if student and models and "bm25" in members and "hybrid" in summary["systems"]:
        best = max(models, key=models.get)
        note += (f" The hybrid fuses the student ({student['ndcg@10']:.3f}) with BM25 as the pipeline fuses {best} "
                 f"({models[best]:.3f}) with it: it passes the pipeline about when the student passes that member.")
    return note


def p_value(pvalues: dict[str, dict[str, float | None]], system: str, metric: str = "ndcg@10") -> float:
    """A system's p-value from :func:`significance`'s output, or from a report read back (where an undefined one,
    two identical runs, is ``null``); 1.0 when there is none: no difference shown."""
    p = pvalues.get(system, {}).get(metric)
    return 1.0 if p is None or p != p else float(p)


def share_of_gain_reportable(summary: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether each system's share of the pipeline's NDCG@10 gain over BM25 means anything, and if not, the
    sentence that says why: undefined when the pipeline does not beat BM25, noise when its gain is not
    significant (paired t-test p >= 0.05)."""
    sysd = summary["systems"]
    if "pipeline" not in sysd or "bm25" not in sysd:
        return True, None
    gain = sysd["pipeline"]["ndcg@10"] - sysd["bm25"]["ndcg@10"]
    if gain <= 0:
        return False, "Share of gain: undefined — the pipeline does not beat BM25 here (its teacher is too weak)."
    p_gain = p_value(summary.get("p_vs_bm25", {}), "pipeline")
    if p_gain >= 0.05:
        return False, (f"Share of gain n/a: the pipeline's NDCG@10 gain over BM25 ({gain:+.3f}, p = {p_gain:.2f}) "
                       "is not significant, so a share of it would be noise.")
    return True, None


def markdown(summary: dict[str, Any], title: str = "") -> str:
    """The side-by-side table: quality, latency, share of the pipeline's NDCG@10 gain over BM25."""
    lines = [f"## {title}" if title else "", "",
             "| system | NDCG@10 | Recall@100 | MRR@10 | share of pipeline gain | p50 ms | p95 ms | ES took p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    pv = summary.get("p_vs_bm25", {})
    reportable, why_not = share_of_gain_reportable(summary)
    for name, s in summary["systems"].items():
        star = "†" if p_value(pv, name) < 0.05 else ""
        share = s.get("share_of_gain")
        share_s = ("—" if share is None or name in ("bm25",) or np.isnan(share) else
                   f"{share * 100:.0f}%" if reportable else "n/a")
        lines.append(
            f"| {LABELS.get(name, name)} | {s['ndcg@10']:.3f}{star} | {s['recall@100']:.3f} | {s['mrr@10']:.3f} | "
            f"{share_s} | {s['latency_ms']['p50']:.1f} | {s['latency_ms']['p95']:.1f} | {s['took_ms']['p50']:.1f} |"
        )
    if why_not:
        lines += ["", why_not]
    if note := members_note(summary):
        lines += ["", note]
    lines += ["", f"{summary['queries']} test queries. † NDCG@10 differs from BM25 at p < 0.05 (paired t-test, ranx). "
              "Latency: one query at a time, client wall time incl. query encoding / reranking."]
    sampled = [f"{LABELS.get(n, n)} on {s['latency_ms']['timed']}" for n, s in summary["systems"].items()
               if s["latency_ms"].get("timed", summary["queries"]) < summary["queries"]]
    if sampled:
        lines.append(f"Latency timed on a stable sample of the queries: {', '.join(sampled)} (its quality is over "
                     "every query, with each document encoded once: evaluate.pipeline_latency_queries).")
    return "\n".join(lines).strip() + "\n"


def plot(summary: dict[str, Any], path: Path, title: str, labels: dict[str, str] | None = None) -> Path:
    """Quality against latency, one point per system: NDCG@10 over p50 latency (log scale), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or LABELS
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary["systems"].items():
        ax.scatter(s["latency_ms"]["p50"], s["ndcg@10"], s=60)
        ax.annotate(labels.get(name, name), (s["latency_ms"]["p50"], s["ndcg@10"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    lats = [s["latency_ms"]["p50"] for s in summary["systems"].values()]
    ax.set_xlim(min(lats) / 1.5, max(lats) * 6)  # room for the labels of the slowest system
    ax.set_xlabel("p50 latency per query, ms (log scale)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def agreement_table(agreement: dict[str, dict[str, Any]]) -> str:
    """Markdown: each bi-encoder reranking the pipeline's own candidates, against the pipeline's order."""
    if not agreement:
        return ""
    def cell(a: dict, m: str) -> str:
        lo, hi = a.get(f"{m}_ci95") or (None, None)
        return f"{a[m]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
    rows = "".join(f"| {LABELS.get(n, n)} | {cell(a, 'ndcg@10')} | {cell(a, 'overlap@10')} | {cell(a, 'rbo')} |\n"
                   for n, a in agreement.items())
    return ("\nAgreement with the pipeline on its own candidates (each test query's reranked BM25 head; 95% "
            "bootstrap intervals):\n\n| system | NDCG@10 vs the pipeline's order | overlap@10 | RBO |\n|---|---|---|---|\n"
            + rows)


def stage_table(seconds: dict[str, float], estimates: dict[str, float]) -> str:
    """The stages' wall times, each next to the time estimated for it before it was spent (from its first batches:
    esdistill/budget.py, esdistill/console.py; "—" where none was made: a cached or short stage)."""
    return "\n| stage | estimate (s) | wall time (s) |\n|---|---|---|\n" + "".join(
        f"| {k} | {f'{estimates[k]:.1f}' if k in estimates else '—'} | {v:.1f} |\n" for k, v in seconds.items())


def write_report(summary: dict[str, Any], out_dir: Path, title: str, extra: dict[str, Any]) -> tuple[Path, Path]:
    """``report.md`` (the table, the plot, notes, stage times), ``report.json`` (every number) and ``plot.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    js = out_dir / "report.json"
    body = markdown(summary, title)
    plot(summary, out_dir / "plot.png", f"{title}: quality vs latency")
    body += "\n![NDCG@10 against p50 latency, per system](plot.png)\n"
    body += agreement_table(summary.get("agreement_with_pipeline") or {})
    for name, note in (extra.get("measured") or {}).items():
        body += f"\n{LABELS.get(name, name)}: {note}\n"
    dep = extra.get("deploy") or {}
    if dep.get("truncated_docs_total"):
        body += (f"\n{dep['truncated_docs_total']} of {dep['docs']} documents are longer than the student's "
                 f"{dep['max_tokens']} tokens and were embedded truncated.\n")
    if extra.get("stage_seconds"):
        body += stage_table(extra["stage_seconds"], extra.get("stage_estimates") or {})
    md.write_text(body)
    # strict JSON (an undefined number is null, not NaN); credentials in any URL redacted
    js.write_text(dumps(redact({**extra, **summary}), indent=2))
    return md, js
