"""Can the student follow its teacher when only its query side learns? (issue 20)

    .venv/bin/python bench/query_side_probe.py --workdir /path/to/a/bench/run --epochs 20

Full fine-tuning on 2 cores sees a few hundred lists in a quick run: every step re-encodes its documents with
gradients, and the log-only student barely moves toward its teacher. This probe keeps the document side frozen
(the zero-shot base's embeddings, computed once) and trains only the query side with the same listwise KL over
EVERY scored candidate of each training query (the log-only labels of ``--workdir``: no judgment is read). A
query is a few tokens, so a step costs little and many passes fit the budget.

Measured, for the zero-shot base and after each ``--eval-every`` passes: agreement with the pipeline on the test
queries' own candidates (the pipeline's reranked head, NDCG@10 / overlap@10 / RBO against its order, bootstrap
95% intervals), the same on the dev slice's teacher labels, and NDCG@10 against the test judgments by exact
search over the whole corpus. Prints a table and writes
``bench/results/query-side-probe-<dataset>-<profile>-<hardware>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, exact_search_measures, hardware_label, pipeline_heads, prepare_env  # noqa: E402


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    out: OutOpt = DEFAULT_OUT,
    workdir: ConfigWorkdirOpt = None,
    epochs: Annotated[int, typer.Option(help="passes over the training queries")] = 20,
    eval_every: Annotated[int, typer.Option(help="measure after this many passes")] = 5,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate")] = 5e-5,
    queries_per_step: Annotated[int, typer.Option(help="training queries per optimizer step")] = 32,
    seed: Annotated[int, typer.Option(help="seed of the order of the queries")] = 42,
    train_fraction: Annotated[float, typer.Option(help="share of the training queries used (a learning curve)")] = 1.0,
    pseudo_queries: Annotated[int, typer.Option(help="corpus sentences added as training queries, labelled by the "
                                                "teacher (data.pseudo_queries; their source document left out of "
                                                "their lists)")] = 0,
):
    prepare_env()
    import numpy as np
    import torch
    import torch.nn.functional as F

    from esdistill.agreement import agreement
    from esdistill.models import load_bi_encoder
    from esdistill.train import split_dev, standardize

    torch.manual_seed(seed)
    from esdistill import load_config
    from esdistill.pipeline import Project

    overrides: dict = {"data": {"pseudo_queries": pseudo_queries}}
    if workdir:
        overrides["workdir"] = str(workdir.resolve())
    p = Project(load_config(config, profile, **overrides))
    cfg = p.cfg
    scores = standardize(p.scores_frame(log_only=True))
    pseudo = sorted(q for q in scores.qid.unique() if q.startswith("pq-"))
    scores = scores[~scores.qid.isin(pseudo) | (scores.docid != scores.qid.str.removeprefix("pq-"))]
    qids = sorted(set(scores.qid.unique()) - set(pseudo))
    train_q, dev_q = split_dev(qids, cfg.train.dev_fraction)
    ds = p.dataset
    queries = p.train_queries
    test_queries, test_qrels = ds.test_queries, ds.test_qrels
    heads = pipeline_heads(cfg.workdir, test_queries)

    t0 = time.perf_counter()
    model = load_bi_encoder(cfg.train.base_model, max_length=cfg.train.max_length)
    docs = ds.corpus
    doc_ids = list(docs)
    import hashlib
    tag = hashlib.sha256(json.dumps([cfg.train.base_model, cfg.train.max_length, doc_ids]).encode()).hexdigest()[:12]
    saved = Path(cfg.workdir) / "query-side-probe" / f"corpus-{tag}.npy"  # the frozen document side, once
    if saved.exists():
        D = torch.tensor(np.load(saved))
    else:
        with torch.no_grad():
            D = torch.tensor(model.encode([docs[d].full_text for d in doc_ids], batch_size=64,
                                          normalize_embeddings=True, show_progress_bar=False))
        saved.parent.mkdir(parents=True, exist_ok=True)
        np.save(saved, D.numpy())
    row = {d: i for i, d in enumerate(doc_ids)}
    embed_s = time.perf_counter() - t0

    by_q = {q: g for q, g in scores.groupby("qid")}
    lists = {q: (torch.tensor([row[d] for d in by_q[q].docid]), torch.tensor(by_q[q].teacher.to_numpy(),
                                                                             dtype=torch.float32))
             for q in train_q if q in by_q and len(by_q[q]) > 1}
    if train_fraction < 1.0:
        keep = sorted(lists)[: max(1, round(train_fraction * len(lists)))]
        lists = {q: lists[q] for q in keep}
    fit_q = sorted(lists)[:100]
    lists.update({q: (torch.tensor([row[d] for d in by_q[q].docid]),
                      torch.tensor(by_q[q].teacher.to_numpy(), dtype=torch.float32))
                  for q in pseudo if q in by_q and len(by_q[q]) > 1})  # how well it fits queries it trains on, next to how well it generalises
    scale = cfg.train.score_scale
    with torch.no_grad():  # labels on the base model's logit scale (train.label_scale = auto)
        qv = torch.tensor(model.encode([queries[q] for q in lists], normalize_embeddings=True,
                                       show_progress_bar=False))
        spread = float(np.mean([(scale * (D[i] @ v)).std(unbiased=False).item()
                                for v, (i, _) in zip(qv, lists.values(), strict=True)]))

    def encode(texts):
        feats = model.tokenize(texts)
        return F.normalize(model(feats)["sentence_embedding"], dim=-1)

    def measure():
        model.eval()
        with torch.no_grad():
            tq = list(test_queries)
            Q = torch.cat([encode([test_queries[q] for q in tq[i:i + 64]]) for i in range(0, len(tq), 64)])
            test = exact_search_measures(Q.numpy(), D.numpy(), tq, doc_ids, heads, test_qrels)

            def labelled(qs):
                Qx = encode([queries[q] for q in qs])
                ref = {q: dict(zip(by_q[q].docid, by_q[q].teacher.astype(float), strict=True)) for q in qs}
                return agreement(ref, {q: {d: float(Qx[i] @ D[row[d]]) for d in ref[q]} for i, q in enumerate(qs)})
            dev = labelled([q for q in dev_q if q in by_q])
            fit = labelled(fit_q)
        model.train()
        return {**test, "dev_agreement": dev, "train_agreement": fit}

    curve = [{"epoch": 0, **measure()}]
    c = curve[0]
    print(f"zero-shot: test agreement {c['test_agreement']['ndcg@10']:.3f}, dev agreement "
          f"{c['dev_agreement']['ndcg@10']:.3f}, test NDCG@10 {c['test_ndcg@10']:.3f}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = list(lists)
    rng = np.random.default_rng(seed)
    t1 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        rng.shuffle(order)
        for b in range(0, len(order), queries_per_step):
            batch = order[b:b + queries_per_step]
            qv = encode([queries[q] for q in batch])
            loss = 0.0
            for v, q in zip(qv, batch, strict=True):
                idx, lab = lists[q]
                logits = scale * (D[idx] @ v)
                loss = loss + F.kl_div(F.log_softmax(logits, -1), F.log_softmax(spread * lab, -1),
                                       log_target=True, reduction="sum")
            (loss / len(batch)).backward()
            opt.step()
            opt.zero_grad()
        if epoch % eval_every == 0 or epoch == epochs:
            curve.append({"epoch": epoch, "train_seconds": round(time.perf_counter() - t1, 1), **measure()})
            c = curve[-1]
            print(f"epoch {epoch}: test agreement {c['test_agreement']['ndcg@10']:.3f}, dev agreement "
                  f"{c['dev_agreement']['ndcg@10']:.3f}, train agreement {c['train_agreement']['ndcg@10']:.3f}, "
                  f"test NDCG@10 {c['test_ndcg@10']:.3f}", flush=True)

    print(f"\nquery side only: {len(lists)} training queries ({len(pseudo)} pseudo) x all their candidates, labels z x {spread:.2f}, "
          f"corpus embedded once in {embed_s:.0f} s\n")
    print("| passes | train s | test agreement NDCG@10 [95% CI] | overlap@10 | RBO | dev agreement NDCG@10 "
          "| train agreement NDCG@10 | test NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for c in curve:
        a, d = c["test_agreement"], c["dev_agreement"]
        print(f"| {c['epoch']} | {c.get('train_seconds', 0)} | {a['ndcg@10']:.3f} [{a['ndcg@10_ci95'][0]:.3f}, "
              f"{a['ndcg@10_ci95'][1]:.3f}] | {a['overlap@10']:.3f} | {a['rbo']:.3f} | {d['ndcg@10']:.3f} "
              f"| {c['train_agreement']['ndcg@10']:.3f} | {c['test_ndcg@10']:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"query-side-probe-{cfg.data.name}-{profile}-{hardware_label()}-lr{learning_rate:g}-f{train_fraction:g}-pq{pseudo_queries}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "train_queries": len(lists), "label_scale": spread,
                                "embed_seconds": embed_s, "learning_rate": learning_rate,
                                "queries_per_step": queries_per_step, "train_fraction": train_fraction, "pseudo_queries": len(pseudo), "curve": curve}, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    typer.run(main)
