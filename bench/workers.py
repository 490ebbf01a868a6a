"""Teacher scoring and corpus embedding with 1 and 2 workers: this process against Ray actor pools.

    .venv/bin/python bench/workers.py [--pairs 1536] [--docs 1536] [--chunk 128] [--max-length 128]

The same jobs the ``teacher`` and ``embed`` stages send to their engine (``esdistill/engine.py``: chunks of
``--chunk`` pairs or documents, MiniLM cross-encoder / bi-encoder, batch 32), run by
* ``local`` — this process, every core to PyTorch (the default engine);
* ``ray ×1`` — one Ray actor with all the cores;
* ``ray ×2`` — two actors, the cores split between them (``engine.workers = 2``, ``cpus_per_worker = 1`` here).
Each configuration is warmed with one chunk (models loaded) before it is timed. Pairs are SciFact train claims
× random abstracts (cost depends on the token count, capped at ``--max-length``). Prints a table; writes
``bench/results/workers-<hardware>.json``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_OUT, ROOT, DocsOpt, MaxLengthOpt, OutOpt, PairsOpt, hardware, prepare_env, write_result,
)


def main(pairs_n: PairsOpt = 1536,
         docs_n: DocsOpt = 1536,
         chunk: Annotated[int, typer.Option(help="pairs / documents per job (the cache's part size)")] = 128,
         max_length: MaxLengthOpt = 128,
         out: OutOpt = DEFAULT_OUT) -> None:
    prepare_env()
    from esdistill.data import load_corpus, load_qrels, load_queries, resolve_beir
    from esdistill.engine import LocalEngine, RayEngine
    from esdistill.query_encoder import usable_cores

    root = resolve_beir(ROOT / "datasets" / "scifact.tar.xz", ROOT / ".esdistill" / "datasets")
    corpus, queries = load_corpus(root / "corpus.jsonl"), load_queries(root / "queries.jsonl")
    train = list(load_qrels(root / "qrels" / "train.tsv"))
    rng, ids = random.Random(0), sorted(corpus)
    pairs = [(queries[train[i % len(train)]], corpus[rng.choice(ids)].full_text) for i in range(pairs_n)]
    docs = [(corpus[d], "") for d in ids[:docs_n]]
    cores = usable_cores()

    def jobs(kind: str, items: list) -> list:
        return [((kind, i), (kind, "minilm", max_length, 32, items[i: i + chunk])) for i in range(0, len(items), chunk)]

    def timed(engine, kind: str, items: list) -> float:
        n = len(engine.actors) if hasattr(engine, "actors") else 1
        list(engine.map(jobs(kind, items[: chunk * n])))  # warm: every worker loads its model
        t = time.perf_counter()
        done = sum(1 for _ in engine.map(jobs(kind, items)))
        assert done == len(jobs(kind, items))
        return time.perf_counter() - t

    configs = [("local", lambda: LocalEngine()),
               ("ray ×1", lambda: RayEngine(1, cpus_per_worker=cores)),
               ("ray ×2", lambda: RayEngine(2, cpus_per_worker=max(1, cores // 2)))]
    rows = []
    for label, make in configs:
        engine = make()
        try:
            for kind, items, unit in (("score", pairs, "pairs/s"), ("embed", docs, "docs/s")):
                s = timed(engine, kind, items)
                rows.append({"engine": label, "stage": "teacher scoring" if kind == "score" else "corpus embedding",
                             "items": len(items), "seconds": s, "per_s": len(items) / s, "unit": unit})
                print(f"  {label} {rows[-1]['stage']}: {rows[-1]['per_s']:.1f} {unit}", flush=True)
        finally:
            engine.close()
    print("\n| stage | engine | items | seconds | throughput | vs local |\n|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if x["stage"] == r["stage"] and x["engine"] == "local")
        r["vs_local"] = r["per_s"] / base["per_s"]
        print(f"| {r['stage']} | {r['engine']} | {r['items']} | {r['seconds']:.1f} | {r['per_s']:.1f} {r['unit']} | "
              f"{r['vs_local']:.2f}× |")
    hw = hardware()
    write_result(out, f"workers-{hw['label']}", {"rows": rows, "chunk": chunk, "max_length": max_length,
                                                 "cores": cores, "hardware": hw})


if __name__ == "__main__":
    typer.run(main)
