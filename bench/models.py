"""Models from the artifact mirror as rerankers and teachers: zero-shot cosine of each bi-encoder over BM25's top
candidates of the test queries, alone and z-fused with BM25 (issue 20, item 6).

    ESDISTILL_LOCAL_PORT=9263 nice -n 10 .venv/bin/python bench/models.py --model minilm --model bge-small

BM25's top ``--depth`` (30) per evaluated test query come from the project's own index on the cluster (the local
test build unless the config names another; started here when it is not running). Each model encodes queries with
``encode_query`` and documents with ``encode_document`` (its own prompts: bge's query instruction, e5's
``query: `` / ``passage: ``) at ``--max-length`` (256) tokens, as the ensemble's ``bi_encoder:<model>`` member
does; the fusion is the ensemble's (:func:`esdistill.ensemble.fuse_many`: per-query z-scores, weighted sum) at
fixed model weights 0.5..0.9 — fixed, not chosen on the test queries. With two models from the mirror, their
equal-weight mix fused with BM25 is reported too. Prints NDCG@10 and MRR@10 with paired t-test p-values against
BM25; writes bench/results/models-<dataset>-<hardware>.json. ``--split train`` measures the judged training queries
the profile labels instead (models-<dataset>-train-…-<max length>.json): a teacher setting such as its token length
chosen there leaves the test queries to the evaluation. Cosines are cached in the workdir per model. ``--cut N``
(repeat) reports the same rows for BM25's top N of the same lists too (the fusion's z-scores over those N), so one
encoding measures several rerank depths.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from common import (
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, BatchSizeOpt, ConfigOpt, DepthOpt, MaxLengthOpt, OutOpt, WorkdirOpt,
    ensure_cluster, hardware_label, open_project, write_result,
)

WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _cosines(name: str, queries: dict[str, str], hits: dict[str, list[tuple[str, float]]], docs: dict,
             max_length: int, batch_size: int, cache_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """qid -> cosine of each of its candidates (in BM25's order), encoded once per distinct text."""
    from esdistill.embed import inference_context
    from esdistill.models import load_bi_encoder, model_fingerprint

    import hashlib

    fp = model_fingerprint(name)
    pairs = hashlib.sha256("\n".join(f"{q}\t{queries[q]}\t{','.join(d for d, _ in hits[q])}"
                                     for q in sorted(queries)).encode()).hexdigest()[:12]
    path = cache_dir / f"{fp}-{max_length}-{pairs}.npz"  # keyed on the queries and their candidates, in order
    if path.exists():
        data = np.load(path, allow_pickle=False)
        info = {"model": name, "fingerprint": fp, "cached": True, "seconds": float(data["__seconds"])}
        return {q: data[f"q{i}"] for i, q in enumerate(sorted(queries))}, info
    model = load_bi_encoder(name, max_length=max_length, device="cpu")
    doc_ids = sorted({d for h in hits.values() for d, _ in h})
    qids = sorted(queries)
    t0 = time.perf_counter()
    with inference_context():
        qv = model.encode_query([queries[q] for q in qids], batch_size=batch_size, normalize_embeddings=True,
                                show_progress_bar=False)
        dv = model.encode_document([docs[d].full_text for d in doc_ids], batch_size=batch_size,
                                   normalize_embeddings=True, show_progress_bar=True)
    seconds = time.perf_counter() - t0
    row = {d: i for i, d in enumerate(doc_ids)}
    out = {q: dv[[row[d] for d, _ in hits[q]]] @ qv[i] for i, q in enumerate(qids)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, __seconds=seconds, **{f"q{i}": out[q] for i, q in enumerate(qids)})
    return out, {"model": name, "fingerprint": fp, "cached": False, "seconds": seconds, "documents": len(doc_ids),
                 "queries": len(qids)}


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    model: Annotated[list[str], typer.Option(help="a bi-encoder (repeat)")] = ["minilm", "bge-small"],  # noqa: B006
    depth: DepthOpt = 30,
    cut: Annotated[list[int], typer.Option(help="also rerank only BM25's top N of the --depth list (repeat)")] = [],  # noqa: B006
    max_length: MaxLengthOpt = 256,
    batch_size: BatchSizeOpt = 32,
    split: Annotated[str, typer.Option(help="test: the evaluated test queries; train: the judged training queries "
                                            "the profile labels (to choose a teacher setting without the test)")] = "test",
    out: OutOpt = DEFAULT_OUT,
):
    if split not in ("train", "test"):  # refused before any cluster or model is touched
        raise typer.BadParameter(f"'train' or 'test', not {split!r}", param_hint="--split")
    project = open_project(config, "quick", workdir)
    ensure_cluster(project.cfg)  # the local test build unless the config names a cluster
    from esdistill import candidates as cand_mod
    from esdistill.ensemble import fuse_many
    from esdistill.evaluate import metrics, metrics_numpy, significance
    from esdistill.model_source import known

    project.index()
    if split == "train":  # the judged training queries the profile labels: choosing on them leaves the test alone
        judged = project.judged_qids
        queries = {q: t for q, t in project.dataset.train_queries.items() if q in judged}
        qrels = {q: project.dataset.train_qrels[q] for q in queries}
    else:
        queries = project.eval_queries()
        qrels = {q: project.dataset.test_qrels[q] for q in queries}
    hits = cand_mod.msearch_bm25(project.client, project.cfg.bm25_index, queries, project.text_fields, depth)
    docs = project.docs(sorted({d for h in hits.values() for d, _ in h}))
    bm25 = {q: np.array([s for _, s in hits[q]], dtype=float) for q in queries}

    def run_of(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        # ties keep BM25's order: a tiny rank-based tie-breaker
        return {q: {d: float(scores[q][i]) - 1e-9 * i for i, (d, _) in enumerate(hits[q])} for q in queries}

    runs = {"BM25": run_of(bm25)}
    infos, cos = [], {}
    for name in model:
        cos[name], info = _cosines(name, queries, hits, docs, max_length, batch_size,
                                   workdir / "models-bench")
        infos.append(info)
        print(f"{name}: {info}", flush=True)
    mirror = [m for m in model if known(m)]
    cuts = sorted({c for c in cut if c < depth}) + [depth]
    for n in cuts:
        # BM25's top n of the same lists: the fusion's z-scores are taken over the n candidates reranked
        at = "" if n == depth else f" @{n}"

        def top(scores: dict[str, np.ndarray], n: int = n) -> dict[str, np.ndarray]:
            return {q: np.concatenate([s[:n], s[n:] - 1e6]) for q, s in scores.items()}  # the rest stays below

        def fused(arrays: list[dict[str, np.ndarray]], weights: list[float], n: int = n) -> dict[str, np.ndarray]:
            return top({q: np.concatenate([fuse_many([a[q][:n] for a in arrays], weights), bm25[q][n:]])
                        for q in queries})

        for name in model:
            runs[f"{name} rerank{at}"] = run_of(top({q: np.concatenate([cos[name][q][:n], bm25[q][n:]])
                                                     for q in queries}))
            for w in WEIGHTS:
                runs[f"{name} + BM25 ({w:g}){at}"] = run_of(fused([cos[name], bm25], [w, 1 - w]))
        if len(mirror) >= 2:
            a, b = mirror[:2]
            for w in WEIGHTS:
                runs[f"{a} + {b} + BM25 ({w / 2:g}, {w / 2:g}, {1 - w:g}){at}"] = run_of(
                    fused([cos[a], cos[b], bm25], [w / 2, w / 2, 1 - w]))

    scores = {n: metrics(qrels, r) for n, r in runs.items()}
    for n, r in runs.items():  # ranx against the project's own numpy definitions: the same numbers or no result
        check = metrics_numpy(qrels, r)["ndcg@10"]
        if abs(check - scores[n]["ndcg@10"]) > 1e-9:
            raise SystemExit(f"{n}: ranx says NDCG@10 {scores[n]['ndcg@10']:.4f}, numpy {check:.4f}")
    p_bm25 = significance(qrels, runs, "BM25")
    rows = [{"system": n, "ndcg@10": s["ndcg@10"], "mrr@10": s["mrr@10"],
             "p_vs_bm25": p_bm25.get(n, {}).get("ndcg@10")} for n, s in scores.items()]
    # the strongest mirror model's fusion against MiniLM's at the same weight (the quick teacher's today)
    if "minilm" in model and mirror:
        paired = {}
        for w in WEIGHTS:
            pair = {k: runs[k] for k in (f"minilm + BM25 ({w:g})", f"{mirror[0]} + BM25 ({w:g})")}
            paired[f"{w:g}"] = significance(qrels, pair, f"minilm + BM25 ({w:g})")[
                f"{mirror[0]} + BM25 ({w:g})"]["ndcg@10"]
    else:
        paired = None

    print(f"\n{project.cfg.data.name} {split}: {len(queries)} queries, BM25 top {depth}, {max_length} tokens\n")
    print("| system | NDCG@10 | MRR@10 | p vs BM25 |\n|---|---|---|---|")
    for r in rows:
        p = "—" if r["p_vs_bm25"] is None else f"{r['p_vs_bm25']:.3g}"
        print(f"| {r['system']} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {p} |")
    if paired:
        print(f"\np ({mirror[0]} + BM25 vs minilm + BM25, same weight): {paired}")
    name = (f"models-{project.cfg.data.name}" + ("" if split == "test" else f"-{split}") + f"-{hardware_label()}"
            + ("" if depth == 30 else f"-depth{depth}") + ("" if split == "test" else f"-{max_length}"))
    write_result(out, name, {
        "dataset": project.cfg.data.name, "split": split, "queries": len(queries), "depth": depth, "cuts": cuts,
        "max_length": max_length,
        "weights_fixed": list(WEIGHTS), "rows": rows, "models": infos, "p_mirror_vs_minilm_fused": paired,
        "index": project.cfg.bm25_index})


if __name__ == "__main__":
    typer.run(main)
