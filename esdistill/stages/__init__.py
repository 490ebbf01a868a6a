"""The stages of the loop: the table (:data:`STAGES`: name, whether it needs the cluster, what its key reads,
what it writes, which class does its work), the key inputs (:class:`StageKeys`), and the orders in which ``run``
and ``run --offline`` go through them.

Each stage's work is one module here, a small class over the project's context (:class:`~.base.StageWork`):

    index            IndexStage            the BM25 index and its identity (the index key)
    candidates       CandidatesStage       BM25's (or the user's search request's) top-k of the training queries
    test_candidates  TestCandidatesStage   BM25's answers to the test queries, for the pipeline offline
    ict              IctStage              the corpus teacher: inverse-cloze pairs, its fit
    teacher_fit      TeacherFitStage       the teacher cross-fitted on the judgments
    teacher          TeacherStage          the pairs to label and the teacher's (or each member's) scores
    labels           Labels                the labels' fusion (BM25 weight, ensemble weights) and their report
    train            TrainStage            the student, the judgments-only control, the log-only student
    embed            EmbedStage            corpus and test-query vectors computed ahead (offline)
    deploy           DeployStage           the versioned dense index and its alias
    evaluate         EvaluateStage         every system over the test queries, the report, the results index
    export           ExportStage           the student traced for the cluster's ML nodes; the query encoder
    monitor          MonitorStage          the deployed student's agreement with the pipeline on recent queries
    sweep            SweepStage            approximate vs exact kNN per index type
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from .keys import (
    LATER_DEFAULTS,
    STAGES,
    Stage,
    StageKeys,
    budget_key,
    pairs_fingerprint,
    train_settings,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Project

#: Every class of stage work (``module:Class`` under esdistill/stages/), including those outside the cached
#: table's names (the labels, export, monitor).
WORK = ("index:IndexStage", "candidates:CandidatesStage", "test_candidates:TestCandidatesStage", "ict:IctStage",
        "teacher_fit:TeacherFitStage", "teacher:TeacherStage", "labels:Labels", "train:TrainStage",
        "embed:EmbedStage", "deploy:DeployStage", "evaluate:EvaluateStage", "export:ExportStage",
        "monitor:MonitorStage", "sweep:SweepStage")


def work_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


@cache
def methods() -> dict[str, str]:
    """Which stage class answers each of the project's stage methods (``"teacher_pairs" -> "teacher:TeacherStage"``):
    :class:`~esdistill.pipeline.Project` hands these names to its stages."""
    out: dict[str, str] = {}
    for spec in WORK:
        for name in vars(work_class(spec)):
            if not name.startswith("__"):
                assert name not in out, f"{name} is defined by both {out.get(name)} and {spec}"
                out[name] = spec
    return out


def run(project: Project) -> dict[str, Any]:
    """All stages in order (finished stages are cache hits); the evaluation's report."""
    project.index()
    project.candidates()
    if project.fits_needed():
        project.teacher_fit()
    project.teacher()
    project.train()
    project.deploy()
    return project.evaluate()


def run_offline(project: Project) -> dict[str, Any]:
    """Every stage that needs no cluster, from the bundle: teacher fit and scores, the student and (when
    evaluated) the control, the corpus and test-query vectors of every served model, the pipeline's
    rankings of the test queries."""
    from ..errors import InputError

    if project.bundle is None:
        raise InputError("run_offline needs a bundle", hint="esdistill run --offline --bundle FOLDER")
    systems = project.cfg.evaluate.systems
    done: dict[str, Any] = {}
    if project.fits_needed():
        done["teacher fit"] = project.teacher_fit()
    done["teacher"] = project.teacher()
    done["train"] = project.train()
    if "judgments" in systems:
        done["train (judgments only)"] = project.train_judgments()
    if "log_only" in systems:
        done["train (log only)"] = project.train_log_only()
    for which in project.served_systems():
        done[f"embed ({which})"] = project.embed(which)
        done[f"query vectors ({which})"] = project.query_vectors(which)
    if ("pipeline" in systems and project.cfg.teacher.kind != "request"
            and project.request_member_search() is None):
        done["pipeline"] = project.pipeline_offline()  # a search request (teacher or member) runs in the cluster
    return done


__all__ = ["LATER_DEFAULTS", "STAGES", "Stage", "StageKeys", "WORK", "budget_key", "methods", "pairs_fingerprint",
           "run", "run_offline", "train_settings", "work_class"]
