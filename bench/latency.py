"""Latency at the full profile's rerank depth, on this machine, in one run: the pipeline (BM25 top-100 →
cross-encoder at 256 tokens) vs the deployed student (PyTorch and ONNX int8 query encoders) vs BM25.

    .venv/bin/python bench/latency.py [--queries 40] [--depth 100] [--max-length 256]

One query at a time, client wall time, one untimed warm-up per system; the first ``--queries`` test queries.
Needs a finished bench run (deployed student, fitted teacher). Prints a table; writes
``bench/results/latency-depth<depth>-<hardware>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def main(
    queries_n: Annotated[int, typer.Option("--queries")] = 40,
    depth: Annotated[int, typer.Option()] = 100,
    max_length: Annotated[int, typer.Option()] = 256,
    batch_size: Annotated[int, typer.Option()] = 32,
    profile: Annotated[str, typer.Option()] = "quick",
    config: Annotated[Path, typer.Option()] = ROOT / "examples" / "scifact.toml",
    workdir: Annotated[Path, typer.Option()] = ROOT / ".esdistill-bench",
    out: Annotated[Path, typer.Option()] = ROOT / "bench" / "results",
):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from esdistill import load_config
    from esdistill.evaluate import pct, run_system
    from esdistill.models import load_cross_encoder
    from esdistill.pipeline import Project
    from esdistill.search import Pipeline
    from run import hardware

    project = Project(load_config(config, profile, workdir=str(workdir.resolve())))
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"latency-depth{depth}-{hw['label']}.json"
    path.write_text(json.dumps({"rows": rows, "queries": len(queries), "depth": depth, "max_length": max_length,
                                "batch_size": batch_size, "hardware": hw,
                                "command": " ".join(["bench/latency.py", *sys.argv[1:]])}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    typer.run(main)
