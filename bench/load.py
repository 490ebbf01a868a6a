"""Concurrent load on the deployed query path: the student's query encoders side by side, against BM25.

    .venv/bin/python bench/load.py [--config examples/scifact.toml] [--workers 8] [--seconds 30]
                                   [--encoders torch,onnx,onnx-int8]

Needs a finished `esdistill run` (deployed student). ``workers`` threads send the test queries round-robin for
``seconds`` to each system in turn, on the served alias:

* ``student torch, one at a time`` — the query path before batching: every worker encodes its own query with
  PyTorch (``evaluate.encode_batch = 1``);
* ``student torch, batched`` — concurrent queries share batched PyTorch passes
  (:class:`esdistill.query_encoder.BatchingEncoder`);
* ``student onnx`` / ``onnx-int8, side by side`` — the exported ONNX graph, concurrent queries each on one
  intra-op thread (:class:`esdistill.query_encoder.ExportedEncoder`; ``onnx-int8`` is the served default);
* ``hybrid`` with the served default (``auto``), and ``BM25``.

The target (issue 13): the student's best throughput at least half of BM25's, p99 under 100 ms, no errors.
Prints a table; writes ``bench/results/load-<hardware>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware_label, open_project,
    write_result,
)


def main(config: ConfigOpt = DEFAULT_CONFIG, profile: ProfileOpt = "quick", workdir: ConfigWorkdirOpt = None,
         workers: Annotated[int, typer.Option(help="concurrent client threads")] = 8,
         seconds: Annotated[float, typer.Option(help="load per system")] = 30.0,
         encoders: Annotated[str, typer.Option(help="student query encoders to compare, batched")]
         = "torch,onnx,onnx-int8",
         out: OutOpt = DEFAULT_OUT) -> None:
    from esdistill.query_encoder import encoder_threads, resolve_query_encoder
    from esdistill.search import run_load

    project = open_project(config, profile, workdir)
    ev = project.cfg.evaluate
    queries = list(project.eval_queries().values())

    def measure(system: str, label: str, encoder: str = "auto", batch: int = 32) -> dict:
        ev.query_encoder, ev.encode_batch = encoder, batch
        engine = project.systems(served=True)[system]()
        if system != "bm25":
            for q in queries[:20]:  # load the model, warm the encoder and the cluster's caches
                engine.search(q)
        model = getattr(getattr(engine, "student", engine), "model", None)
        before = dict(getattr(model, "stats", {}))
        row = run_load(engine, queries, workers, seconds)
        stats = getattr(model, "stats", None)
        if stats:
            batches = stats["batches"] - before.get("batches", 0)
            row["mean_batch"] = (stats["queries"] - before.get("queries", 0)) / batches if batches else None
            row["largest_batch"] = stats["largest"]
            model.close()
        row.update(label=label, encoder=resolve_query_encoder(encoder) if system != "bm25" else None,
                   encode_batch=batch if system != "bm25" else None)
        print(f"  {label}: {row['qps']:.1f} QPS, p99 {row['p99_ms']:.1f} ms, {row['errors']} errors", flush=True)
        return row

    rows = [measure("student", "student torch, one at a time", "torch", 1)]
    rows += [measure("student", f"student {e}" + (", batched" if e == "torch" else ", side by side"), e)
             for e in encoders.split(",") if e]
    rows += [measure("hybrid", "hybrid (served default)"), measure("bm25", "BM25")]

    print(f"\n| system | QPS | p50 ms | p99 ms | errors | mean batch |\n|---|---|---|---|---|---|")
    for r in rows:
        mb = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "—"
        print(f"| {r['label']} | {r['qps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {mb} |")
    bm25 = rows[-1]
    students = [r for r in rows if r["system"] == "student" and r["errors"] == 0 and r["p99_ms"] < 100]
    best = max(students, key=lambda r: r["qps"], default=None)
    target = {"bm25_qps": bm25["qps"], "best_student": best and best["label"],
              "ratio": best and best["qps"] / bm25["qps"], "met": bool(best and best["qps"] >= bm25["qps"] / 2)}
    print(f"\ntarget (student ≥ ½ BM25's QPS, p99 < 100 ms, 0 errors): "
          + (f"{'met' if target['met'] else 'not met'} — {best['label']} at {target['ratio']:.2f}× BM25's QPS"
             if best else "not met — no student row had p99 < 100 ms and no errors"))
    write_result(out, f"load-{hardware_label()}", {
        "rows": rows, "target": target, "workers": workers, "seconds": seconds,
        "encoder_threads": encoder_threads(ev.encoder_threads)})


if __name__ == "__main__":
    typer.run(main)
