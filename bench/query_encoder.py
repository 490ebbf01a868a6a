"""The student's query encoder on a CPU: PyTorch vs ONNX Runtime (fp32) vs ONNX Runtime int8.

    .venv/bin/python bench/query_encoder.py [--profile quick] [--workdir .esdistill-bench]

Needs a finished bench run (deployed student). Every test query is encoded one at a time and searched by kNN on
the same deployed index (documents stay embedded by PyTorch); NDCG@10 must stay within 0.005 of PyTorch's for
a faster encoder to be worth using. Prints a table; writes ``bench/results/query-encoder-<dataset>-<profile>-
<hardware>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ConfigOpt, OutOpt, ProfileOpt, WorkdirOpt, hardware, open_project,
    write_result,
)


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: OutOpt = DEFAULT_OUT,
):
    project = open_project(config, profile, workdir)
    import numpy as np

    from esdistill.evaluate import metrics, pct, run_system

    ds = project.dataset
    queries = {q: ds.test_queries[q] for q in ds.test_qrels}
    rows = []
    for backend in ("torch", "onnx", "onnx-int8"):
        project.cfg.evaluate.query_encoder = backend
        system = project.systems()["student"]()
        res = run_system(system, queries)
        m = metrics(ds.test_qrels, res["run"])
        enc = res["extra_ms"]["encode_ms"]
        rows.append({"encoder": backend, "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"],
                     "encode_p50_ms": pct(enc, 50), "encode_p95_ms": pct(enc, 95),
                     "wall_p50_ms": pct(res["wall_ms"], 50), "encode_mean_ms": float(np.mean(enc))})
    base = rows[0]
    print("| query encoder | NDCG@10 | Δ vs torch | Recall@100 | encode p50 / p95 ms | speed-up (p50) | "
          "search wall p50 ms |\n|---|---|---|---|---|---|---|")
    for r in rows:
        r["delta_ndcg@10"] = r["ndcg@10"] - base["ndcg@10"]
        r["speedup_p50"] = base["encode_p50_ms"] / r["encode_p50_ms"]
        r["within_0.005"] = abs(r["delta_ndcg@10"]) <= 0.005
        print(f"| {r['encoder']} | {r['ndcg@10']:.4f} | {r['delta_ndcg@10']:+.4f} | {r['recall@100']:.3f} | "
              f"{r['encode_p50_ms']:.1f} / {r['encode_p95_ms']:.1f} | {r['speedup_p50']:.2f}× | "
              f"{r['wall_p50_ms']:.1f} |")
    hw = hardware()
    write_result(out, f"query-encoder-{project.cfg.data.name}-{project.cfg.profile}-{hw['label']}",
                 {"rows": rows, "queries": len(queries), "hardware": hw})


if __name__ == "__main__":
    typer.run(main)
