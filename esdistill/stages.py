"""Every stage of the loop in one table, and how each one's cache key is made.

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

from .config import PROFILES, EvaluateConfig, fingerprint
from .models import model_fingerprint
from .query_encoder import resolve_query_encoder

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Project


@dataclass(frozen=True)
class Stage:
    name: str  #: the cache folder under the work dir
    needs_cluster: bool
    reads: str  #: what its key is made of, in words (the code is :class:`StageKeys`)
    writes: str


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("index", True, "the corpus's content and the BM25 mapping; a user's index (never written): its UUIDs, "
          "document counts and write sequence numbers, and the text fields", "the BM25 index"),
    Stage("candidates", True, "the index's key, the training queries' texts, candidates.k; teacher.request's "
          "body when the teacher is a search request", "candidates.parquet: BM25 top-k of every training query "
          "(or the request's top-k, its _score in `request`)"),
    Stage("test-candidates", True, "the index's key, the evaluated test queries' texts, the rerank depth, "
          "evaluate.k",
          "candidates.parquet: BM25 top-N of every test query (the pipeline's input)"),
    Stage("ict-pairs", True, "the index's key, the corpus teacher's sampling settings (teacher.fit.corpus), every "
          "test query of the split, evaluated or not (never drawn as sentences)", "pairs.parquet: inverse-cloze "
          "sentences, the rest of their document, BM25's negatives"),
    Stage("teacher-ict", False, "the ict-pairs key, teacher.fit.corpus, the base model",
          "model-full/: the cross-encoder fitted on the corpus alone"),
    Stage("teacher-fit", False, "the index's key, the judged training queries and their judgments, teacher.fit, "
          "the base model", "model-<fold>/ and model-full/: cross-fitted cross-encoders"),
    Stage("teacher", False, "the judged queries' candidate pairs and texts, the scorer (a search request: its "
          "body), teacher.max_length", "scores.parquet: raw teacher logits (each query held out from its scorer), "
          "or the request's _score"),
    Stage("teacher-unjudged", False, "the unjudged queries' (query log, pseudo-queries) candidate pairs and texts, "
          "the full scorer, teacher.max_length", "scores.parquet"),
    Stage("train", False, "both teacher keys, the BM25 weight of the labels, train, the base model",
          "model/: the distilled student"),
    Stage("train-log", False, "BM25's candidate pairs and the teacher that scores them, the fusion chosen without "
          "judgments, train (use_judgments off), the base model", "model/: the log-only student (no judgment read)"),
    Stage("train-judgments", False, "the judged queries' candidate pairs, the judgments, train, the base model",
          "model/: the control student (no teacher)"),
    Stage("deploy", True, "the served model's key, the corpus (its fingerprint; a user's index by name, synced "
          "on every deploy), deploy settings, the effective max length, the text fields",
          "the dense index <alias>-<key>; the alias moved onto it"),
    Stage("embed", False, "the model's key, the index's key, the effective max length, the text fields",
          "vectors.npy (float16), ids, text hashes: the corpus embedded ahead of a deploy"),
    Stage("query-vectors", False, "the model's key, the evaluated test queries, the student's max length",
          "vectors.npy (float16): the test queries, for evaluating a model that is not on the machine"),
    Stage("evaluate-system", True, "one system's inputs (its model or index keys, the index's write state), the "
          "evaluated test queries, evaluate settings (the pipeline's can be computed offline from test-candidates)",
          "run.json: its ranking and latency of every test query"),
    Stage("evaluate", True, "every evaluated system's key, the test judgments", "reports/…: report.md, report.json"),
    Stage("sweep-vectors", False, "the student's key, the corpus, the effective max length, the test queries",
          "docs.npy: corpus vectors for the index-settings sweep"),
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
LATER_DEFAULTS = {"suspect_negatives": "keep"}


def train_settings(train, exclude: set[str] = frozenset()) -> dict[str, Any]:
    """A student's training settings as its key reads them (``save_steps`` changes nothing learned; the time
    budget is :func:`budget_key`'s)."""
    out = train.model_dump(exclude={"save_steps", "budget_minutes", *exclude})
    return {k: v for k, v in out.items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def budget_key(cfg) -> dict[str, Any]:
    """``train.budget_minutes`` where it differs from its profile's default (so the keys of a profile's own
    budget stay those of before it had one, and lifting or changing it trains anew)."""
    default = PROFILES.get(cfg.profile, {}).get("train", {}).get("budget_minutes")
    value = cfg.train.budget_minutes
    return {} if value == default or (value in (None, "none") and default in (None, "none")) else {
        "budget_minutes": value}


class StageKeys:
    """The inputs each stage's key is made of, read off one :class:`~esdistill.pipeline.Project`."""

    def __init__(self, project: Project):
        self.p = project

    @property
    def cfg(self):
        return self.p.cfg

    def _cap(self) -> dict[str, Any]:
        """The cap ``data.max_positives_per_query`` means for these judgments, as a number, where there is one
        (``auto`` resolved on the data: :meth:`~esdistill.pipeline.Project.max_positives`). Without a cap the keys
        stay those of earlier versions, and ``auto`` that caps at 4 is keyed like a hand-written 4."""
        cap = self.p.max_positives()
        return {} if cap is None else {"max_positives": cap}

    def index(self) -> dict[str, Any]:
        return self.p.index_identity()

    def request(self) -> str | None:
        """The user's search request teacher, by its body's (or template id's) fingerprint; None without one."""
        rs = self.p.request_search()
        return None if rs is None else rs.fingerprint()

    def candidates(self) -> dict[str, Any]:
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "queries": fingerprint(self.p.train_queries), "k": self.cfg.candidates.k}
        if self.request():  # its hits are the candidates (a key without it stays what it was)
            out["request"] = self.request()
        return out

    def test_candidates(self) -> dict[str, Any]:
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "queries": fingerprint(self.p.eval_queries()), "depth": self.cfg.evaluate.rerank_depth}
        # the stage records BM25's top evaluate.k (the pipeline's tail below the reranked head): a larger k must not
        # reuse a shorter list. Left out at its default, with which every earlier cache was made
        if self.cfg.evaluate.k != EvaluateConfig.model_fields["k"].default:
            out["k"] = self.cfg.evaluate.k
        return out

    def teacher_fit(self) -> dict[str, Any]:
        # the fit reads only the judged queries' candidates: a query log or pseudo-queries do not refit it
        ds = self.p.dataset
        judged = {q: t for q, t in ds.train_queries.items() if q in ds.train_qrels}
        fit = self.cfg.teacher.fit
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "k": self.cfg.candidates.k, "judged_queries": fingerprint(judged),
               "qrels": fingerprint(ds.train_qrels), "fit": fit.model_dump(exclude={"source", "corpus"}),
               "base": model_fingerprint(fit.base_model), **self._cap()}
        if fit.source == "corpus+judgments":  # starts from the corpus teacher (a judged-only key stays as it was)
            out.update(source=fit.source, base=f"teacher-ict-{self.p._ict_cache().key}")
        return out

    def ict_pairs(self) -> dict[str, Any]:
        c = self.cfg.teacher.fit.corpus
        return {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
                "sampling": c.model_dump(include={"pairs", "negatives", "negative_depth", "min_words", "max_words",
                                                  "seed"}),
                "avoid": fingerprint(sorted(self.p.dataset.all_test_queries.values()))}

    def teacher_ict(self) -> dict[str, Any]:
        fit = self.cfg.teacher.fit
        return {"pairs": self.p._ict_pairs_cache().key, "fit": fit.corpus.model_dump(),
                "base": model_fingerprint(fit.base_model)}

    def member_scorer(self, member) -> str:
        """One ensemble member's identity (:mod:`esdistill.ensemble`); its scores' cache is keyed on it."""
        if member.kind == "fit":
            return self.fitted()
        if member.kind == "corpus":
            return self.p._ict_cache().key
        if member.kind == "cross_encoder":
            return model_fingerprint(member.model)
        if member.kind == "bi_encoder":
            return f"cosine-{model_fingerprint(member.model)}"
        if member.kind == "request":
            return "request-" + self.p.request_member_search().fingerprint()
        return "bm25"

    def fitted(self) -> str:
        """The teacher fitted here (``teacher.fit.source``): the corpus teacher's key, or the judged fit's."""
        return self.p._ict_cache().key if self.cfg.teacher.fit.source == "corpus" else self.p._fit_cache().key

    def scorer(self) -> str:
        """The teacher's identity: the user's reranker by its fingerprint, the request's body, the fit's key, or
        an ensemble's members (with its fixed weights, if any)."""
        t = self.cfg.teacher
        if t.kind == "ensemble":
            return "ensemble-" + fingerprint({"members": {m.spec: self.member_scorer(m) for m in self.p.members()},
                                              "weights": t.ensemble_weights})
        if t.kind == "request":
            return f"request-{self.request()}"
        if t.model:
            return model_fingerprint(t.model)
        return self.fitted()

    def teacher(self, judged: bool, member=None) -> dict[str, Any]:
        """The scores of one part (judged or not) by the teacher — or by one ensemble ``member``: a member that
        is the single teacher of another config (the fit, a cross-encoder) has that teacher's key, so its scores
        are shared."""
        pairs = self.p.teacher_pairs(judged)
        return {"part": "judged" if judged else "unjudged", "pairs": pairs_fingerprint(pairs),
                "queries": fingerprint({q: self.p.train_queries[q] for q in pairs.qid.unique()}),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "scorer": self.member_scorer(member) if member is not None else self.scorer(),
                "max_length": self.cfg.teacher.max_length}

    def train(self) -> dict[str, Any]:
        out = {"teacher": self.p._teacher_cache().key, "qrels": fingerprint(self.p.dataset.train_qrels),
               **self._cap(), **budget_key(self.cfg), "bm25_weight": self.p.label_weight(),
               "train": train_settings(self.cfg.train),
               "base": model_fingerprint(self.cfg.train.base_model)}
        unjudged = self.p._teacher_cache(judged=False)
        out["teacher_unjudged"] = unjudged.key if unjudged else None
        if self.cfg.teacher.kind == "ensemble":  # the labels: every member's scores, fused with these weights
            out["ensemble"] = {"scores": [c.key for c in self.p.member_caches()],
                               "weights": self.p.ensemble_weights(None)}
        return out

    def log_only(self) -> dict[str, Any]:
        """The log-only student: BM25's candidate pairs of every training query and the teacher that scores them
        (no judged positive, no judged/unjudged split: nothing a judgment changes), the fusion chosen without
        judgments, train, the base model."""
        pairs = self.p.teacher_pairs()
        found = pairs[pairs.source == "bm25"] if "source" in pairs else pairs
        return {"pairs": pairs_fingerprint(found),
                "queries": fingerprint({q: self.p.train_queries[q] for q in found.qid.unique()}),
                "index_key": self.p.index_key, "fields": self.p.text_fields, "scorer": self.scorer(),
                "max_length": self.cfg.teacher.max_length, "log_weights": self.p.log_weights(),
                "train": train_settings(self.p._log_only_config()), **budget_key(self.cfg),
                "base": model_fingerprint(self.cfg.train.base_model)}

    def control(self) -> dict[str, Any]:
        control = self.p._control_config()
        return {"pairs": pairs_fingerprint(self.p.teacher_pairs(judged=True)),
                "queries": fingerprint(self.p.dataset.train_queries),
                "qrels": fingerprint(self.p.dataset.train_qrels), **self._cap(),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "train": train_settings(control, exclude={"judged_above_teacher"}), **budget_key(self.cfg),
                "base": model_fingerprint(self.cfg.train.base_model)}

    def deploy(self, which: str) -> dict[str, Any]:
        d = self.cfg.deploy
        return {which: self.p.dense_models()[which][1](), "corpus": self.p.corpus_identity(),
                # who embeds (this process or the cluster's ML nodes) is not what: the same model's vectors
                "deploy": d.model_dump(exclude={"keep_versions", "batch_size", "encode_batch_size", "replicas",
                                                "max_length", "embed_in", "model_id", "slices"}),
                "max_length": d.effective_max_length(self.cfg.train), "fields": self.p.text_fields}

    def embed(self, which: str) -> dict[str, Any]:
        return {which: self.p.dense_models()[which][1](), "index_key": self.p.index_key, "fields": self.p.text_fields,
                "max_length": self.cfg.deploy.effective_max_length(self.cfg.train)}

    def query_vectors(self, which: str) -> dict[str, Any]:
        return {which: self.p.dense_models()[which][1](), "queries": fingerprint(self.p.eval_queries()),
                "max_length": self.cfg.train.max_length}

    def system(self, name: str) -> dict[str, Any]:
        ev = self.cfg.evaluate
        out: dict[str, Any] = {"system": name, "queries": fingerprint(self.p.eval_queries()), "k": ev.k,
                               "index_key": self.p.index_key, "fields": self.p.text_fields}
        dense = {"num_candidates": ev.num_candidates, "oversample": ev.oversample,
                 "encoder": resolve_query_encoder(ev.query_encoder)}
        if name == "pipeline":
            out.update(reranker=self.scorer(), depth=ev.rerank_depth, max_length=self.cfg.teacher.max_length,
                       bm25_weight=self.p.pipeline_weight())
            if self.cfg.teacher.kind == "ensemble":
                out["ensemble_weights"] = self.p.ensemble_weights(self.p.pipeline_depth())
        elif name == "hybrid":
            out.update(deploy=self.p._deploy_key("student"), rrf_k=ev.rrf_k, **dense)
        elif name != "bm25":
            out.update(deploy=self.p._deploy_key(name), **dense)
        return out

    def evaluate(self) -> dict[str, Any]:
        return {"systems": {n: self.p._system_cache(n).key for n in self.cfg.evaluate.systems},
                "qrels": fingerprint(self.p.dataset.test_qrels)}

    def sweep_vectors(self) -> dict[str, Any]:
        return {"student": self.p._train_cache().key, "corpus": self.p.corpus_identity(),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "max_length": self.cfg.deploy.effective_max_length(self.cfg.train),
                "queries": fingerprint(self.p.dataset.test_queries)}
