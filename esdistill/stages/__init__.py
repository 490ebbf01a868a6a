"""The stages of the loop. Read this first, then :mod:`.keys` (the table), then the stage you care about.

- :data:`STAGES` (:mod:`.keys`): every cached stage's name, whether it needs the cluster, what its key reads and
  what it writes, in words — and which class does its work. The one place that says which stages need the cluster.
- :class:`StageKeys` (:mod:`.keys`): the key inputs of every stage, each made by the stage's own class.
- Each stage's work is one module here, a small class over the project's context (:class:`~.base.StageWork`:
  its key inputs ``<name>_inputs``, its cache, its run, and its part in ``run --offline`` and in bundles):

    index            IndexStage            the BM25 index and its identity (the index key)
    candidates       CandidatesStage       BM25's (or the user's search request's) top-k of the training queries
    ict              IctStage              the corpus teacher: inverse-cloze pairs, its fit
    test_candidates  TestCandidatesStage   BM25's answers to the test queries, for the pipeline offline
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

:func:`run` is the loop's order; :func:`run_offline`, :func:`bundle_out` (what ``bundle export`` carries) and
:func:`bundle_back` (what ``bundle pack`` returns) go through every stage in :data:`WORK`'s order and ask each.
:class:`~esdistill.pipeline.Project` answers a stage's methods (``project.train()``) through :func:`methods`.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from .keys import LATER_DEFAULTS, STAGES, Stage, StageKeys, budget_key, pairs_fingerprint, train_settings

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Project

#: Every class of stage work (``module:Class`` under esdistill/stages/), including those outside the cached
#: table's names (the labels, export, monitor).
WORK = ("index:IndexStage", "candidates:CandidatesStage", "ict:IctStage", "test_candidates:TestCandidatesStage",
        "teacher_fit:TeacherFitStage", "teacher:TeacherStage", "labels:Labels", "train:TrainStage",
        "embed:EmbedStage", "deploy:DeployStage", "evaluate:EvaluateStage", "export:ExportStage",
        "monitor:MonitorStage", "sweep:SweepStage")


def work_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


@cache
def methods() -> dict[str, str]:
    """Which stage class answers each of the project's stage methods (``"teacher_pairs" -> "teacher:TeacherStage"``):
    :class:`~esdistill.pipeline.Project` hands these names to its stages (not the hooks every stage has:
    :class:`~.base.StageWork`'s)."""
    from .base import StageWork

    out: dict[str, str] = {}
    for spec in WORK:
        for name in vars(work_class(spec)):
            if not name.startswith("__") and name not in vars(StageWork):
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


def parts(project: Project) -> list:
    """Every stage's work over ``project``, in the order of :data:`WORK` (the loop's order)."""
    return [project.part(spec) for spec in WORK]


def run_offline(project: Project) -> dict[str, Any]:
    """Every stage that needs no cluster, from the bundle, in the loop's order (each stage's
    :meth:`~.base.StageWork.run_offline`): teacher fit and scores, the student and (when evaluated) the control
    and the log-only student, the corpus and test-query vectors of every served model, the pipeline's rankings of
    the test queries."""
    from ..errors import InputError

    if project.bundle is None:
        raise InputError("run_offline needs a bundle", hint="esdistill run --offline --bundle FOLDER")
    done: dict[str, Any] = {}
    for work in parts(project):
        done.update(work.run_offline())
    return done


def bundle_out(project: Project) -> dict[str, Any]:
    """What a bundle carries of the cluster-side stages: {stage: cache}, each made first where missing
    (each stage's :meth:`~.base.StageWork.bundle_out`)."""
    return {cache.stage: cache for work in parts(project) for cache in work.bundle_out()}


def bundle_back(project: Project, weights: tuple[str, ...], vectors: tuple[str, ...] | None) -> list:
    """What comes back from the offline side: [(cache, whether its weights travel)] of every stage, finished
    ones only (each stage's :meth:`~.base.StageWork.bundle_back`)."""
    return [(c, keep) for work in parts(project) for c, keep in work.bundle_back(weights, vectors)
            if c is not None and c.done]


__all__ = ["LATER_DEFAULTS", "STAGES", "Stage", "StageKeys", "WORK", "budget_key", "bundle_back", "bundle_out",
           "methods", "pairs_fingerprint", "parts", "run", "run_offline", "train_settings", "work_class"]
