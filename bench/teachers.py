"""Teachers side by side: each one's label quality on the judged training queries, alone and fused with BM25, and
the ensembles of them — the numbers that choose the quick profile's teacher (issue 12, items 2 and 5).

    .venv/bin/python bench/teachers.py --config examples/scifact.toml --workdir .esdistill-bench \\
        --teacher judgments --teacher corpus --teacher corpus+judgments --ensemble fit,corpus,bm25

Every teacher runs through the project's own stages (fits and scores are cached: a teacher that a bench run
already fitted costs nothing here). "Alone" is NDCG@10 of the teacher's order of each judged query's BM25
candidates; "fused" is its z-score blend with BM25 at the weight chosen on those queries, and "held out" the
same with the weight chosen on the other half of them (the honest figure). Each query was labelled by a model
that never saw it. Writes bench/results/teachers-<dataset>-<profile>-<hardware>.json and prints a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common import (
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ConfigOpt, OutOpt, ProfileOpt, WorkdirOpt, hardware_label,
    prepare_env, write_result,
)


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    profile: ProfileOpt = "quick",
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    teacher: Annotated[list[str], typer.Option(
        help="a fitted teacher's source: judgments, corpus, corpus+judgments (repeat; none by default: a fit "
             "takes long)")] = [],  # noqa: B006
    ensemble: Annotated[list[str], typer.Option(help="an ensemble's members, comma-separated (repeat)")] = [],  # noqa: B006
    request: Annotated[Path | None, typer.Option(help="a search request body (JSON, \"{{query}}\"): a teacher alone, "
                                                "and the member `request` of the ensembles")] = None,
    out: OutOpt = DEFAULT_OUT,
):
    prepare_env()
    from esdistill import load_config
    from esdistill.pipeline import Project

    rows = []
    req = {"request": str(request.resolve())} if request else {}
    variants = ([(f"fit: {s}", {"teacher": {"fit": {"source": s}}}) for s in teacher]
                + ([(f"request: {request.name}", {"teacher": req})] if request else [])
                + [(f"ensemble: {e}", {"teacher": {"ensemble": e.split(","),
                                                   **(req if "request" in e.split(",") else {})}}) for e in ensemble])
    for name, over in variants:
        project = Project(load_config(config, profile, workdir=str(workdir.resolve()), **over))
        project.candidates()
        if project.fits_needed():
            project.teacher_fit()
        info = project.teacher()
        fit_s = sum((c.info().get("seconds") or 0.0) for c, need in
                    ((project._ict_cache(), "ict"), (project._fit_cache(), "judged"))
                    if need in project.fits_needed() and c.done)
        caches = project.member_caches() if project.cfg.teacher.kind == "ensemble" else [
            c for c in (project._teacher_cache(True), project._teacher_cache(False)) if c]
        score_s = sum(c.info().get("seconds") or 0.0 for c in caches)
        if "ensemble" in info:
            e = info["ensemble"]
            row = {"teacher": name, "alone": e["alone"], "weights": dict(zip(e["members"], e["weights"], strict=True)),
                   "fused": e["label_quality_fused"]["teacher_ndcg@10"],
                   "heldout": (e["label_quality_fused_heldout"] or {}).get("ndcg@10"),
                   "bm25": e["label_quality_fused"]["bm25_ndcg@10"], "queries": e["chosen_on"]}
        else:
            q = info["label_quality"]
            held = info.get("label_quality_fused_heldout") or {}
            row = {"teacher": name, "alone": q["teacher_ndcg@10"], "weights": {"bm25": info.get("bm25_weight")},
                   "fused": info.get("label_quality_fused", q)["teacher_ndcg@10"],
                   "heldout": held.get("teacher_ndcg@10"), "bm25": q["bm25_ndcg@10"], "queries": q["queries"]}
        rows.append({**row, "fit_seconds": fit_s, "scoring_seconds": score_s, "key": project.keys.scorer()})

    print("| teacher | alone | weights | fused | held out | BM25 | fit s | scoring s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        alone = (", ".join(f"{k} {v:.3f}" for k, v in r["alone"].items()) if isinstance(r["alone"], dict)
                 else f"{r['alone']:.3f}")
        weights = ", ".join(f"{k} {v:g}" for k, v in r["weights"].items() if v is not None)
        held = "—" if r["heldout"] is None else f"{r['heldout']:.3f}"
        print(f"| {r['teacher']} | {alone} | {weights} | {r['fused']:.3f} | {held} | {r['bm25']:.3f} | "
              f"{r['fit_seconds']:.0f} | {r['scoring_seconds']:.0f} |")
    cfg = load_config(config, profile)
    write_result(out, f"teachers-{cfg.data.name}-{profile}-{hardware_label()}", {"rows": rows, "profile": profile})


if __name__ == "__main__":
    typer.run(main)
