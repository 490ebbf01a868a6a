"""How often an in-batch negative is a false negative: a document judged relevant to the row's own query.

    .venv/bin/python bench/duplicates.py [--seeds 20]

The teacher's listwise fit and the student's MNRL make one row per judged positive; the other rows' positives
are a row's in-batch negatives. One of them is a false negative when the judgments call it relevant to this
row's query — because it is this query's other positive (the same query twice in a batch), or because another
query's positive is also judged relevant to this one (cross-query: NFCorpus judges ~42 documents a query, and
its queries share many). This counts both, over random permutations of the rows each profile builds (SciFact and
NFCorpus, quick and full, with their caps and batch sizes), for two batch samplers: a random permutation cut into
batches, and sentence-transformers' NO_DUPLICATES (no text twice in a batch: no query twice, so no same-query
false negative — but cross-query ones remain). The student's MNRL masks what is left
(``train.mask_judged_negatives``): after the mask both are 0. Writes ``bench/results/in-batch-duplicates.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OUT, ROOT, OutOpt, prepare_env, write_result  # noqa: E402


def batches_of(rows: list[tuple[str, str]], batch: int, rng: np.random.Generator, no_duplicates: bool):
    """Batches of row indices: a random permutation cut into ``batch``-sized pieces, or NO_DUPLICATES as
    sentence-transformers builds it (rows taken in permuted order into the first batch that holds none of their
    texts, a batch closed when full)."""
    perm = rng.permutation(len(rows))
    if not no_duplicates:
        return [perm[i : i + batch] for i in range(0, len(perm), batch)]
    out, remaining = [], list(perm)
    while remaining:
        b, texts, taken = [], set(), set()
        for i in remaining:
            q, d = rows[i]
            if q not in texts and d not in texts:
                b.append(i)
                taken.add(i)
                texts |= {q, d}
                if len(b) == batch:
                    break
        out.append(np.array(b))
        stop = remaining.index(b[-1]) + 1  # what the scan passed over and skipped stays, in order
        remaining = [i for i in remaining[:stop] if i not in taken] + remaining[stop:]
    return out


def count(rows: list[tuple[str, str]], relevant_to: dict[str, set[str]], batches) -> dict[str, float]:
    """Rows with at least one false in-batch negative (same query / another query's judged-relevant positive),
    and false negatives per batch."""
    same = cross = affected = 0
    for b in batches:
        for a in b:
            q = rows[a][0]
            s = sum(1 for j in b if j != a and rows[j][0] == q)
            c = sum(1 for j in b if j != a and rows[j][0] != q and rows[j][1] in relevant_to[q])
            same, cross, affected = same + s, cross + c, affected + (s + c > 0)
    return {"rows_with_a_false_negative": affected / len(rows), "same_query_per_batch": same / len(batches),
            "cross_query_per_batch": cross / len(batches)}


def main(seeds: Annotated[int, typer.Option(help="random permutations per case")] = 20, out: OutOpt = DEFAULT_OUT):
    prepare_env()
    from esdistill import load_config
    from esdistill.budget import resolve_max_positives
    from esdistill.data import load_dataset, relevant

    rows_out = []
    for dataset in ("scifact", "nfcorpus"):
        for profile in ("quick", "full"):
            cfg = load_config(ROOT / "examples" / f"{dataset}.toml", profile)
            ds = load_dataset(cfg.data, ROOT / ".esdistill" / "datasets")
            relevant_to = {q: {d for d, g in docs.items() if g > 0} for q, docs in ds.train_qrels.items()}
            cap, _ = resolve_max_positives(cfg.data.max_positives_per_query, ds.train_qrels)  # what training uses
            caps = [cap] + ([None] if cap else [])
            for cap, (what, batch) in [(c, w) for c in caps for w in (
                    ("teacher fit (listwise)", cfg.teacher.fit.batch_size), ("student (MNRL)", cfg.train.batch_size))]:
                rows = [(q, d) for q, docs in ds.train_qrels.items() for d in relevant(q, docs, cap)]
                for sampler in ("random", "no_duplicates"):
                    n = seeds if len(rows) < 20_000 else 3
                    runs = [count(rows, relevant_to, batches_of(rows, batch, np.random.default_rng(seed),
                                                                sampler == "no_duplicates")) for seed in range(n)]
                    rows_out.append({"dataset": dataset, "profile": profile, "stage": what, "rows": len(rows),
                                     "batch_size": batch, "max_positives": cap, "sampler": sampler,
                                     **{k: float(np.mean([r[k] for r in runs])) for k in runs[0]}})
    print("| dataset | profile | stage | positives per query | rows | batch | sampler | rows with a false in-batch "
          "negative | same query per batch | another query's, per batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        cap = "all" if r["max_positives"] is None else f"≤ {r['max_positives']}"
        print(f"| {r['dataset']} | {r['profile']} | {r['stage']} | {cap} | {r['rows']} | {r['batch_size']} | "
              f"{r['sampler']} | {r['rows_with_a_false_negative']:.1%} | {r['same_query_per_batch']:.2f} | "
              f"{r['cross_query_per_batch']:.2f} |")
    write_result(out, "in-batch-duplicates", {"rows": rows_out, "seeds": seeds,
                                              "note": "the student's MNRL masks both kinds "
                                                      "(train.mask_judged_negatives): 0 after the mask"})


if __name__ == "__main__":
    typer.run(main)
