"""BM25 over the window the student reads, against BM25 over the whole document (issue 20, item 2).

    .venv/bin/python bench/window.py --config examples/scifact.toml --workdir .esdistill [--max-length 128]

The student (and the quick teacher's bi-encoder member) read each document's first ``--max-length`` word pieces
(the student base model's tokenizer, special tokens included); BM25 reads all of it. This builds a second BM25
index of the same corpus cut to that window (``<the project's BM25 index>-window<N>``, the same mapping; a rerun
reuses it) and measures, on the project's cache:

- the test queries: NDCG@10 and Recall@100 of BM25 over the window against BM25 over the whole text (paired
  t-test);
- the teacher's candidates (BM25's top k of the training queries, as scored): the Spearman correlation of the two
  BM25 scores within each query's list, and the share of judged positives whose rank in the list moves by 5 or
  more;
- the labels: NDCG@10 on the judged training queries of the candidates ordered by each BM25 alone, and by the
  teacher's fusion (its bi-encoder member's cosine with BM25, z-scored, at the project's ensemble weights) with
  either BM25 — what a teacher whose BM25 reads only the window would cost in label quality.

Writes ``bench/results/window-<dataset>-<hardware>-<N>.json``.
"""

from __future__ import annotations

import statistics

import typer

from common import (
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ConfigOpt, MaxLengthOpt, OutOpt, WorkdirOpt, ensure_cluster,
    hardware_label, open_project, write_result,
)


def windows(corpus: dict, model_name: str, max_length: int) -> tuple[dict, dict[str, int]]:
    """Each document cut to the characters its first ``max_length`` word pieces cover (title first, as
    :attr:`esdistill.data.Doc.full_text` joins them); and how many documents were cut."""
    from esdistill.data import Doc
    from esdistill.models import load_bi_encoder

    tok = load_bi_encoder(model_name, max_length=max_length, device="cpu").tokenizer
    ids = list(corpus)
    out, cut = {}, 0
    for start in range(0, len(ids), 256):
        batch = ids[start:start + 256]
        texts = [corpus[d].full_text for d in batch]
        enc = tok(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        for d, text, offsets in zip(batch, texts, enc["offset_mapping"], strict=True):
            end = max((e for _, e in offsets), default=0)
            doc = corpus[d]
            if end >= len(text):
                out[d] = doc
                continue
            cut += 1
            title = doc.title or ""
            if title and end <= len(title):
                out[d] = Doc(d, title[:end], "")
            else:
                out[d] = Doc(d, title, doc.text[:max(0, end - len(title) - (1 if title else 0))])
    return out, {"documents": len(ids), "cut": cut}


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    max_length: MaxLengthOpt = 128,
    out: OutOpt = DEFAULT_OUT,
):
    project = open_project(config, "quick", workdir)
    ensure_cluster(project.cfg)  # the local test build unless the config names a cluster
    from scipy.stats import spearmanr

    from esdistill import candidates as cand_mod
    from esdistill.ensemble import fuse_many
    from esdistill.evaluate import metrics, significance
    from esdistill.indexing import build_bm25_index

    members = [m.split(":")[0] for m in project.cfg.teacher.ensemble or []]
    if project.cfg.teacher.kind != "ensemble" or sorted(members) != ["bi_encoder", "bm25"] or members[0] != "bi_encoder":
        raise SystemExit(f"bench/window.py measures a teacher ensemble of one bi_encoder member then bm25 (the quick "
                         f"profile's); this config's teacher is {project.cfg.teacher.kind} {project.cfg.teacher.ensemble}")
    project.index()
    full_index = project.cfg.bm25_index
    window_index = f"{full_index}-window{max_length}"
    corpus, cut = windows(project.dataset.corpus, project.cfg.train.base_model, max_length)
    built = build_bm25_index(project.client, window_index, corpus, f"window{max_length}-{project.index_key}")
    print(f"{window_index}: {cut['cut']} of {cut['documents']} documents cut to the window "
          f"({'cached' if built.get('cached') else 'built'})", flush=True)

    # the test queries: BM25 over the window against BM25 over the whole text
    queries = project.eval_queries()
    qrels = {q: project.dataset.test_qrels[q] for q in queries}
    runs = {}
    for name, index in (("whole", full_index), ("window", window_index)):
        hits = cand_mod.msearch_bm25(project.client, index, queries, project.text_fields, 100)
        runs[name] = {q: {d: s for d, s in h} for q, h in hits.items()}
    test = {n: metrics(qrels, r) for n, r in runs.items()}
    p_test = significance(qrels, runs, "whole")["window"]

    # the teacher's candidates of the judged training queries, as scored
    frame = project.raw_scores_frame()
    train_q = {q: project.train_queries[q] for q in frame.qid.unique() if q in project.train_queries}
    whits = cand_mod.msearch_bm25(project.client, window_index, train_q, project.text_fields, 1000)
    wscore = {q: dict(h) for q, h in whits.items()}
    frame = frame[frame.qid.isin(list(train_q))].copy()
    frame["bm25_window"] = [wscore.get(q, {}).get(d, 0.0) for q, d in zip(frame.qid, frame.docid, strict=True)]
    judged = {q: r for q, r in project.dataset.train_qrels.items() if q in train_q and any(v > 0 for v in r.values())}
    weights = project.ensemble_weights(None)
    rhos, moved, positives = [], 0, 0
    label_runs: dict[str, dict[str, dict[str, float]]] = {k: {} for k in (
        "BM25 (whole)", "BM25 (window)", "teacher with BM25 (whole)", "teacher with BM25 (window)")}
    for q, g in frame.groupby("qid"):
        whole, win, cos = (g.bm25.to_numpy(float), g.bm25_window.to_numpy(float), g.teacher.to_numpy(float))
        if whole.std() > 0 and win.std() > 0:
            rhos.append(float(spearmanr(whole, win).statistic))
        if q in judged:
            r_whole = (-whole).argsort(kind="stable").argsort()
            r_win = (-win).argsort(kind="stable").argsort()
            for i, d in enumerate(g.docid):
                if judged[q].get(d, 0) > 0:
                    positives += 1
                    moved += abs(int(r_whole[i]) - int(r_win[i])) >= 5
            docs = list(g.docid)
            for name, scores in (("BM25 (whole)", whole), ("BM25 (window)", win),
                                 ("teacher with BM25 (whole)", fuse_many([cos, whole], weights)),
                                 ("teacher with BM25 (window)", fuse_many([cos, win], weights))):
                label_runs[name][q] = {d: float(s) - 1e-9 * i for i, (d, s) in enumerate(zip(docs, scores, strict=True))}
    labels = {n: metrics(judged, r)["ndcg@10"] for n, r in label_runs.items()}
    p_labels = significance(judged, label_runs, "teacher with BM25 (whole)")["teacher with BM25 (window)"]["ndcg@10"]

    print(f"\n{project.cfg.data.name}: the window is {max_length} word pieces of {project.cfg.train.base_model}; "
          f"{cut['cut']} of {cut['documents']} documents are longer\n")
    print("| test queries | NDCG@10 | Recall@100 |\n|---|---|---|")
    for n, m in test.items():
        print(f"| BM25 over the {n} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} |")
    print(f"\np (window vs whole, NDCG@10) = {p_test['ndcg@10']:.2g}")
    print(f"\nthe teacher's candidates of {len(train_q)} training queries: Spearman of the two BM25 scores "
          f"{statistics.fmean(rhos):.3f} (median {statistics.median(rhos):.3f}); {moved} of {positives} judged "
          f"positives move 5+ ranks ({moved / max(positives, 1):.0%})\n")
    print(f"| labels of {len(judged)} judged training queries (ensemble weights {weights}) | NDCG@10 |\n|---|---|")
    for n, v in labels.items():
        print(f"| {n} | {v:.4f} |")
    print(f"\np (teacher with the window's BM25 vs the whole's) = {p_labels:.2g}")
    write_result(out, f"window-{project.cfg.data.name}-{hardware_label()}-{max_length}", {
        "dataset": project.cfg.data.name, "max_length": max_length, "tokenizer": project.cfg.train.base_model,
        "documents_cut": cut, "window_index": window_index, "test": test, "p_test_window_vs_whole": p_test,
        "candidates": {"queries": len(train_q), "spearman_mean": statistics.fmean(rhos),
                       "spearman_median": statistics.median(rhos), "judged_positives": positives,
                       "moved_5_or_more": moved},
        "labels": {"judged_queries": len(judged), "ensemble_weights": weights, "ndcg@10": labels,
                   "p_window_vs_whole": p_labels}})


if __name__ == "__main__":
    typer.run(main)
