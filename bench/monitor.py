"""`esdistill monitor` on real query sets: how much the deployed student agrees with its pipeline on the queries
it was trained on, on unseen queries of the same kind, and on another dataset's queries (drift) — the numbers
behind a `[monitor] min_ndcg` threshold (issue 12, item 4).

    .venv/bin/python bench/monitor.py --config examples/scifact.toml --workdir .esdistill \\
        --other ../shared/data/nfcorpus/queries.jsonl

Runs `run_monitor` (the pipeline and the served student, one query at a time, as `esdistill monitor` does) on
`--sample` queries of each set, drawn as the command draws them. Nothing is written to the results index. Prints a
table (each set's means, NDCG@10 with its 95% bootstrap interval over queries) and writes
bench/results/monitor-<dataset>-<profile>-<hardware>.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from common import (
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware_label, open_project,
    write_result,
)

METRICS = ("ndcg@10", "overlap@10", "kendall_tau")


def _interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    means = v[rng.integers(0, len(v), size=(2000, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    profile: ProfileOpt = "quick",
    workdir: ConfigWorkdirOpt = None,
    other: Annotated[Path | None, typer.Option(help="another dataset's queries (BEIR queries.jsonl or one per "
                                                    "line): the drifted set")] = None,
    sample: Annotated[int, typer.Option(help="queries per set")] = 100,
    out: OutOpt = DEFAULT_OUT,
):
    from esdistill.data import load_queries, subset
    from esdistill.monitor import run_monitor

    project = open_project(config, profile, workdir)
    ds = project.dataset
    trained = {q: t for q, t in ds.train_queries.items() if q in ds.train_qrels}
    sets = {"training queries (the student trained on 90%)": trained,
            "unseen, same dataset (test queries)": ds.test_queries}
    if other:
        sets[f"another dataset ({other.parent.name or other.name})"] = load_queries(other, id_prefix="other-")
    rows = []
    for name, queries in sets.items():
        picked = {q: queries[q] for q in subset(queries, sample, salt="monitor")}
        report = run_monitor(project, picked, project.progress)
        per = report["per_query"]
        rows.append({"set": name, "queries": len(per), "without_pipeline_hits": report["without_pipeline_hits"],
                     **{m: report["mean"][m] for m in METRICS},
                     **{f"{m}_95": _interval([r[m] for r in per]) for m in METRICS}})
    print("| queries | n | NDCG@10 vs pipeline (95%) | overlap@10 | Kendall tau |\n|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["ndcg@10_95"]
        print(f"| {r['set']} | {r['queries']} | {r['ndcg@10']:.3f} ({lo:.3f}–{hi:.3f}) | {r['overlap@10']:.3f} | "
              f"{r['kendall_tau']:.3f} |")
    write_result(out, f"monitor-{project.cfg.data.name}-{profile}-{hardware_label()}",
                 {"rows": rows, "profile": profile, "student": project.student_path(),
                  "teacher": project.teacher_id()})


if __name__ == "__main__":
    typer.run(main)
