"""How often in-batch negatives are false negatives without the NO_DUPLICATES sampler.

    .venv/bin/python bench/duplicates.py [--seeds 20]

The teacher's listwise fit and the student's MNRL make one row per judged positive; the other rows of a batch
are a row's negatives. With the default sampler (a random permutation cut into batches), a query with several
positives can meet its own other positive in a batch — as a negative. This counts, over random permutations of
the rows each profile builds (SciFact and NFCorpus, quick and full, with their caps and batch sizes), the share
of rows that get at least one such false negative and the false negatives per batch. With NO_DUPLICATES (the
default now) both are 0 by construction. Writes ``bench/results/in-batch-duplicates.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OUT, ROOT, OutOpt, prepare_env, write_result  # noqa: E402


def main(seeds: Annotated[int, typer.Option(help="random permutations per case")] = 20, out: OutOpt = DEFAULT_OUT):
    prepare_env()
    from esdistill import load_config
    from esdistill.data import load_dataset, relevant

    rows_out = []
    for dataset in ("scifact", "nfcorpus"):
        for profile in ("quick", "full"):
            cfg = load_config(ROOT / "examples" / f"{dataset}.toml", profile)
            ds = load_dataset(cfg.data, ROOT / ".esdistill" / "datasets")
            caps = [cfg.data.max_positives_per_query] + ([None] if cfg.data.max_positives_per_query else [])
            for cap, (what, batch) in [(c, w) for c in caps for w in (
                    ("teacher fit (listwise)", cfg.teacher.fit.batch_size), ("student (MNRL)", cfg.train.batch_size))]:
                qids = np.array([q for q, docs in ds.train_qrels.items() for _ in relevant(q, docs, cap)])
                hit, per_batch = [], []
                for seed in range(seeds if len(qids) < 20_000 else 3):
                    perm = qids[np.random.default_rng(seed).permutation(len(qids))]
                    affected, false_negs, batches = 0, 0, 0
                    for start in range(0, len(perm), batch):
                        b = perm[start : start + batch]
                        _, counts = np.unique(b, return_counts=True)
                        affected += int(counts[counts > 1].sum())
                        false_negs += int((counts * (counts - 1))[counts > 1].sum())
                        batches += 1
                    hit.append(affected / len(perm))
                    per_batch.append(false_negs / batches)
                rows_out.append({"dataset": dataset, "profile": profile, "stage": what, "rows": int(len(qids)),
                                 "batch_size": batch, "max_positives": cap,
                                 "rows_with_a_false_negative": float(np.mean(hit)),
                                 "false_negatives_per_batch": float(np.mean(per_batch))})
    print("| dataset | profile | stage | positives per query | rows | batch | rows with a false in-batch negative | "
          "per batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        cap = "all" if r["max_positives"] is None else f"≤ {r['max_positives']}"
        print(f"| {r['dataset']} | {r['profile']} | {r['stage']} | {cap} | {r['rows']} | {r['batch_size']} | "
              f"{r['rows_with_a_false_negative']:.1%} | {r['false_negatives_per_batch']:.2f} |")
    write_result(out, "in-batch-duplicates", {"rows": rows_out, "seeds": seeds})


if __name__ == "__main__":
    typer.run(main)
