"""What the pipeline fetches from Elasticsearch before it reranks: the old request (one search for BM25's top
``max(k, depth)`` with every hit's text) against the current one (one ``_msearch``: the top ``depth`` with their
texts — what is reranked — and the top ``k`` ids alone). Reranking is the same in both and is left out.

    .venv/bin/python bench/fetch.py [--k 100] [--depths 30,100] [--rounds 3]

One query at a time, the test queries, client wall time, rounds alternated (old, new, old, …) after a warm-up.
Prints a table; writes ``bench/results/pipeline-fetch-<hardware>.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ConfigOpt, OutOpt, ProfileOpt, RoundsOpt, WorkdirOpt, hardware,
    open_project, write_result,
)


def main(k: int = 100, depths: Annotated[str, typer.Option()] = "30,100", rounds: RoundsOpt = 3,
         profile: ProfileOpt = "quick", config: ConfigOpt = DEFAULT_CONFIG, workdir: WorkdirOpt = DEFAULT_WORKDIR,
         out: OutOpt = DEFAULT_OUT):
    project = open_project(config, profile, workdir)
    from esdistill.candidates import bm25_body
    from esdistill.evaluate import pct
    from esdistill.search import Pipeline

    c, index, fields = project.client, project.cfg.bm25_index, project.text_fields
    queries = list(project.eval_queries().values())

    def old(text: str, depth: int) -> None:
        body = bm25_body(text, fields, max(k, depth))
        body["_source"] = fields
        c.search(index=index, **body)

    rows = []
    for depth in [int(d) for d in depths.split(",")]:
        pipe = Pipeline(c, index, fields, None, depth, k)
        forms = {"old: one search, top-k with texts": lambda t, d=depth: old(t, d),
                 "new: _msearch, texts of the reranked head only": lambda t: pipe.retrieve(t)}
        lat: dict[str, list[float]] = {f: [] for f in forms}
        for f, fn in forms.items():
            fn(queries[0])  # warm-up
        for _ in range(rounds):
            for f, fn in forms.items():
                for text in queries:
                    t0 = time.perf_counter()
                    fn(text)
                    lat[f].append((time.perf_counter() - t0) * 1e3)
        for f, v in lat.items():
            rows.append({"depth": depth, "k": k, "request": f, "p50_ms": pct(v, 50), "p95_ms": pct(v, 95),
                         "queries": len(v)})
    print("| depth | k | request | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r['k']} | {r['request']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    write_result(out, f"pipeline-fetch-{hardware()['label']}", {"rows": rows, "index": index})


if __name__ == "__main__":
    typer.run(main)
