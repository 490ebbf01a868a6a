"""``esdistill monitor``: does the deployed student still agree with the pipeline it was distilled from?

On a sample of recent queries (a query log file, or an index of logged queries in the cluster) the pipeline —
BM25 reranked by the teacher, or the user's own search request — and the student served by the alias each answer,
and their agreement is measured per query and overall:

* **NDCG@10 against the teacher's labels**: the pipeline's top 10 are the relevant documents, graded by rank
  (10 for its first hit … 1 for its tenth); the student's ranking is scored against them (1.0 = the same top 10
  in the same order).
* **overlap@10**: the share of the pipeline's top 10 that is also in the student's.
* **Kendall's tau** between the two rankings over the union of both top 10s (a document missing from one list is
  ranked after its last hit there).

Beside these (which compare the student's kNN over the whole corpus with the pipeline's top 10), the student
**reranking the pipeline's own candidates** — the head the pipeline reranked, searched by kNN restricted to those
ids — is scored against the pipeline's order (:func:`esdistill.agreement.agreement`: NDCG@10, overlap@10, RBO with
bootstrap 95% intervals), and so is the zero-shot base model when its index is in the cluster (``evaluate`` builds
it): the student must agree with its teacher more than the model it started from.

A distilled student agrees well on the queries it was trained for; when the pipeline changes or the queries drift
the agreement falls. The run goes into the results index (``doc_type`` ``monitor`` and ``monitor_query``), so
the Kibana dashboard shows agreement over time, and the command exits with code 4 below ``monitor.min_ndcg``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .data import load_queries, subset
from .errors import ClusterError, InputError

K = 10


def logged_queries(client, index: str, field: str, timestamp_field: str, since: str | None,
                   limit: int = 100_000) -> dict[str, str]:
    """Distinct query texts from an index of logged queries (``field``), logged within ``since`` (date math).
    Ids are the texts' first document ids; at most ``limit`` documents are read."""
    from .backends import EngineError, backend_for

    out: dict[str, str] = {}
    seen: set[str] = set()
    try:
        hits = backend_for(client).scan(index, [field], since=(timestamp_field, since) if since else None)
        for n, hit in enumerate(hits):
            if n >= limit:
                break
            text = _get(hit.get("_source", {}), field)
            if isinstance(text, str) and text.strip() and text.strip().lower() not in seen:
                seen.add(text.strip().lower())
                out[f"log-{hit['_id']}"] = text.strip()
    except EngineError as e:
        raise ClusterError(f"monitor: cannot read logged queries from {index!r}: {e.message}",
                           hint="check monitor.index, monitor.field and monitor.timestamp_field") from None
    if not out:
        raise InputError(f"monitor: no query text in field {field!r} of index {index!r}"
                         + (f" logged in the last {since}" if since else ""),
                         hint="check monitor.field; widen monitor.since")
    return out


def _get(source: dict, dotted: str) -> Any:
    node: Any = source
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def agreement(teacher: list[str], student: list[str], k: int = K) -> dict[str, float]:
    """One query's agreement of the student's ranking with the teacher's (see the module docstring)."""
    import numpy as np
    from scipy.stats import kendalltau

    t, s = teacher[:k], student[:k]
    gains = {d: float(k - r) for r, d in enumerate(t)}
    dcg = sum(gains.get(d, 0.0) / np.log2(i + 2) for i, d in enumerate(s))
    ideal = sum(g / np.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)))
    union = list(dict.fromkeys(t + s))
    rt = [t.index(d) if d in t else len(t) for d in union]
    rs = [s.index(d) if d in s else len(s) for d in union]
    tau = kendalltau(rt, rs).statistic if len(union) > 1 else 1.0
    return {"ndcg@10": float(dcg / ideal) if ideal else 0.0,
            "overlap@10": len(set(t) & set(s)) / len(t) if t else 0.0,
            "kendall_tau": float(tau) if tau == tau else 0.0}


def monitor_queries(project, source: str | None = None, index: str | None = None) -> dict[str, str]:
    """The sample of recent queries: ``source`` (a file) or ``index`` overrides ``[monitor]``."""
    m = project.cfg.monitor
    if source or (m.queries and not index):
        queries = load_queries(Path(source or m.queries), id_prefix="log-")
    elif index or m.index:
        queries = logged_queries(project.client, index or m.index, m.field, m.timestamp_field, m.since)
    else:
        raise InputError("monitor needs recent queries", hint="--queries FILE, --index NAME, or [monitor] queries / index")
    return {q: queries[q] for q in subset(queries, m.sample, salt="monitor")}


def run_monitor(project, queries: dict[str, str], progress=None) -> dict[str, Any]:
    """Both systems over ``queries``; per-query agreement and the means. Queries the pipeline answers with no
    hit are counted and left out (there is nothing to agree with). Both are what the alias serves: the student of
    the deploy behind it and the pipeline that taught it (``Project.systems(served=True)``), never trained or
    scored here."""
    systems = project.systems(served=True)
    teacher, student = systems["pipeline"](), systems["student"]()
    task = progress.add_task("monitor (pipeline and student)", total=len(queries)) if progress else None
    rows, empty, pipeline_run = [], [], {}
    for qid in sorted(queries):
        hits = teacher.search(queries[qid]).hits
        t = [d for d, _ in hits[:K]]
        s = [d for d, _ in student.search(queries[qid]).hits[:K]]
        if progress:
            progress.advance(task)
        if not t:
            empty.append(qid)
            continue
        pipeline_run[qid] = dict(hits)
        rows.append({"query_id": qid, "query_text": queries[qid], **agreement(t, s)})
    if not rows:
        raise InputError("monitor: the pipeline returned no hit for any sampled query", hint="check the queries")
    mean = {m: sum(r[m] for r in rows) / len(rows) for m in ("ndcg@10", "overlap@10", "kendall_tau")}
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "queries": len(rows),
            "without_pipeline_hits": len(empty), "mean": mean, "per_query": rows,
            "rerank_agreement": rerank_agreement(project, systems, pipeline_run, queries)}


def rerank_agreement(project, systems: dict, pipeline_run: dict[str, dict[str, float]],
                     queries: dict[str, str]) -> dict[str, Any]:
    """The served student, and the zero-shot base when its index exists in the cluster (built by ``evaluate``
    for this corpus), each reranking the pipeline's own candidates, scored against the pipeline's order
    (:meth:`esdistill.pipeline.Project.agreement_with_pipeline`). The base is left out, with the reason recorded,
    when its index is missing: monitor never embeds the corpus."""
    out: dict[str, Any] = {"student": project.agreement_with_pipeline(systems["student"](), pipeline_run, queries)}
    base_index = project.dense_index("zero_shot")
    if project.backend.index_exists(base_index):
        out["zero_shot"] = project.agreement_with_pipeline(project.systems()["zero_shot"](), pipeline_run, queries)
    else:
        out["zero_shot_missing"] = (f"the zero-shot base's index {base_index} is not in the cluster "
                                    "(esdistill evaluate with the zero_shot system builds it)")
    return out


def result_docs(report: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Results-index documents: one ``monitor`` summary and one ``monitor_query`` per query."""
    common = {"@timestamp": report["date"], "system": "student", **meta}

    def fields(r):
        return {"agreement_ndcg_at_10": r["ndcg@10"], "overlap_at_10": r["overlap@10"], "kendall_tau": r["kendall_tau"]}

    rerank = {f"rerank_{m.replace('@', '_at_')}{'' if n == 'student' else '_' + n}": a[m]
              for n, a in (report.get("rerank_agreement") or {}).items() if isinstance(a, dict)
              for m in ("ndcg@10", "overlap@10", "rbo")}
    docs = [{**common, "doc_type": "monitor", "queries": report["queries"], **fields(report["mean"]), **rerank}]
    docs += [{**common, "doc_type": "monitor_query", "query_id": r["query_id"], "query_text": r["query_text"],
              **fields(r)} for r in report["per_query"]]
    return docs


def markdown(report: dict[str, Any], worst: int = 5) -> str:
    m = report["mean"]
    lines = [f"# monitor — {report['date']}", "",
             f"{report['queries']} queries ({report['without_pipeline_hits']} without pipeline hits left out)", "",
             *([f"served: {d['index']} behind alias {d['alias']} (deploy key {d['key'][:10]}, model {d['model']})", ""]
               if (d := report.get("deploy")) else []),
             "| agreement (student vs pipeline) | mean |", "|---|---|",
             f"| NDCG@10 against the pipeline's top 10 | {m['ndcg@10']:.3f} |",
             f"| overlap@10 | {m['overlap@10']:.3f} |", f"| Kendall's tau | {m['kendall_tau']:.3f} |", "",
             *_rerank_lines(report.get("rerank_agreement") or {}),
             f"Least agreement ({worst}):", ""]
    for r in sorted(report["per_query"], key=lambda r: r["ndcg@10"])[:worst]:
        lines.append(f"- {r['ndcg@10']:.3f} — {r['query_text'][:100]}")
    return "\n".join(lines) + "\n"


def _rerank_lines(rerank: dict[str, Any]) -> list[str]:
    from .evaluate import agreement_table

    if not rerank:
        return []
    table = agreement_table({n: a for n, a in rerank.items() if isinstance(a, dict)}).strip("\n")
    return [table.replace("each test query's", "each sampled query's"), "",
            *([f"Zero-shot base not measured: {rerank['zero_shot_missing']}.", ""]
              if "zero_shot_missing" in rerank else [])]


def write_report(report: dict[str, Any], folder: Path, stamp: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"monitor-{stamp}.md", folder / f"monitor-{stamp}.json"
    md.write_text(markdown(report))
    js.write_text(json.dumps(report, indent=2) + "\n")
    return md, js
