"""The headline benchmark: every system side by side on a real cluster, one machine, one run.

    .venv/bin/python bench/run.py --profile quick            # this machine's CPU
    .venv/bin/python bench/run.py --profile full --hardware h100

Train queries build the teacher and the students; test queries evaluate. Systems: BM25, the zero-shot base
bi-encoder, the pipeline (BM25 top-N → teacher), the distilled student, the student trained on judgments
only (no teacher: what distillation adds), and hybrid student + BM25. Paired t-tests (ranx) against BM25 and
against the pipeline. Writes ``bench/results/<dataset>-<profile>-<hardware>.{json,md,png}``: every number, the
exact command, library versions and hardware, and a quality-vs-latency plot.

Everything runs through :class:`esdistill.pipeline.Project` with the run's cache: a rerun only evaluates; the
stage times in the result file are those of the process that computed each stage (``cached`` otherwise).
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, ensure_cluster, hardware, prepare_env,
)

from esdistill.evaluate import HEADLINE_SYSTEMS  # noqa: E402

SYSTEMS = HEADLINE_SYSTEMS
LABELS = {"bm25": "BM25", "zero_shot": "zero-shot base bi-encoder", "pipeline": "pipeline (BM25 → teacher)",
          "student": "distilled student (kNN)", "judgments": "student on judgments only (kNN)",
          "log_only": "student from the log alone, no judgments (kNN)",
          "hybrid": "hybrid (student + BM25)"}


def stage_times(project) -> dict[str, float | None]:
    """Each stage's wall time when it was computed, read from its cache record (so a rerun that only evaluates
    still reports what the cached stages cost); index and evaluate from this process."""
    def recorded(cache):
        return cache.info().get("seconds") if cache.done else None

    fits = project.fits_needed()
    out = {"index": project.stage_seconds.get("index"), "candidates": recorded(project._candidates_cache()),
           "inverse-cloze pairs": recorded(project._ict_pairs_cache()) if "ict" in fits else None,
           "teacher fit (corpus)": recorded(project._ict_cache()) if "ict" in fits else None,
           "teacher fit": recorded(project._fit_cache()) if "judged" in fits else None,
           "teacher": (sum(recorded(c) or 0.0 for c in project.member_caches())
                       if project.cfg.teacher.kind == "ensemble" else recorded(project._teacher_cache())),
           "teacher (unjudged)": recorded(unjudged) if (unjudged := project._teacher_cache(judged=False)) else None,
           "train": recorded(project._train_cache()),
           "train (judgments only)": recorded(project._control_cache()),
           "train (log only)": recorded(project._log_only_cache())}
    for which in project.dense_models():
        rec = project.workdir / "deploy" / f"{project._deploy_key(which)}.json"
        out["deploy" if which == "student" else f"deploy ({which})"] = (
            json.loads(rec.read_text()).get("seconds") if rec.exists() else None)
    out["evaluate"] = project.stage_seconds.get("evaluate")
    return out


def stage_estimates(project) -> dict[str, float]:
    """Each stage's wall time as estimated before it was spent (issue 24): this process's progress bars, and the
    training plan its record keeps (so a rerun that finds the student cached still shows it)."""
    out = dict(project.stage_estimates)
    for name, cache in (("train", project._train_cache()), ("train (judgments only)", project._control_cache()),
                        ("train (log only)", project._log_only_cache())):
        est = (cache.info().get("budget") or {}).get("estimate_seconds") if cache.done else None
        if name not in out and est is not None:
            out[name] = est
    return out


def table(summary: dict) -> str:
    """The seed-style table: latency, quality, share of the pipeline's NDCG@10 gain over BM25, significance."""
    import math

    from esdistill.evaluate import p_value, share_of_gain_reportable

    p_b, p_p = summary.get("p_vs_bm25", {}), summary.get("p_vs_pipeline", {})
    gain_ok, why_not = share_of_gain_reportable(summary)
    lines = ["| system | p50 / p95 ms | NDCG@10 | Recall@100 | MRR@10 | share of pipeline gain |",
             "|---|---|---|---|---|---|"]
    for name in [s for s in SYSTEMS if s in summary["systems"]]:
        s = summary["systems"][name]
        marks = ("†" if p_value(p_b, name) < 0.05 else "") + ("‡" if p_value(p_p, name) < 0.05 else "")
        share = s.get("share_of_gain")
        share_s = ("—" if name in ("bm25", "pipeline") or share is None or math.isnan(share) else
                   f"{share:.0%}" if gain_ok else "n/a")
        lat = s["latency_ms"]
        lines.append(f"| {LABELS[name]} | {lat['p50']:.1f} / {lat['p95']:.1f} | {s['ndcg@10']:.3f}{marks} | "
                     f"{s['recall@100']:.3f} | {s['mrr@10']:.3f} | {share_s} |")
    if why_not:
        lines += ["", why_not]
    lines += ["", f"{summary['queries']} test queries. NDCG@10 differs at p < 0.05 (paired t-test, ranx) from BM25 †, "
              "from the pipeline ‡. Latency: one query at a time, client wall time (query encoding, reranking "
              "and the round trip to Elasticsearch included)."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    from esdistill.evaluate import plot as draw

    draw({**summary, "systems": {n: summary["systems"][n] for n in SYSTEMS if n in summary["systems"]}}, path, title,
         LABELS)


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    hardware_name: Annotated[str | None, typer.Option("--hardware", help="label in the file name (default: "
                                                      "the GPU's model, else <cores>cpu)")] = None,
    out: OutOpt = DEFAULT_OUT,
    workdir: ConfigWorkdirOpt = None,
    start_cluster: Annotated[bool, typer.Option(help="start the local test cluster if no URL is set")] = True,
):
    prepare_env()
    from esdistill import load_config
    from esdistill.pipeline import Project, environment
    from esdistill.jsonutil import dumps
    from esdistill.teacher import heldout_fusion_quality, label_quality

    overrides: dict = {"evaluate": {"systems": SYSTEMS}}
    if workdir:
        overrides["workdir"] = str(workdir.resolve())
    cfg = load_config(config, profile, **overrides)
    project = Project(cfg)
    if start_cluster:
        ensure_cluster(cfg)
    report = project.run()
    data = json.loads(Path(report["json"]).read_text())
    summary = {k: data[k] for k in ("systems", "p_vs_bm25", "p_vs_pipeline", "queries")}
    hw = hardware()
    label = hardware_name or hw["label"]
    stem = f"{cfg.data.name}-{cfg.profile}-{label}"
    out.mkdir(parents=True, exist_ok=True)
    sysd = summary["systems"]
    speed = {}
    if "pipeline" in sysd:
        for name in ("student", "hybrid"):
            if name in sysd:
                speed[f"pipeline_over_{name}_p50"] = sysd["pipeline"]["latency_ms"]["p50"] / sysd[name]["latency_ms"]["p50"]
    teacher_info = project._teacher_cache().info()
    result = {
        "command": " ".join(shlex.quote(a) for a in ["bench/run.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": cfg.data.name, "profile": cfg.profile, "hardware": hw, "environment": environment(),
        "elasticsearch": next(iter(project.client.nodes.info().body["nodes"].values()))["version"],
        "summary": summary, "speedup": speed, "stage_seconds": stage_times(project),
        "stage_seconds_this_process": project.stage_seconds, "stage_estimates": stage_estimates(project),
        "teacher": {k: teacher_info.get(k) for k in ("pairs", "queries")} | {
            "label_quality": label_quality(project.raw_scores_frame(), project.dataset.train_qrels),
            "label_quality_fused": label_quality(project.scores_frame(), project.dataset.train_qrels),
            "label_quality_fused_heldout": heldout_fusion_quality(project.raw_scores_frame(),
                                                                  project.dataset.train_qrels),
            "bm25_weight": project.label_weight(), "pipeline_bm25_weight": project.pipeline_weight()},
        "train": {k: v for k, v in project._train_cache().info().items() if k != "model"},
        "train_judgments": {k: v for k, v in project._control_cache().info().items() if k != "model"},
        "train_log_only": {k: v for k, v in project._log_only_cache().info().items() if k != "model"},
        "config": json.loads(cfg.model_dump_json()),
        "report": report["json"],
    }
    md = f"## {cfg.data.name} — {cfg.profile} profile — {label}\n\n" + table(summary)
    if speed:
        md += "\n" + ", ".join(f"{k.replace('_', ' ')}: {v:.0f}×" for k, v in speed.items()) + "\n"
    est = result["stage_estimates"]
    md += "\n| stage | estimate (s) | wall time (s) |\n|---|---|---|\n" + "".join(
        f"| {k} | {f'{est[k]:.1f}' if k in est else '—'} | {'—' if v is None else f'{v:.1f}'} |\n"
        for k, v in result["stage_seconds"].items())
    (out / f"{stem}.json").write_text(dumps(result, indent=2))
    (out / f"{stem}.md").write_text(md)
    plot(summary, out / f"{stem}.png", f"{cfg.data.name} {cfg.profile} profile, {label}: quality vs latency")
    print(md)
    print(f"written: {out / stem}.{{json,md,png}}")


if __name__ == "__main__":
    typer.run(main)
