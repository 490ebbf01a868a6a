"""Latency at the full profile's rerank depth, on this machine, in one run: the pipeline (BM25 top-100 →
cross-encoder at 256 tokens) vs the deployed student (PyTorch and ONNX int8 query encoders) vs BM25.

    .venv/bin/python bench/latency.py [--queries 40] [--depth 100] [--max-length 256]

One query at a time, client wall time, one untimed warm-up per system; the first ``--queries`` test queries.
Needs a finished bench run (deployed student, fitted teacher). Prints a table; writes
``bench/results/latency-depth<depth>-<hardware>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, BatchSizeOpt, ConfigOpt, DepthOpt, MaxLengthOpt, OutOpt, ProfileOpt,
    WorkdirOpt, hardware, open_project, write_result,
)


def main(
    queries_n: Annotated[int, typer.Option("--queries")] = 40,
    depth: DepthOpt = 100,
    max_length: MaxLengthOpt = 256,
    batch_size: BatchSizeOpt = 32,
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: OutOpt = DEFAULT_OUT,
):
    project = open_project(config, profile, workdir)
    from esdistill.evaluate import pct, run_system
    from esdistill.models import load_cross_encoder
    from esdistill.search import Pipeline

    ds = project.dataset
    qids = sorted(ds.test_qrels)[:queries_n]
    queries = {q: ds.test_queries[q] for q in qids}
    ev = project.cfg.evaluate
    systems = {"bm25": project.systems()["bm25"]()}
    systems["pipeline"] = Pipeline(project.client, project.cfg.bm25_index, project.text_fields,
                                   load_cross_encoder(project.teacher_model(), max_length=max_length), depth,
                                   max(ev.k, depth), batch_size, bm25_weight=project.bm25_weight())
    for backend in ("torch", "onnx-int8"):
        project.cfg.evaluate.query_encoder = backend
        systems[f"student ({backend})"] = project.systems()["student"]()
    rows = []
    for name, system in systems.items():
        r = run_system(system, queries)
        rows.append({"system": name, "p50_ms": pct(r["wall_ms"], 50), "p95_ms": pct(r["wall_ms"], 95),
                     **{f"{k}_p50": pct(v, 50) for k, v in r["extra_ms"].items()}})
    pipe = next(r for r in rows if r["system"] == "pipeline")["p50_ms"]
    print(f"| system | p50 ms | p95 ms | pipeline p50 / this p50 |\n|---|---|---|---|")
    for r in rows:
        r["pipeline_over_this"] = pipe / r["p50_ms"]
        print(f"| {r['system']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['pipeline_over_this']:.0f}× |")
    hw = hardware()
    write_result(out, f"latency-depth{depth}-{hw['label']}", {
        "rows": rows, "queries": len(queries), "depth": depth, "max_length": max_length, "batch_size": batch_size,
        "hardware": hw})


if __name__ == "__main__":
    typer.run(main)
