"""How the hybrid fuses BM25 and the student: reciprocal rank fusion against weighted sums of min-max and z-score
normalised scores, on the runs an evaluation already holds (``evaluate.hybrid_fusion``, issue 20).

    .venv/bin/python bench/fusion.py --config examples/scifact.toml [--seed 1]

Reads, from the config's cache, the test-query runs of BM25, the distilled student (kNN) and the pipeline that the
configured evaluation wrote (run ``esdistill run`` or ``bench/run.py`` first: nothing is searched or trained here),
and fuses the first two with ranx (``ranx.fuse``: ``rrf``; ``wsum`` after ``min-max`` or ``zmuv`` normalisation,
each over a run's own top 100 of a query, a document a run did not return adding 0), at the student's weights
0.3..0.8. The weights are not chosen here: the default (min-max, 0.5) was fixed as the engines' own equal-weight
hybrid; every row is shown so the choice can be read against its neighbours. Prints NDCG@10 with paired t-tests
against the pipeline and against RRF; writes ``bench/results/fusion-<dataset>-<hardware>[-seed<N>].json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware_label, open_project,
    write_result,
)

WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    profile: ProfileOpt = "quick",
    workdir: ConfigWorkdirOpt = None,
    seed: Annotated[int | None, typer.Option(help="train.seed of the student (default: the config's)")] = None,
    out: OutOpt = DEFAULT_OUT,
):
    import numpy as np
    from ranx import Run, fuse
    from scipy.stats import ttest_rel

    from esdistill.evaluate import metrics

    project = open_project(config, profile, workdir)
    if seed is not None:
        from esdistill.pipeline import Project

        project = Project(project.cfg.model_copy(update={"train": project.cfg.train.model_copy(
            update={"seed": seed})}))
    runs = {}
    for name in ("bm25", "student", "pipeline", "hybrid"):
        cache = project._system_cache(name)
        if not cache.done:
            raise typer.BadParameter(f"no {name} run in {project.workdir} for this config: run `esdistill run` (or "
                                     "bench/run.py) with it first", param_hint="--config")
        runs[name] = json.loads(cache.path("run.json").read_text())["run"]
    queries = project.eval_queries()
    qrels = {q: project.dataset.test_qrels[q] for q in queries}

    def ndcg(run: dict) -> np.ndarray:
        return np.asarray(metrics(qrels, run, per_query=True)["ndcg@10"])

    def as_run(run: dict) -> Run:  # ranx drops a query without hits: keep it, scoring 0 everywhere
        return Run({q: (run.get(q) or {"__none__": 0.0}) for q in queries})

    two = [as_run(runs["bm25"]), as_run(runs["student"])]
    rows = {"rrf (k = 60)": fuse(two, method="rrf", params={"k": project.cfg.evaluate.rrf_k}).to_dict()}
    for norm, label in (("min-max", "min-max"), ("zmuv", "z-score")):
        for w in WEIGHTS:
            rows[f"{label}, student {w:g}"] = fuse(two, norm=norm, method="wsum",
                                                  params={"weights": [1 - w, w]}).to_dict()
    base = {n: ndcg(runs[n]) for n in ("bm25", "student", "pipeline", "hybrid")}
    table = [{"system": n, "ndcg@10": float(v.mean())} for n, v in base.items()]
    for label, run in rows.items():
        v = ndcg(run)
        table.append({"system": f"BM25 + student, {label}", "ndcg@10": float(v.mean()),
                      "p_vs_pipeline": float(ttest_rel(v, base["pipeline"]).pvalue),
                      "p_vs_rrf": None if label.startswith("rrf") else
                      float(ttest_rel(v, ndcg(rows["rrf (k = 60)"])).pvalue)})
    print(f"| {project.cfg.data.name}: system | NDCG@10 | p vs pipeline | p vs RRF |\n|---|---|---|---|")
    for r in table:
        fmt = (lambda x: "—" if x is None else f"{x:.3g}")
        print(f"| {r['system']} | {r['ndcg@10']:.4f} | {fmt(r.get('p_vs_pipeline'))} | {fmt(r.get('p_vs_rrf'))} |")
    name = f"fusion-{project.cfg.data.name}-{hardware_label()}" + (f"-seed{seed}" if seed is not None else "")
    write_result(out, name, {"dataset": project.cfg.data.name, "queries": len(queries),
                             "seed": project.cfg.train.seed, "hybrid": {
                                 "fusion": project.cfg.evaluate.hybrid_fusion,
                                 "weight": project.cfg.evaluate.hybrid_weight}, "rows": table})


if __name__ == "__main__":
    typer.run(main)
