"""How each corpus-bound stage's time grows with corpus size: SciFact repeated 1×, 4×, 16× with new ids.

    .venv/bin/python bench/scale.py [--factors 1,4,16] [--workdir .esdistill-bench]

Per factor, against the configured cluster (or the local test build):
* BM25 index: bulk-index the repeated corpus (docs/s, counts verified);
* candidates: BM25 top-30 of the 400 quick-profile train queries by ``_msearch`` (the candidates stage);
* dense index: bulk-index the student's vectors into an HNSW ``dense_vector`` index (docs/s, HNSW built on
  ingest and refresh);
* query latency: BM25 and kNN (vectors precomputed, so Elasticsearch alone) p50 over the test queries.
Embedding the corpus is measured once at 1× (docs/s of the deploy path); it is linear in the corpus, so the
4× and 16× figures are that rate times the size, marked as extrapolated. Teacher and training time grow with
the number of queries, not with the corpus. Writes ``bench/results/scale-<hardware>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ConfigOpt, OutOpt, ProfileOpt, WorkdirOpt, hardware, open_project,
    write_result,
)


def main(
    factors: Annotated[str, typer.Option(help="corpus multiples")] = "1,4,16",
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: OutOpt = DEFAULT_OUT,
    keep: Annotated[bool, typer.Option(help="keep the scratch indices")] = False,
):
    project = open_project(config, profile, workdir)
    import numpy as np

    from esdistill.candidates import bm25_body, msearch_bm25
    from esdistill.data import Doc
    from esdistill.deploy import VECTOR_FIELD, dense_body
    from esdistill.evaluate import pct
    from esdistill.indexing import build_bm25_index, bulk_index, create_index, drop_own_index, verify_count
    from esdistill.models import embedding_info, load_bi_encoder
    from esdistill.search import knn_body

    client, ds, cfg = project.client, project.dataset, project.cfg
    base = list(ds.corpus.values())
    model = load_bi_encoder(project.student_path(), max_length=cfg.deploy.max_length or cfg.train.max_length)
    vec_file = workdir / "scale" / "vectors.npy"
    vec_file.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if vec_file.exists():
        vecs = np.load(vec_file)
        embed_s = json.loads((vec_file.parent / "embed.json").read_text())["seconds"]
    else:
        vecs = model.encode([d.full_text for d in base], batch_size=cfg.deploy.encode_batch_size,
                            normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True)
        embed_s = time.perf_counter() - t
        np.save(vec_file, vecs)
        (vec_file.parent / "embed.json").write_text(json.dumps({"seconds": embed_s, "docs": len(base)}))
    dims, normalized = embedding_info(model)
    test_q = [ds.test_queries[q] for q in sorted(ds.test_qrels)]
    q_vecs = model.encode(test_q, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    train_q = {q: project.train_queries[q] for q in sorted(project.train_queries)[:400]}
    rows = []
    for f in [int(x) for x in factors.split(",")]:
        corpus = {}
        for r in range(f):
            for d in base:
                i = d.id if r == 0 else f"{d.id}~{r}"
                corpus[i] = Doc(i, d.title, d.text)
        bm25, dense = f"esdistill-scale-{f}x-bm25", f"esdistill-scale-{f}x-dense"
        t = time.perf_counter()
        build_bm25_index(client, bm25, corpus, key=f"scale-{f}-{time.time()}", chunk_size=cfg.index.chunk_size)
        client.indices.refresh(index=bm25)
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        msearch_bm25(client, bm25, train_q, project.text_fields, 30, cfg.candidates.batch_size)
        cand_s = time.perf_counter() - t
        drop_own_index(client, dense)
        create_index(client, dense, dense_body(dims, normalized, cfg.deploy), {"key": f"scale-{f}", "docs": len(corpus)})
        t = time.perf_counter()

        def actions():
            for r in range(f):
                for d, v in zip(base, vecs, strict=True):
                    i = d.id if r == 0 else f"{d.id}~{r}"
                    yield {"_id": i, "_source": {"title": d.title, "text": d.text, VECTOR_FIELD: v.tolist()}}
        ok, errors = bulk_index(client, dense, actions(), chunk_size=cfg.deploy.batch_size)
        verify_count(client, dense, len(corpus), errors)
        dense_s = time.perf_counter() - t
        lat_b, lat_k = [], []
        for text, v in zip(test_q, q_vecs, strict=True):
            t = time.perf_counter()
            client.search(index=bm25, **bm25_body(text, project.text_fields, 100))
            lat_b.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            client.search(index=dense, **knn_body(v.tolist(), 100, cfg.evaluate.num_candidates))
            lat_k.append((time.perf_counter() - t) * 1e3)
        rows.append({"factor": f, "docs": len(corpus), "bm25_index_s": index_s, "bm25_docs_per_s": len(corpus) / index_s,
                     "candidates_s": cand_s, "candidate_queries": len(train_q),
                     "dense_index_s": dense_s, "dense_docs_per_s": len(corpus) / dense_s,
                     "embed_s": embed_s * f, "embed_extrapolated": f != 1,
                     "bm25_p50_ms": pct(lat_b, 50), "knn_p50_ms": pct(lat_k, 50)})
        if not keep:
            client.indices.delete(index=f"{bm25},{dense}", ignore_unavailable=True)
        r = rows[-1]
        print(f"{f}×: {r['docs']} docs — BM25 index {index_s:.1f} s, candidates {cand_s:.1f} s, dense index "
              f"{dense_s:.1f} s, BM25 p50 {r['bm25_p50_ms']:.1f} ms, kNN p50 {r['knn_p50_ms']:.1f} ms", flush=True)
    print("\n| corpus | docs | BM25 index s (docs/s) | candidates s (400 queries) | embed s | dense index s (docs/s) | "
          "BM25 p50 ms | kNN p50 ms |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        emb = f"{r['embed_s']:.0f}" + (" (extrapolated)" if r["embed_extrapolated"] else "")
        print(f"| {r['factor']}× | {r['docs']} | {r['bm25_index_s']:.1f} ({r['bm25_docs_per_s']:.0f}) | "
              f"{r['candidates_s']:.1f} | {emb} | {r['dense_index_s']:.1f} ({r['dense_docs_per_s']:.0f}) | "
              f"{r['bm25_p50_ms']:.1f} | {r['knn_p50_ms']:.1f} |")
    hw = hardware()
    write_result(out, f"scale-{hw['label']}", {"rows": rows, "hardware": hw, "index_type": cfg.deploy.index_type})


if __name__ == "__main__":
    typer.run(main)
