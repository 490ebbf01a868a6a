"""The loop on OpenSearch next to Elasticsearch, and the student served inside OpenSearch (issue 23, item 5).

    ESDISTILL_ES_ENGINE=opensearch bash scripts/demo.sh          # the demo on a local OpenSearch node, first
    ESDISTILL_ES_ENGINE=opensearch .venv/bin/python bench/opensearch.py --workdir .esdistill

On the OpenSearch run's cache (its trained student, the same cache keys as the demo's), against the node:

1. ``esdistill export --upload --start``: the student into ml-commons (TorchScript, ``_predict`` checked against
   sentence-transformers), wall time;
2. the corpus embedded twice into new dense versions (another HNSW ``m``, so neither is the served one): by this
   process (``deploy.embed_in = "client"``, the Python path) and by the cluster (``embed_in = "cluster"``:
   ``_reindex`` through the ``text_embedding`` ingest pipeline), wall time of each; the alias back on the run's
   own deploy and both versions deleted after;
3. every system over the test queries, ``neural`` (the query encoded in the cluster) and ``hybrid_cluster`` (the
   cluster's ``hybrid`` query, min-max normalised) next to ``student`` (encoded here, kNN) and ``hybrid``
   (client-side fusion): NDCG@10, Recall@100, p50/p95 latency, paired t-tests;
4. the Elasticsearch rows of the same systems from ``--es-result`` (the headline run on the test build, whose BM25
   has no stemming) beside them.

Prints a table; writes ``bench/results/opensearch-<dataset>-<profile>-<hardware>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware, open_project,
    write_result,
)

SYSTEMS = ["bm25", "pipeline", "student", "hybrid", "neural", "hybrid_cluster"]


def main(profile: ProfileOpt = "quick", config: ConfigOpt = DEFAULT_CONFIG, workdir: ConfigWorkdirOpt = None,
         out: OutOpt = DEFAULT_OUT,
         es_result: Annotated[Path, typer.Option(help="the Elasticsearch run to set beside (bench/run.py's file)")]
         = DEFAULT_OUT / "scifact-quick-2cpu.json",
         embed: Annotated[bool, typer.Option(help="measure client vs in-cluster embedding of the corpus")] = True):
    os.environ.setdefault("ESDISTILL_ES_ENGINE", "opensearch")
    project = open_project(config, profile, workdir)
    if project.backend.name != "opensearch":
        raise SystemExit(f"{project.cfg.cluster.url or 'the cluster'} is {project.backend.name}: run this against "
                         "OpenSearch (ESDISTILL_ES_ENGINE=opensearch, esdistill cluster start --engine opensearch)")
    from esdistill.deploy import point_alias
    from esdistill.evaluate import p_value

    cfg, backend = project.cfg, project.backend
    project.train()  # cached: the run's student (refused here when the run did not train one)
    live = backend.alias_targets(cfg.dense_alias)
    record: dict = {"dataset": cfg.data.name, "profile": cfg.profile, "served_before": live,
                    "opensearch": backend.client.info()["version"]}

    t0 = time.perf_counter()
    up = project.export(upload=True, start=True, replace=True)
    record["upload"] = {"seconds": time.perf_counter() - t0,
                        **{k: up[k] for k in ("model_id", "predict_min_cosine") if k in up}}

    if embed:  # the same corpus embedded by this process and by the cluster, into versions nobody serves
        keep, m = cfg.deploy.keep_versions, cfg.deploy.m
        cfg.deploy.keep_versions = max(keep, 6)
        try:
            for who, hnsw_m in (("client", m + 2), ("cluster", m + 4)):
                cfg.deploy.embed_in, cfg.deploy.m = who, hnsw_m
                t0 = time.perf_counter()
                info = project.deploy()
                record[f"embed_{who}"] = {"seconds": time.perf_counter() - t0, "docs": info["docs"],
                                          "embedded_now": info.get("embedded_now"), "index": info["index"]}
                print(f"corpus embedded by the {who}: {record[f'embed_{who}']['seconds']:.0f} s "
                      f"({info.get('embedded_now')} documents embedded now)", flush=True)
        finally:
            cfg.deploy.embed_in, cfg.deploy.m, cfg.deploy.keep_versions = "client", m, keep
            point_alias(project.client, cfg.dense_alias, live[0])  # the run's own deploy serves again
            for who in ("client", "cluster"):  # the measured versions go: a rerun measures anew
                if f"embed_{who}" in record:
                    backend.delete_index(record[f"embed_{who}"]["index"], missing_ok=True)

    cfg.evaluate.systems = SYSTEMS
    summary = project.evaluate()["summary"]
    systems = summary["systems"]
    es = json.loads(es_result.read_text())["summary"]["systems"] if es_result.exists() else {}
    rows = []
    for name in SYSTEMS:
        s = systems[name]
        rows.append({"engine": "opensearch", "system": name, "ndcg@10": s["ndcg@10"], "recall@100": s["recall@100"],
                     "p50_ms": s["latency_ms"]["p50"], "p95_ms": s["latency_ms"]["p95"],
                     "p_vs_bm25": p_value(summary["p_vs_bm25"], name) if name != "bm25" else None,
                     "p_vs_pipeline": p_value(summary["p_vs_pipeline"], name) if name != "pipeline" else None})
        if name in es:
            e = es[name]
            rows.append({"engine": "elasticsearch (test build)", "system": name, "ndcg@10": e["ndcg@10"],
                         "recall@100": e["recall@100"], "p50_ms": e["latency_ms"]["p50"],
                         "p95_ms": e["latency_ms"]["p95"]})
    pairs = {"neural vs student": ("neural", "student"), "hybrid_cluster vs hybrid": ("hybrid_cluster", "hybrid")}
    from esdistill.evaluate import significance

    qrels = {q: project.dataset.test_qrels[q] for q in summary["systems"]["bm25"]["per_query"]["qids"]}
    runs = {n: json.loads(project._system_cache(n).path("run.json").read_text())["run"] for n in SYSTEMS}
    record["paired"] = {label: {"ndcg@10": (systems[a]["ndcg@10"], systems[b]["ndcg@10"]),
                                "p": significance(qrels, {a: runs[a], b: runs[b]}, b)[a]["ndcg@10"]}
                        for label, (a, b) in pairs.items()}
    print("| engine | system | NDCG@10 | Recall@100 | p50 / p95 ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['system']} | {r['ndcg@10']:.3f} | {r['recall@100']:.3f} | "
              f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} |")
    for label, v in record["paired"].items():
        print(f"{label}: {v['ndcg@10'][0]:.3f} vs {v['ndcg@10'][1]:.3f}, p = {v['p']:.3g}")
    print(f"upload to ml-commons: {record['upload']['seconds']:.0f} s" + "".join(
        f"; corpus embedded by the {who}: {record[f'embed_{who}']['seconds']:.0f} s"
        for who in ("client", "cluster") if f"embed_{who}" in record))
    write_result(out, f"opensearch-{cfg.data.name}-{cfg.profile}-{hardware()['label']}",
                 {**record, "rows": rows, "es_result": str(es_result), "measured": summary.get("measured"),
                  "stage_seconds": project.stage_seconds})


if __name__ == "__main__":
    typer.run(main)
