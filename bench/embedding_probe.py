"""Does the teacher's bi-encoder geometry pass into the student where its rankings did not? (issue 20)

    .venv/bin/python bench/embedding_probe.py --workdir /path/to/a/run/cache --passes 3

The query-side probe showed a student that fits its teacher's orders on the queries it trains on and does not
generalise: a ranking of 30 candidates is little signal a query. When the teacher has a bi-encoder member
(bge-small in the quick profile), the member's embedding of every text is 384 numbers of signal, for every
document of the corpus and every query of the log — no judgment needed. This probe trains the student (MiniLM) to
reproduce the member's embeddings (mean squared error, sentence-transformers' model-distillation recipe), after
an orthogonal Procrustes rotation of the member's space onto the student's zero-shot space (fitted on the same
texts; a rotation keeps every cosine of the member, and starts the student near its own embeddings instead of
asking it to relearn a coordinate system).

Texts: the corpus (the student's own ``max_length``, the window it serves), the training queries as a log (no
judgment read), and optionally ``--titles`` (document titles as queries). Measured for the zero-shot student,
the member itself, and after each pass: agreement with the pipeline on the test queries' own candidates, and
NDCG@10 against the test judgments by exact search over the whole corpus. Writes
``bench/results/embedding-probe-<dataset>-<profile>-<hardware>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CONFIG, DEFAULT_OUT, BatchSizeOpt, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, exact_search_measures, hardware_label, pipeline_heads, prepare_env  # noqa: E402


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    out: OutOpt = DEFAULT_OUT,
    workdir: ConfigWorkdirOpt = None,
    passes: Annotated[int, typer.Option(help="passes over the texts")] = 3,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-4,
    batch_size: BatchSizeOpt = 32,
    seed: Annotated[int, typer.Option(help="seed of the order of the texts")] = 42,
    titles: Annotated[bool, typer.Option(help="document titles as extra queries")] = False,
    rotate: Annotated[bool, typer.Option(help="Procrustes-rotate the member's space onto the student's")] = True,
    teacher_model: Annotated[str | None, typer.Option(help="the bi-encoder to copy (default: the teacher's "
                                                            "first bi_encoder member)")] = None,
):
    prepare_env()
    import hashlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    from esdistill import load_config
    from esdistill.models import load_bi_encoder
    from esdistill.pipeline import Project

    torch.manual_seed(seed)
    overrides: dict = {"workdir": str(workdir.resolve())} if workdir else {}
    p = Project(load_config(config, profile, **overrides))
    cfg = p.cfg
    teacher_model = teacher_model or p.bi_encoder_member()
    if teacher_model is None:
        raise SystemExit("the teacher has no bi_encoder member: name one with --teacher-model")
    ds = p.dataset
    docs, queries = ds.corpus, p.train_queries
    test_queries, test_qrels = ds.test_queries, ds.test_qrels
    heads = pipeline_heads(cfg.workdir, test_queries)

    max_length = cfg.train.max_length
    doc_ids = list(docs)
    doc_texts = [docs[d].full_text for d in doc_ids]
    log_texts = [queries[q] for q in sorted(queries)]
    if titles:
        log_texts += sorted({docs[d].title for d in doc_ids if docs[d].title})
    cache = Path(cfg.workdir) / "embedding-probe"
    cache.mkdir(parents=True, exist_ok=True)

    def cached(name: str, key: list, fn):
        f = cache / f"{name}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]}.npy"
        if f.exists():
            return np.load(f)
        x = fn()
        np.save(f, x)
        return x

    t0 = time.perf_counter()
    teacher = load_bi_encoder(teacher_model, max_length=max_length)
    TD = cached("teacher-docs", [teacher_model, max_length, doc_ids], lambda: teacher.encode_document(
        doc_texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False))
    TQ = cached("teacher-queries", [teacher_model, max_length, log_texts], lambda: teacher.encode_query(
        log_texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
    TT = cached("teacher-test", [teacher_model, max_length, sorted(test_queries)], lambda: teacher.encode_query(
        [test_queries[q] for q in sorted(test_queries)], batch_size=64, normalize_embeddings=True,
        show_progress_bar=False))
    teacher_s = time.perf_counter() - t0
    del teacher

    model = load_bi_encoder(cfg.train.base_model, max_length=max_length)

    def encode(texts):
        feats = model.tokenize(texts)
        return F.normalize(model(feats)["sentence_embedding"], dim=-1)

    def encode_all(texts):
        with torch.no_grad():
            return torch.cat([encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])

    model.eval()
    SD = cached("student-docs", [cfg.train.base_model, max_length, doc_ids], lambda: encode_all(doc_texts).numpy())
    SQ = encode_all(log_texts).numpy()
    texts = doc_texts + log_texts
    T = np.concatenate([TD, TQ])
    S = np.concatenate([SD, SQ])
    if rotate:  # orthogonal Procrustes: the rotation R that brings T R closest to S
        u, _, vt = np.linalg.svd(T.T @ S, full_matrices=False)
        R = u @ vt
    else:
        if T.shape[1] != S.shape[1]:
            raise SystemExit(f"--no-rotate needs equal sizes: teacher {T.shape[1]}, student {S.shape[1]}")
        R = np.eye(T.shape[1])
    targets = torch.tensor(T @ R, dtype=torch.float32)
    start_mse = float(((torch.tensor(S) - targets) ** 2).sum(-1).mean())
    print(f"{len(doc_texts)} documents + {len(log_texts)} queries; teacher {teacher_model} encoded in "
          f"{teacher_s:.0f} s; squared distance to the (rotated) teacher at the start: {start_mse:.3f}", flush=True)

    tq = sorted(test_queries)

    def measure(Q: np.ndarray, D: np.ndarray) -> dict:
        return exact_search_measures(Q, D, tq, doc_ids, heads, test_qrels)

    def measure_student() -> dict:
        model.eval()
        r = measure(encode_all([test_queries[q] for q in tq]).numpy(), encode_all(doc_texts).numpy())
        model.train()
        return r

    ref = {"teacher": measure(TT, TD)}
    curve = [{"pass": 0, **measure_student()}]

    def show(tag, c):
        a = c["test_agreement"]
        print(f"{tag}: test agreement {a['ndcg@10']:.3f} [{a['ndcg@10_ci95'][0]:.3f}, {a['ndcg@10_ci95'][1]:.3f}], "
              f"overlap@10 {a['overlap@10']:.3f}, test NDCG@10 {c['test_ndcg@10']:.3f}", flush=True)
    show(f"teacher member {teacher_model}", ref["teacher"])
    show("zero-shot student", curve[0])

    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    order = np.arange(len(texts))
    t1 = time.perf_counter()
    model.train()
    for ep in range(1, passes + 1):
        rng.shuffle(order)
        total = 0.0
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            emb = encode([texts[i] for i in idx])
            loss = ((emb - targets[idx]) ** 2).sum(-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += float(loss) * len(idx)
        curve.append({"pass": ep, "train_seconds": round(time.perf_counter() - t1, 1),
                      "train_mse": total / len(order), **measure_student()})
        show(f"pass {ep} (mse {total / len(order):.3f}, {curve[-1]['train_seconds']:.0f} s)", curve[-1])

    print(f"\n{len(texts)} texts, rotate={rotate}, lr {learning_rate:g}, batch {batch_size}\n")
    print("| student | train s | test agreement NDCG@10 [95% CI] | overlap@10 | RBO | test NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for name, c in [(f"teacher member ({teacher_model})", ref["teacher"])] + [(f"pass {c['pass']}", c) for c in curve]:
        a = c["test_agreement"]
        print(f"| {name} | {c.get('train_seconds', '')} | {a['ndcg@10']:.3f} [{a['ndcg@10_ci95'][0]:.3f}, "
              f"{a['ndcg@10_ci95'][1]:.3f}] | {a['overlap@10']:.3f} | {a['rbo']:.3f} | {c['test_ndcg@10']:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / (f"embedding-probe-{cfg.data.name}-{profile}-{hardware_label()}-lr{learning_rate:g}"
                  f"{'-titles' if titles else ''}{'' if rotate else '-norotate'}.json")
    path.write_text(json.dumps({"command": " ".join(sys.argv), "teacher_model": teacher_model, "texts": len(texts),
                                "documents": len(doc_texts), "queries": len(log_texts), "teacher_seconds": teacher_s,
                                "start_distance": start_mse, "teacher": ref["teacher"], "curve": curve}, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    typer.run(main)
