"""Every stage of the loop in one table, and the inputs each one's cache key is made of.

A stage's key is the fingerprint of its inputs (:class:`~esdistill.cache.StageCache`). Inputs are *content*:
the query texts a stage reads, the judgments, the corpus's fingerprint or the user index's write state, the
models' fingerprints, the settings that change the output — and upstream stages by *their* keys. So a change
recomputes exactly the stages that read it: editing a test judgment re-evaluates and touches no model; adding
a query log scores and trains again but neither refits the teacher, re-scores the judged queries nor retrains
the control.

``needs_cluster`` says which stages must run where Elasticsearch is; the others only need the files the
cluster-side stages wrote (``esdistill bundle``), so they can run on a machine that cannot reach the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..config import PROFILES, fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from ..cache import StageCache
    from ..pipeline import Project


@dataclass(frozen=True)
class Stage:
    name: str  #: the cache folder under the work dir
    needs_cluster: bool
    reads: str  #: what its key is made of, in words (the code is :class:`StageKeys`)
    writes: str
    work: str = ""  #: the module (under esdistill/stages/) and class that run it: ``"train:TrainStage"``


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("index", True, "the corpus's content and the BM25 mapping; a user's index (never written): its UUIDs, "
          "document counts and write sequence numbers, and the text fields", "the BM25 index", work="index:IndexStage"),
    Stage("candidates", True, "the index's key, the training queries' texts, candidates.k; teacher.request's "
          "body when the teacher is a search request", "candidates.parquet: BM25 top-k of every training query "
          "(or the request's top-k, its _score in `request`)", work="candidates:CandidatesStage"),
    Stage("test-candidates", True, "the index's key, the evaluated test queries' texts, the rerank depth, "
          "evaluate.k",
          "candidates.parquet: BM25 top-N of every test query (the pipeline's input)",
          work="test_candidates:TestCandidatesStage"),
    Stage("ict-pairs", True, "the index's key, the corpus teacher's sampling settings (teacher.fit.corpus), every "
          "test query of the split, evaluated or not (never drawn as sentences)", "pairs.parquet: inverse-cloze "
          "sentences, the rest of their document, BM25's negatives", work="ict:IctStage"),
    Stage("teacher-ict", False, "the ict-pairs key, teacher.fit.corpus, the base model",
          "model-full/: the cross-encoder fitted on the corpus alone", work="ict:IctStage"),
    Stage("teacher-fit", False, "the index's key, the judged training queries and their judgments, teacher.fit, "
          "the base model", "model-<fold>/ and model-full/: cross-fitted cross-encoders",
          work="teacher_fit:TeacherFitStage"),
    Stage("teacher", False, "the judged queries' candidate pairs and texts, the scorer (a search request: its "
          "body), teacher.max_length", "scores.parquet: raw teacher logits (each query held out from its scorer), "
          "or the request's _score", work="teacher:TeacherStage"),
    Stage("teacher-unjudged", False, "the unjudged queries' (query log, pseudo-queries) candidate pairs and texts, "
          "the full scorer, teacher.max_length", "scores.parquet", work="teacher:TeacherStage"),
    Stage("train", False, "both teacher keys, the BM25 weight of the labels, train, the base model",
          "model/: the distilled student", work="train:TrainStage"),
    Stage("train-log", False, "BM25's candidate pairs and the teacher that scores them, the fusion chosen without "
          "judgments, train (use_judgments off), the base model", "model/: the log-only student (no judgment read)",
          work="train:TrainStage"),
    Stage("train-judgments", False, "the judged queries' candidate pairs, the judgments, train, the base model",
          "model/: the control student (no teacher)", work="train:TrainStage"),
    Stage("deploy", True, "the served model's key, the corpus (its fingerprint; a user's index by name, synced "
          "on every deploy), deploy settings, the effective max length, the text fields",
          "the dense index <alias>-<key>; the alias moved onto it", work="deploy:DeployStage"),
    Stage("embed", False, "the model's key, the index's key, the effective max length, the text fields",
          "vectors.npy (float16), ids, text hashes: the corpus embedded ahead of a deploy", work="embed:EmbedStage"),
    Stage("query-vectors", False, "the model's key, the evaluated test queries, the student's max length",
          "vectors.npy (float16): the test queries, for evaluating a model that is not on the machine",
          work="embed:EmbedStage"),
    Stage("evaluate-system", True, "one system's inputs (its model or index keys, the index's write state), the "
          "evaluated test queries, evaluate settings (the pipeline's can be computed offline from test-candidates)",
          "run.json: its ranking and latency of every test query", work="evaluate:EvaluateStage"),
    Stage("evaluate", True, "every evaluated system's key, the test judgments", "reports/…: report.md, report.json",
          work="evaluate:EvaluateStage"),
    Stage("sweep-vectors", False, "the student's key, the corpus, the effective max length, the test queries",
          "docs.npy: corpus vectors for the index-settings sweep", work="sweep:SweepStage"),
]}


def pairs_fingerprint(frame: pd.DataFrame) -> str:
    """A candidate-pairs frame by content: which (query, document) pairs, at which BM25 rank and score. Written
    out value by value in Python (not through pandas' string conversion, which changed in pandas 3), so both
    sides of a bundle — whatever their pandas — compute the same key."""
    cols = [c for c in ("qid", "docid", "rank", "bm25", "source") if c in frame]
    rows = sorted(zip(*(frame[c].tolist() for c in cols), strict=True))
    text = "\n".join("\t".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row) for row in rows)
    return fingerprint(text)


#: Settings added after caches were made: left out of a key while they hold their default (the old behaviour),
#: so an upgrade does not retrain what it would train the same way.
LATER_DEFAULTS = {"suspect_negatives": "keep", "embedding_passes": 0.0, "teacher_positives": 0,
                  "judged_margin": 1.0, "embedding_copy": "before", "embedding_share": 0.6}


def train_settings(train, exclude: set[str] = frozenset()) -> dict[str, Any]:
    """A student's training settings as its key reads them (``save_steps``, ``mini_batch`` and ``memory_gb`` change
    nothing learned; ``precision``, like the machine's speed, how many steps a budget holds; the time budget is
    :func:`budget_key`'s)."""
    out = train.model_dump(exclude={"save_steps", "budget_minutes", "mini_batch", "memory_gb", "precision", *exclude})
    if out.get("teacher_positives") == "auto":  # keyed as the number it means: auto's 0 is the old behaviour
        out["teacher_positives"] = train.teacher_positive_count
    return {k: v for k, v in out.items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


#: The budget each profile's keys were first made with, unkeyed: the quick profile's first budget (20 minutes) kept
#: the keys of before budgets. Any other budget — the profile's later default (15 minutes since 2026-12-05) included
#: — is in the key, so a student trained to another budget is never reused for this one.
UNKEYED_BUDGET = {"quick": 20.0}


def budget_key(cfg) -> dict[str, Any]:
    """``train.budget_minutes`` where it differs from the budget its profile's keys were made without
    (:data:`UNKEYED_BUDGET`, else the profile's default): the keys of the first budget stay those of before budgets
    existed, and lifting or changing it trains anew."""
    default = UNKEYED_BUDGET.get(cfg.profile, PROFILES.get(cfg.profile, {}).get("train", {}).get("budget_minutes"))
    value = cfg.train.budget_minutes
    return {} if value == default or (value in (None, "none") and default in (None, "none")) else {
        "budget_minutes": value}


class StageKeys:
    """The inputs each stage's key is made of, read off one :class:`~esdistill.pipeline.Project`. Each is made by
    the stage module that runs the stage (``<name>_inputs``: :mod:`esdistill.stages`); this is the one place
    that names them all."""

    def __init__(self, project: Project):
        self.p = project

    @property
    def cfg(self):
        return self.p.cfg

    def _cap(self) -> dict[str, Any]:
        return self.p.cap_inputs()

    def index(self) -> dict[str, Any]:
        return self.p.index_inputs()

    def request(self) -> str | None:
        return self.p.request_inputs()

    def candidates(self) -> dict[str, Any]:
        return self.p.candidates_inputs()

    def test_candidates(self) -> dict[str, Any]:
        return self.p.test_candidates_inputs()

    def teacher_fit(self) -> dict[str, Any]:
        return self.p.teacher_fit_inputs()

    def ict_pairs(self) -> dict[str, Any]:
        return self.p.ict_pairs_inputs()

    def teacher_ict(self) -> dict[str, Any]:
        return self.p.teacher_ict_inputs()

    def member_scorer(self, member) -> str:
        return self.p.member_scorer(member)

    def fitted(self) -> str:
        return self.p.fitted_scorer()

    def scorer(self) -> str:
        return self.p.scorer()

    def teacher(self, judged: bool, member=None) -> dict[str, Any]:
        return self.p.teacher_inputs(judged, member)

    def train(self) -> dict[str, Any]:
        return self.p.train_inputs()

    def log_only(self) -> dict[str, Any]:
        return self.p.log_only_inputs()

    def control(self) -> dict[str, Any]:
        return self.p.control_inputs()

    def deploy(self, which: str) -> dict[str, Any]:
        return self.p.deploy_inputs(which)

    def embed(self, which: str) -> dict[str, Any]:
        return self.p.embed_inputs(which)

    def query_vectors(self, which: str) -> dict[str, Any]:
        return self.p.query_vectors_inputs(which)

    def system(self, name: str) -> dict[str, Any]:
        return self.p.system_inputs(name)

    def evaluate(self) -> dict[str, Any]:
        return self.p.evaluate_inputs()

    def sweep_vectors(self) -> dict[str, Any]:
        return self.p.sweep_vectors_inputs()


def trained_key(cache: StageCache) -> str:
    """A trained model's identity, which every key downstream of it reads (its deploy, the dense index's name, its
    embeddings, its evaluation): the training's key and, once trained, the fingerprint of the weights it wrote.

    A training's inputs do not fix its weights: under a wall-clock budget (``train.budget_minutes``) the same
    inputs train as many steps as the machine allows (145 steps in one work dir, 134 in a fresh clone of the
    same config), so two work dirs on one cluster would otherwise share a deploy key and search one student's
    vectors with the other's queries. Before training (nothing to fingerprint yet), and for a record written
    before weights were recorded, the key is the training's key alone — the key such a deploy already has."""
    weights = cache.info().get("weights") if cache.done else None
    return fingerprint({"train": cache.key, "weights": weights}) if weights else cache.key
