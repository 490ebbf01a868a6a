"""Training settings side by side, over seeds: what each does to the student within the profile's budget.

    .venv/bin/python bench/variants.py --config examples/scifact.toml --seed 42 --seed 1 --seed 2 \\
        --variant train.list_size=16 --variant train.list_size=4 --variant "train.max_length=256"

``--student log_only`` reads the log-only student instead (no judgment read in its training; evaluated with BM25
and the pipeline, no hybrid): ``--variant train.teacher_positives=1 --student log_only``; ``--student judgments``
the judgments-only control.

The baseline (the config and profile as they are) and each variant (``section.field=value``, several joined by
``;``; a value is read as JSON where it parses, else as a string) train one student per seed (``train.seed``) on
the same cache: index, candidates, teacher, BM25 and the pipeline are computed once and shared, and only what a
setting changes (the student, its deploy, its evaluation) is computed again. Each run is the loop itself
(``Project.run()``, evaluate.systems bm25, pipeline, student, hybrid), so a rerun finds every finished run in the
cache and only reports. The quick profile's training budget is wall-clock time: run it with the cores to itself.

Prints, per variant: the seeds, the student's and the hybrid's NDCG@10 (mean ± sample standard deviation over the
seeds), the student's agreement with the pipeline on its own candidates (NDCG@10 against the pipeline's order), the
training steps each seed took within the budget, and the training seconds; then paired t-tests over the test queries (each
query's NDCG@10 averaged over the seeds; scipy's ``ttest_rel``) of each variant's student against the baseline's,
and of the baseline's student against the pipeline. Writes
``bench/results/variants-<dataset>-<profile>-<hardware>[-<name>].json`` after every run (``finished`` of ``planned``),
so a comparison stopped part way keeps what it measured.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, ensure_cluster, hardware_label,
    prepare_env, write_result,
)

SYSTEMS = ["bm25", "pipeline", "student", "hybrid"]
#: ``--student``: which trained student the table reads, the train cache it is in, the systems evaluated
STUDENTS = {"student": ("_train_cache", SYSTEMS), "log_only": ("_log_only_cache", ["bm25", "pipeline", "log_only"]),
            "judgments": ("_control_cache", ["bm25", "pipeline", "judgments"])}
KEEP_VERSIONS = 50


def parse_variant(spec: str) -> dict[str, Any]:
    """``"train.list_size=16;train.max_length=256"`` -> nested overrides for :func:`esdistill.load_config`."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        path, eq, raw = part.partition("=")
        if not eq or not path.strip() or "." not in path:
            raise typer.BadParameter(f"{part!r}: write section.field=value, e.g. train.list_size=16")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        node = out
        keys = path.strip().split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def one_run(config: Path, profile: str, overrides: dict, student: str = "student") -> dict[str, Any]:
    """The loop with these overrides; what the table needs from its report and its train record. ``student``
    (``log_only``): the log-only student is the one read, under the name ``student``."""
    from esdistill import load_config
    from esdistill.pipeline import Project

    cfg = load_config(config, profile, **overrides)
    project = Project(cfg)
    # the log-only student (or the control) alone: evaluation builds what it measures (index, BM25, the pipeline,
    # that student and its index) and nothing else — the loop would also train and deploy the default student
    report = json.loads(Path((project.run() if student == "student" else project.evaluate())["json"]).read_text())
    train = getattr(project, STUDENTS[student][0])().info()
    budget = train.get("budget") or {}
    sysd = dict(report["systems"])
    sysd["student"] = sysd.get(student)
    return {
        "seed": cfg.train.seed, "evaluate_key": report.get("evaluate_key"),
        "ndcg@10": {n: sysd[n]["ndcg@10"] for n in SYSTEMS if sysd.get(n)},
        "per_query": {n: dict(zip(sysd[n]["per_query"]["qids"], sysd[n]["per_query"]["ndcg@10"]))
                      for n in ("student", "pipeline") if sysd.get(n)},
        "agreement": (report.get("agreement_with_pipeline") or {}).get(student, {}).get("ndcg@10"),
        "steps": train.get("steps"), "passes": budget.get("passes"), "passes_kept": budget.get("passes_kept"),
        "train_seconds": train.get("seconds"), "estimate_seconds": budget.get("estimate_seconds"),
        "dev_agreement": [train.get("agreement_before", {}).get("ndcg@10"),
                          train.get("agreement_after", {}).get("ndcg@10")],
    }


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _per_query_mean(runs: list[dict], system: str) -> dict[str, float]:
    qids = runs[0]["per_query"][system]
    return {q: statistics.fmean(r["per_query"][system][q] for r in runs) for q in qids}


def main(
    config: ConfigOpt = DEFAULT_CONFIG,
    profile: ProfileOpt = "quick",
    variant: Annotated[list[str], typer.Option(help="section.field=value[;...] set on the baseline (repeat)")] = [],  # noqa: B006
    seed: Annotated[list[int], typer.Option(help="train.seed (repeat); default: the config's")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="suffix of the result file")] = None,
    workdir: ConfigWorkdirOpt = None,
    out: OutOpt = DEFAULT_OUT,
    start_cluster: Annotated[bool, typer.Option(help="start the local test cluster if no URL is set")] = True,
    student: Annotated[str, typer.Option(help="the student the table reads: student (the default's), log_only "
                                              "(no judgment read in training) or judgments (the control); the last "
                                              "two are evaluated without the hybrid")] = "student",
):
    prepare_env()
    from esdistill import load_config
    from esdistill.config import _deep_merge as merge

    # every run's student index stays behind the alias (not in any key), so a rerun reports without deploying again
    if student not in STUDENTS:
        raise typer.BadParameter(f"--student {student!r}: one of {', '.join(STUDENTS)}")
    base: dict[str, Any] = {"evaluate": {"systems": STUDENTS[student][1]}, "deploy": {"keep_versions": KEEP_VERSIONS}}
    if workdir:
        base["workdir"] = str(workdir.resolve())
    specs = {"baseline": {}} | {v: parse_variant(v) for v in variant}
    cfg = load_config(config, profile, **base)  # refuses a bad config before any training
    for spec, ov in specs.items():
        load_config(config, profile, **merge(base, ov))
    if start_cluster:
        ensure_cluster(cfg)
    seeds = seed or [cfg.train.seed]
    stem = (f"variants-{cfg.data.name}-{profile}-{hardware_label()}"
            + {"log_only": "-log-only", "judgments": "-control"}.get(student, "")
            + (f"-{name}" if name else ""))
    results: dict[str, list[dict]] = {}
    for spec, ov in specs.items():
        for s in seeds:
            print(f"── {spec}, seed {s}", flush=True)
            results.setdefault(spec, []).append(one_run(config, profile, merge(merge(base, ov), {"train": {"seed": s}}),
                                                         student))
            # after every run, not only the last: a long comparison stopped part way keeps what it measured
            write_result(out, stem, summarise(results, specs, seeds, cfg.data.name, profile, student))
    summary = summarise(results, specs, seeds, cfg.data.name, profile, student)

    def f(ms):
        return "—" if ms is None else (f"{ms[0]:.3f}" if ms[1] != ms[1] else f"{ms[0]:.3f} ± {ms[1]:.3f}")

    print(f"\n{cfg.data.name}, {profile} profile: BM25 {summary['bm25']:.3f}, pipeline {summary['pipeline']:.3f}; "
          f"seeds {seeds}; the student read: {student}\n")
    print("| variant | student NDCG@10 | p vs baseline | hybrid NDCG@10 | agreement with the pipeline | steps "
          "| train s |\n|---|---|---|---|---|---|---|")
    for r in summary["rows"]:
        steps = ", ".join(f"{x['steps']}" for x in r["runs"])
        secs = statistics.fmean(x["train_seconds"] or 0 for x in r["runs"])
        p = "—" if r["p_student_vs_baseline"] is None else f"{r['p_student_vs_baseline']:.2g}"
        print(f"| {r['variant']} | {f(r['student'])} | {p} | {f(r['hybrid'])} | {f(r['agreement'])} | {steps} | "
              f"{secs:.0f} |")
    print("\nbaseline student vs the pipeline (per-query NDCG@10 over the seeds, paired t-test): "
          f"p = {summary['p_baseline_student_vs_pipeline']:.2g}")


def summarise(results: dict[str, list[dict]], specs: dict[str, dict], seeds: list[int], dataset: str,
              profile: str, student: str) -> dict[str, Any]:
    """The result file's payload from the runs finished so far: per variant the student's and the hybrid's
    NDCG@10 (mean ± sd over its seeds), the agreement, paired t-tests of each variant's student against the
    baseline's and of the baseline's against the pipeline (per-query NDCG@10 averaged over the seeds)."""
    from scipy.stats import ttest_rel

    base_runs = results["baseline"]
    base_q = _per_query_mean(base_runs, "student")
    rows = []
    for spec, runs in results.items():
        st = _mean_sd([r["ndcg@10"]["student"] for r in runs])
        hy = _mean_sd([r["ndcg@10"]["hybrid"] for r in runs]) if all("hybrid" in r["ndcg@10"] for r in runs) else None
        ag = [r["agreement"] for r in runs if r["agreement"] is not None]
        q = _per_query_mean(runs, "student")
        common_q = sorted(set(q) & set(base_q))
        p = (None if spec == "baseline" else
             float(ttest_rel([q[k] for k in common_q], [base_q[k] for k in common_q]).pvalue))
        rows.append({"variant": spec, "overrides": specs[spec], "seeds": [r["seed"] for r in runs],
                     "student": st, "hybrid": hy, "agreement": _mean_sd(ag) if ag else None,
                     "p_student_vs_baseline": p, "runs": [{k: v for k, v in r.items() if k != "per_query"}
                                                          for r in runs]})
    pipe_q = _per_query_mean(base_runs, "pipeline")
    common_q = sorted(set(pipe_q) & set(base_q))
    p_pipe = float(ttest_rel([base_q[k] for k in common_q], [pipe_q[k] for k in common_q]).pvalue)
    return {"dataset": dataset, "profile": profile, "seeds": seeds,
            "bm25": statistics.fmean(r["ndcg@10"]["bm25"] for r in base_runs),
            "pipeline": statistics.fmean(r["ndcg@10"]["pipeline"] for r in base_runs), "student": student,
            "p_baseline_student_vs_pipeline": p_pipe, "finished": sum(len(r) for r in results.values()),
            "planned": len(specs) * len(seeds), "rows": rows}

if __name__ == "__main__":
    typer.run(main)
