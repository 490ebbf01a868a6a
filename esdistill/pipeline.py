"""The whole loop as a Python API: :class:`Project` runs each stage with its cache key, or all of them.

    from esdistill import Project, load_config
    project = Project(load_config("examples/scifact.toml"))
    report = project.run()            # index → candidates → teacher (fit) → train → deploy → evaluate

Each stage method returns the stage's info record (``cached: True`` when nothing had to be done). Keys chain:
a stage's key includes its upstream stage's key, so changing an early parameter recomputes what follows.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import candidates as cand_mod
from . import evaluate as eval_mod
from . import distributed
from . import ensemble as ensemble_mod
from . import ict as ict_mod
from . import results as results_mod
from . import search as search_mod
from . import served as served_mod
from .budget import resolve_max_positives
from .cache import StageCache
from .backends import backend_for
from .cluster import connect
from .config import RunConfig, fingerprint
from .console import EstimatingProgress
from .data import Dataset, Doc, load_dataset, pseudo_queries, relevant
from .deploy import check_dims, deploy_student, versioned_index
from .errors import ClusterError, InputError
from .indexing import MAPPINGS_DIR, build_bm25_index, fetch_docs, index_identity, index_meta, iter_index_docs
from .jsonutil import dumps
from .models import embedding_info, load_bi_encoder, load_cross_encoder, model_fingerprint
from .query_encoder import BatchingEncoder, batches, load_query_encoder, served_encoder_label
from .stages import StageKeys
from .teacher import (
    assign_scorers,
    choose_bm25_weight,
    fit_teacher,
    fuse_frame,
    heldout_fusion_quality,
    judged_candidates,
    label_quality,
    label_scale,
    score_candidates,
)
from .train import train_student


def make_progress(console: Console | None = None, on_estimate=None) -> Progress:
    return EstimatingProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
                              on_estimate=on_estimate)


class Project:
    """One configured run: the client, the dataset, and every stage. Cache keys: :mod:`esdistill.stages`."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, client=None, bundle=None):
        """``bundle`` (an :class:`esdistill.bundle.Bundle`): run the model stages from it, with no cluster —
        its data, the cluster-side facts and caches it carries, its base models."""
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        if not distributed.is_main():  # data-parallel training (torchrun): rank 0 speaks for every process
            self.console = Console(stderr=True, quiet=True)
        self._client = client
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stage_seconds: dict[str, float] = {}
        self.stage_estimates: dict[str, float] = {}  #: seconds each stage was expected to take (its first batches)
        self._stage_name: str | None = None
        self.progress: Progress | None = None
        self.keys = StageKeys(self)
        self._memo: dict[Any, Any] = {}  # per instance: a cache on the class would keep every project alive
        self.bundle = bundle
        if bundle is not None:
            bundle.register_models(self.workdir)
            bundle.seed_cache(self.workdir)

    def _once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # -- shared state ---------------------------------------------------------------------------------
    @property
    def client(self):
        if self.bundle is not None:
            raise ClusterError("this step needs the Elasticsearch cluster, and the project runs offline from a bundle",
                               hint="run it where the cluster is, after `esdistill bundle import`")
        if self._client is None:
            self._client = connect(self.cfg.cluster_settings())
        return self._client

    @cached_property
    def dataset(self) -> Dataset:
        if self.bundle is not None:
            return self.bundle.dataset(self.cfg.data.name)
        doc_exists = None
        if self.cfg.data.index:
            def doc_exists(ids):
                return set(fetch_docs(self.client, self.cfg.data.index, ids, self.cfg.data.text_fields))
        ds = load_dataset(self.cfg.data, self.workdir / "datasets", doc_exists)
        if not ds.train_queries:
            raise InputError("no training queries", hint="check data.train_split / data.train_queries")
        return ds

    @cached_property
    def train_queries(self) -> dict[str, str]:
        """Every query the teacher labels: the judged training queries, the query log, and pseudo-queries drawn
        from the corpus (``data.pseudo_queries``). Only the judged ones fit the teacher."""
        if self.bundle is not None:
            return self.bundle.train_queries()  # pseudo-queries as the cluster side drew them
        ds, n = self.dataset, self.cfg.data.pseudo_queries
        out = {**ds.query_log, **ds.train_queries}
        if n:
            docs = (ds.corpus.values() if ds.corpus is not None
                    else iter_index_docs(self.client, self.cfg.data.index, self.text_fields))
            pq = pseudo_queries(docs, n, avoid=ds.all_test_queries.values())
            if len(pq) < n:
                self.log(f"pseudo-queries: only {len(pq)} of {n} could be drawn (documents without a sentence of "
                         "6-40 words)")
            out.update({q: t for q, t in pq.items() if q not in out})
        return out

    @property
    def judged_qids(self) -> set[str]:
        """Training queries with at least one relevant judgment: those the teacher is cross-fitted on."""
        return {q for q, docs in self.dataset.train_qrels.items() if any(g > 0 for g in docs.values())}

    @property
    def text_fields(self) -> list[str]:
        return ["title", "text"] if self.cfg.data.beir else self.cfg.data.text_fields

    def docs(self, ids: list[str]) -> dict[str, Doc]:
        """Texts of documents by id, from the corpus file or the user's index."""
        if self.dataset.corpus is not None:
            return {i: self.dataset.corpus[i] for i in ids if i in self.dataset.corpus}
        return fetch_docs(self.client, self.cfg.data.index, ids, self.text_fields)

    def eval_queries(self) -> dict[str, str]:
        """The test queries that are evaluated: those with at least one relevant judgment. A query without one
        scores 0 for every system and would only dilute the means."""
        ds = self.dataset
        return {q: ds.test_queries[q] for q, docs in ds.test_qrels.items()
                if q in ds.test_queries and any(g > 0 for g in docs.values())}

    def log(self, msg: str) -> None:
        """A line for the user, printed as written: ``[full]`` is text here, not rich markup."""
        self.console.print(escape(msg))

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        self.console.rule(f"[bold cyan]{name}")
        owns = self.progress is None
        outer, self._stage_name = self._stage_name, name
        self.stage_estimates.pop(name, None)  # a stage run again is estimated again, as its wall time is measured
        if owns:
            self.progress = make_progress(self.console, self._estimated)
            self.progress.start()
        try:
            yield
        finally:
            if owns:
                self.progress.stop()
                self.progress = None
            self._stage_name = outer
            self.stage_seconds[name] = time.perf_counter() - t0

    def _estimated(self, task: str, seconds: float) -> None:
        """A progress bar's estimate of its task (esdistill.console.EstimatingProgress): summed per stage."""
        if self._stage_name is not None:
            self.stage_estimates[self._stage_name] = self.stage_estimates.get(self._stage_name, 0.0) + seconds

    def max_positives(self) -> int | None:
        """``data.max_positives_per_query`` resolved on the training judgments (``auto``:
        :func:`esdistill.budget.resolve_max_positives`); the first call logs what ``auto`` capped and why."""
        def resolve() -> int | None:
            cap, why = resolve_max_positives(self.cfg.data.max_positives_per_query, self.dataset.train_qrels)
            if why:
                self.log(why)
            return cap

        return self._once("max-positives", resolve)

    def _cache(self, stage: str, inputs: dict[str, Any]) -> StageCache:
        return StageCache(self.workdir, stage, inputs)

    # -- what the data is ------------------------------------------------------------------------------
    def index_identity(self) -> dict[str, Any]:
        """What the BM25 index holds: the corpus's content and the mapping, or — for the user's own index — its
        UUIDs, counts and write sequence numbers as the cluster reports them now (read once per project)."""
        if self.bundle is not None:
            return self.bundle.facts["index_identity"]
        if self.cfg.data.index:
            return self._once("identity", lambda: {
                "user_index": self.cfg.data.index, "fields": self.cfg.data.text_fields,
                "state": index_identity(self.client, self.cfg.data.index)})
        return {"corpus": self.dataset.corpus_fingerprint,
                "mapping": (MAPPINGS_DIR / "bm25_index.json").read_text()}

    @property
    def index_key(self) -> str:
        """Changes whenever the searched documents change (a user's index: with every write to it)."""
        return fingerprint(self.keys.index())

    def corpus_identity(self) -> Any:
        """What a dense index is built from, for deploy keys: the corpus's content, or the user's index by name
        and fields (its edits are synced into the same dense index by every deploy, never rebuilt)."""
        if self.bundle is not None:
            return self.bundle.facts["corpus_identity"]
        if self.cfg.data.index:
            return {"user_index": self.cfg.data.index, "fields": self.cfg.data.text_fields}
        return self.dataset.corpus_fingerprint

    # -- stages -------------------------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        """Create and fill the BM25 index (skipped when the data is an existing index)."""
        with self.stage("index"):
            if self.cfg.data.index:
                n = self.client.count(index=self.cfg.data.index).body["count"]
                info = {"index": self.cfg.data.index, "docs": n, "cached": True, "user_index": True}
            else:
                info = build_bm25_index(self.client, self.cfg.bm25_index, self.dataset.corpus, self.index_key,
                                        self.cfg.index.chunk_size, self.progress)
            self.log(f"index {info['index']}: {info['docs']} documents" + (" (cached)" if info.get("cached") else ""))
            return info

    def _ensure_index(self) -> None:
        """Build (or rebuild) the BM25 index unless it holds this project's corpus (its ``_meta`` key)."""
        if not self.cfg.data.index:
            meta = index_meta(self.client, self.cfg.bm25_index)
            if not meta or meta.get("key") != self.index_key:
                self.index()

    def _candidates_cache(self) -> StageCache:
        return self._cache("candidates", self.keys.candidates())

    @contextlib.contextmanager
    def engine(self):
        """The engine of the model-heavy stages (``[engine]``: this process, or Ray workers), closed after."""
        from .engine import make_engine

        eng = make_engine(self.cfg.engine)
        try:
            yield eng
        finally:
            eng.close()

    def request_search(self):
        """The user's search request as the teacher (:mod:`esdistill.request_teacher`), or None."""
        t = self.cfg.teacher
        if t.kind != "request":
            return None
        return self._request()

    def request_member_search(self):
        """The user's search request as a member of the teacher ensemble (``request``), or None."""
        t = self.cfg.teacher
        return self._request() if t.kind == "ensemble" and "request" in t.ensemble else None

    def _request(self):
        from .request_teacher import RequestSearch, load_request

        t = self.cfg.teacher
        carried = self.bundle.facts.get("request_described") if self.bundle is not None else None
        return self._once("request-search", lambda: RequestSearch(
            self.client, self.cfg.bm25_index, load_request(t.request) if t.request else None, t.request_template,
            source=str(t.request) if t.request else f"search template {t.request_template!r}", described=carried))

    def candidates(self) -> dict[str, Any]:
        """BM25 top-k of every training query (building the BM25 index first if it is not there yet) — or, with
        ``teacher.request``, the top-k of the user's own search request."""
        cache = self._candidates_cache()
        if not cache.done:
            self._ensure_index()
        with self.stage("candidates"):
            request = self.request_search()
            if request is not None and not cache.done:
                from .request_teacher import to_frame

                results = request.run(self.train_queries, self.cfg.candidates.k, self.cfg.candidates.batch_size,
                                      self.progress)
                frame = to_frame(results)
                frame.to_parquet(cache.path("candidates.parquet"), index=False)
                info = cache.finish(queries=len(results), pairs=len(frame), output="candidates.parquet",
                                    queries_without_hits=sum(not h for h in results.values()), source="request")
            else:
                info = cand_mod.run_candidates(self.client, self.cfg.bm25_index, self.train_queries,
                                               self.text_fields, self.cfg.candidates.k,
                                               self.cfg.candidates.batch_size, cache, self.progress)
            self.log(f"candidates: {info['pairs']} pairs for {info['queries']} queries"
                     + (f", {info['queries_without_hits']} queries without any hit" if info["queries_without_hits"] else "")
                     + (" (cached)" if info.get("cached") else ""))
            return info

    def candidates_frame(self) -> pd.DataFrame:
        cache = self._candidates_cache()
        if not cache.done:
            self.candidates()
        return self._once(("candidates", cache.key), lambda: pd.read_parquet(cache.path("candidates.parquet")))

    def _test_candidates_cache(self) -> StageCache:
        return self._cache("test-candidates", self.keys.test_candidates())

    def test_candidates(self) -> dict[str, Any]:
        """What the pipeline reads from Elasticsearch for each evaluated test query, and how long that took: its
        BM25 head (the documents it reranks) and top-k ids. With them the pipeline's rankings can be computed
        where the cluster is not (:meth:`pipeline_offline`)."""
        cache = self._test_candidates_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        self._ensure_index()
        ev = self.cfg.evaluate
        pipe = search_mod.Pipeline(self.client, self.cfg.bm25_index, self.text_fields, None, ev.rerank_depth, ev.k)
        queries = self.eval_queries()
        rows, timing = [], []
        with self.stage("test candidates"):
            task = self.progress.add_task("test candidates (BM25, as the pipeline asks)", total=len(queries))
            for n, qid in enumerate(sorted(queries)):
                if n == 0:
                    pipe.retrieve(queries[qid])  # warm-up, as evaluate does
                t0 = time.perf_counter()
                docs, bm25, ranked, took = pipe.retrieve(queries[qid])
                timing.append((qid, (time.perf_counter() - t0) * 1e3, took))
                head = {d.id: s for d, s in zip(docs, bm25, strict=True)}
                rows += [(qid, d, r, head.get(d), d in head) for r, d in enumerate(ranked, 1)]
                rows += [(qid, d.id, 0, head[d.id], True) for d in docs if d.id not in set(ranked)]
                self.progress.advance(task)
            pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "head"]).to_parquet(
                cache.path("candidates.parquet"), index=False)
            pd.DataFrame(timing, columns=["qid", "bm25_wall_ms", "took_ms"]).to_parquet(
                cache.path("timing.parquet"), index=False)
        return cache.finish(queries=len(queries), pairs=len(rows))

    def _fit_cache(self) -> StageCache:
        return self._cache("teacher-fit", self.keys.teacher_fit())

    def _ict_pairs_cache(self) -> StageCache:
        return self._cache("ict-pairs", self.keys.ict_pairs())

    def _ict_cache(self) -> StageCache:
        return self._cache("teacher-ict", self.keys.teacher_ict())

    def _teacher_fit_cache(self) -> StageCache:
        """The cache of the fitted teacher that labels: the corpus teacher's, or the judged (cross-)fit's."""
        return self._ict_cache() if self.cfg.teacher.fit.source == "corpus" else self._fit_cache()

    def ict_pairs(self) -> dict[str, Any]:
        """The corpus teacher's inverse-cloze sentences, their masked documents and BM25 negatives (needs the
        cluster: the negatives are BM25's answers to the sentences)."""
        cache = self._ict_pairs_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        self._ensure_index()
        c, ds = self.cfg.teacher.fit.corpus, self.dataset
        with self.stage("inverse-cloze pairs"):
            docs = (ds.corpus.values() if ds.corpus is not None
                    else iter_index_docs(self.client, self.cfg.data.index, self.text_fields))

            def search(queries: dict[str, str]):
                return cand_mod.msearch_bm25(self.client, self.cfg.bm25_index, queries, self.text_fields,
                                             c.negative_depth + 1, self.cfg.candidates.batch_size, self.progress)

            info = ict_mod.draw_pairs(docs, self.docs, search, c, cache, avoid=ds.all_test_queries.values())
            lost = info["drawn"] - info["pairs"]
            self.log(f"inverse-cloze pairs: {info['pairs']} sentences with BM25 negatives"
                     + (f" ({lost} drawn without any other BM25 hit, left out)" if lost else "")
                     + (f"; BM25 ranks the source document first for {info['source_ranked_first']:.0%}"
                        if info.get("source_ranked_first") is not None else ""))
            if info["pairs"] < c.pairs:
                self.log(f"inverse-cloze pairs: {info['pairs']} of the {c.pairs} asked for (documents without a "
                         f"sentence of {c.min_words}-{c.max_words} words, or without BM25 neighbours)")
            return info

    def teacher_ict(self) -> dict[str, Any]:
        """The cross-encoder fitted on the corpus alone (``teacher.fit.source`` corpus or corpus+judgments)."""
        cache = self._ict_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        pairs_cache = self._ict_pairs_cache()
        if not pairs_cache.done:
            self.ict_pairs()
        pairs = pd.read_parquet(pairs_cache.path("pairs.parquet"))
        with self.stage("teacher fit (corpus)"):
            info = ict_mod.fit_ict(pairs, self.docs, self.cfg.teacher.fit.corpus, self.cfg.teacher.fit.base_model,
                                   cache, self.log, self.progress)
            self.log(f"teacher fit [corpus]: fitted on {info['sentences']} inverse-cloze sentences"
                     + (" (cached)" if info.get("cached") else ""))
            return info

    def fits_needed(self) -> list[str]:
        """Which teachers must be fitted here: ``ict`` (the corpus teacher), ``judged`` (the judged cross-fit)
        — for the fitted teacher (by ``teacher.fit.source``) or for the ensemble members that name them."""
        t = self.cfg.teacher
        of_fit = {"judgments": ["judged"], "corpus": ["ict"], "corpus+judgments": ["ict", "judged"]}[t.fit.source]
        if t.kind == "fit":
            return of_fit
        if t.kind != "ensemble":
            return []
        kinds = {m.kind for m in self.members()}
        wanted = set(of_fit if "fit" in kinds else []) | ({"ict"} if "corpus" in kinds else set())
        return [x for x in ("ict", "judged") if x in wanted]

    def teacher_fit(self) -> dict[str, Any]:
        """Fit the teacher: cross-fitted from the train judgments, from the corpus alone, or both in turn."""
        needed = self.fits_needed()
        if not needed:
            raise InputError(f"there is no teacher to fit: the config's teacher is {self.cfg.teacher.kind!r} "
                             f"({self.cfg.teacher.model or self.cfg.teacher.request or self.cfg.teacher.request_template or ', '.join(self.cfg.teacher.ensemble)})",
                             hint="unset [teacher] model / request to fit one from the judgments")
        self._parallel_inputs("teacher fit", [self._candidates_cache()]
                              + ([self._ict_pairs_cache()] if "ict" in needed else []), "esdistill candidates -c CONFIG")
        source = self.cfg.teacher.fit.source
        base = None
        if "ict" in needed:
            info = self.teacher_ict()
            if "judged" not in needed:
                return info
            if source == "corpus+judgments":
                base = str(self._ict_cache().path(ict_mod.MODEL))
        frame = self.candidates_frame()
        with self.stage("teacher fit"):
            info = fit_teacher(self.cfg.teacher.fit, self.train_queries, self.dataset.train_qrels, frame,
                               self.docs, self._fit_cache(), self.log, self.max_positives(),
                               self.progress, base_model=base)
            self.log(f"teacher fit: {len(info['models']) - 1} fold models + full model on {info['judged_queries']} "
                     "judged queries" + (" from the corpus teacher" if base else "")
                     + (" (cached)" if info.get("cached") else ""))
            return info

    def _fit_info(self, corpus: bool = False) -> dict[str, Any] | None:
        """The fitted teacher's record (``corpus``: the corpus teacher's), its model folders found in this work dir
        (a record made elsewhere names others); None when the config fits none."""
        needed = self.fits_needed()
        if corpus and "ict" not in needed:
            return None
        if not corpus and (not needed or self.cfg.teacher.kind == "ensemble"
                           and "fit" not in {m.kind for m in self.members()}):
            return None
        cache = self._ict_cache() if corpus else self._teacher_fit_cache()
        if not cache.done:
            self.teacher_fit()
        info = cache.info()
        return {**info, "models": {n: str(cache.path(f"model-{n}")) for n in info["models"]}}

    # -- teacher ensembles (esdistill.ensemble) -------------------------------------------------------------
    def members(self) -> list[ensemble_mod.Member]:
        return [ensemble_mod.parse(s) for s in self.cfg.teacher.ensemble]

    def _model_members(self) -> list[ensemble_mod.Member]:
        return [m for m in self.members() if m.kind != "bm25"]

    def _member_cache(self, member, judged: bool) -> StageCache | None:
        if not judged and self.teacher_pairs(judged=False).empty:
            return None
        return self._cache("teacher" if judged else "teacher-unjudged", self.keys.teacher(judged, member))

    def member_caches(self) -> list[StageCache]:
        """Every model member's scores of the judged and the unjudged queries."""
        return [c for m in self._model_members() for j in (True, False) if (c := self._member_cache(m, j))]

    def _member_scorers(self, member, qids: list[str]) -> tuple[str, dict[str, str]]:
        """(job kind, qid → model) of one member: the fit's held-out fold models, the corpus teacher, a ready
        cross-encoder, or a bi-encoder's cosine."""
        if member.kind == "fit":
            return "score", assign_scorers(qids, self._fit_info(), None)
        if member.kind == "corpus":
            return "score", assign_scorers(qids, self._fit_info(corpus=True), None)
        return ("cosine" if member.kind == "bi_encoder" else "score"), {q: member.model for q in qids}

    def ensemble_weights(self, depth: int | None) -> list[float]:
        """The members' weights: ``teacher.ensemble_weights``, else chosen on the judged training queries (each
        query's top-``depth`` candidates; None: all scored ones)."""
        t = self.cfg.teacher
        if t.ensemble_weights is not None:
            return list(t.ensemble_weights)
        if not self.cfg.train.use_judgments:  # an unjudged log: no judgment chooses anything
            return self.log_weights()
        chosen = self._ensemble_choice(depth)
        if chosen["weights"] is None:
            raise InputError("the teacher ensemble's weights are chosen on judged training queries, and none has "
                             "candidates", hint="set [teacher] ensemble_weights = [...] (one per member)")
        return chosen["weights"]

    def _ensemble_choice(self, depth: int | None) -> dict[str, Any]:
        """The best weights on the judged training queries, each member alone, how many queries decided it."""
        return self._once(("ensemble-weights", depth), lambda: ensemble_mod.choose_weights(
            self.raw_scores_frame(), self.members(), self.dataset.train_qrels, depth))

    def pipeline_depth(self) -> int:
        """How many BM25 candidates the pipeline reranks that the teacher also scored in training."""
        return min(self.cfg.evaluate.rerank_depth, self.cfg.teacher.depth or self.cfg.candidates.k)

    def pipeline_reranker(self):
        """What the pipeline reranks BM25's head with: the cross-encoder, or the ensemble's members loaded."""
        if self.cfg.teacher.kind != "ensemble":
            return load_cross_encoder(self.teacher_model(), max_length=self.cfg.teacher.max_length)
        scorers = []
        for m in self.members():
            if m.kind == "bm25":
                scorers.append((m, None))
            elif m.kind == "bi_encoder":
                scorers.append((m, load_bi_encoder(m.model, max_length=self.cfg.teacher.max_length)))
            elif m.kind == "request":
                scorers.append((m, self.request_member_search()))
            else:
                path = (m.model if m.kind == "cross_encoder"
                        else self._fit_info(corpus=m.kind == "corpus")["models"]["full"])
                scorers.append((m, load_cross_encoder(path, max_length=self.cfg.teacher.max_length)))
        return ensemble_mod.EnsembleReranker(scorers, self.ensemble_weights(self.pipeline_depth()))

    def teacher_model(self) -> str:
        """The reranker of the pipeline: the user's, or the full fitted model."""
        if self.cfg.teacher.kind == "request":
            raise InputError("the teacher is a search request: it runs in the cluster, there is no reranker model")
        if self.cfg.teacher.kind == "ensemble":
            raise InputError("the teacher is an ensemble: the pipeline reranks with all its members",
                             hint="Project.pipeline_reranker() loads them")
        return self.cfg.teacher.model or self._fit_info()["models"]["full"]

    def teacher_pairs(self, judged: bool | None = None) -> pd.DataFrame:
        """Candidates to label (top ``teacher.depth``) plus every judged positive BM25 missed, so it gets a score
        too. ``judged`` selects the judged queries' pairs (True) or the unjudged ones' (False); None gives all."""
        def build() -> pd.DataFrame:
            frame = self.candidates_frame()
            depth = self.cfg.teacher.depth or self.cfg.candidates.k
            frame = frame[frame["rank"] <= depth].assign(source="bm25")
            have = set(zip(frame.qid, frame.docid, strict=True))
            cap = self.max_positives()  # only the positives training uses need a score
            chosen = {q: relevant(q, docs, cap) for q, docs in self.dataset.train_qrels.items()}
            corpus_ids = set(self.docs([d for docs in chosen.values() for d in docs]))
            extra = [(q, d, 0, float("nan"), "judged") for q, docs in chosen.items()
                     for d in docs if (q, d) not in have and d in corpus_ids]
            extra_df = pd.DataFrame(extra, columns=["qid", "docid", "rank", "bm25", "source"])
            return pd.concat([frame, extra_df], ignore_index=True) if extra else frame

        pairs = self._once(("pairs", self._candidates_cache().key), build)
        if judged is None:
            return pairs
        return pairs[pairs.qid.isin(self.judged_qids) == judged].reset_index(drop=True)

    def _teacher_cache(self, judged: bool = True) -> StageCache | None:
        """The judged queries' teacher scores (always), or the unjudged ones' (None when there are none). For an
        ensemble: its first model member's (the others' are :meth:`member_caches`)."""
        if self.cfg.teacher.kind == "ensemble":
            return self._member_cache(self._model_members()[0], judged)
        if not judged and self.teacher_pairs(judged=False).empty:
            return None
        return self._cache("teacher" if judged else "teacher-unjudged", self.keys.teacher(judged))

    def teacher(self) -> dict[str, Any]:
        """Score every candidate pair with the teacher (fitting it first when none is given): the judged queries
        each by the fold model that never saw it, the unjudged ones (query log, pseudo-queries) by the full one."""
        fit_info = self._fit_info()
        ensemble = self.cfg.teacher.kind == "ensemble"
        work = ([(m, j) for m in self._model_members() for j in (True, False)] if ensemble
                else [(None, j) for j in (True, False)])
        with self.stage("teacher"):
            infos = []
            for member, judged in work:
                cache = self._member_cache(member, judged) if ensemble else self._teacher_cache(judged)
                if cache is None:
                    continue
                pairs = self.teacher_pairs(judged)
                if self.cfg.teacher.kind == "request":  # the labels are the request's own scores
                    was_done = cache.done
                    if not was_done:
                        from .request_teacher import labels

                        labels(pairs, self.keys.scorer()).to_parquet(cache.path("scores.parquet"), index=False)
                        cache.finish(pairs=len(pairs), queries=int(pairs.qid.nunique()), scored_now=len(pairs),
                                     output="scores.parquet")
                    infos.append({**cache.info(), "cached": was_done})
                    continue
                if cache.done:
                    infos.append({**cache.info(), "cached": True})
                    continue
                if member is not None and member.kind == "request":
                    infos.append(self._score_request_member(pairs, cache))
                    continue
                kind, scorers = (self._member_scorers(member, sorted(pairs.qid.unique())) if ensemble else (
                    "score", assign_scorers(sorted(pairs.qid.unique()), fit_info, self.cfg.teacher.model)))
                if member is not None:
                    self.log(f"teacher: ensemble member {member.spec}, {'judged' if judged else 'unjudged'} queries")
                with self.engine() as engine:
                    infos.append(score_candidates(pairs, self.train_queries, self.docs, scorers, cache,
                                                  self.cfg.teacher.max_length, self.cfg.teacher.batch_size,
                                                  self.cfg.teacher.chunk_queries, progress=self.progress,
                                                  engine=engine, kind=kind))
            info = {"pairs": sum(i["pairs"] for i in infos), "queries": sum(i["queries"] for i in infos),
                    "scored_now": sum(i.get("scored_now", 0) for i in infos if not i.get("cached")),
                    "cached": all(i.get("cached") for i in infos),
                    "seconds": sum(i.get("seconds") or 0.0 for i in infos)}  # when they were scored
            self.log(f"teacher: {info['pairs']} pairs scored" + (" (cached)" if info["cached"] else
                                                                  f" ({info['scored_now']} now)"))
            if ensemble:
                self._report_ensemble(info)
            else:
                self._report_labels(info, "never saw a query" if self.cfg.teacher.fit.source == "corpus"
                                    and fit_info else "held out" if fit_info else "")
            return info

    def request_member_caches(self) -> list[StageCache]:
        """The scores of the ensemble member ``request`` (judged and unjudged queries), scored now where they are
        not yet: it runs in the cluster, so a bundle for a machine without one carries them
        (:func:`esdistill.bundle.export`). Empty without that member."""
        if self.request_member_search() is None:
            return []
        member = next(m for m in self.members() if m.kind == "request")
        out = []
        for judged in (True, False):
            cache = self._member_cache(member, judged)
            if cache is not None:
                if not cache.done:
                    self._score_request_member(self.teacher_pairs(judged), cache)
                out.append(cache)
        return out

    def _score_request_member(self, pairs: pd.DataFrame, cache: StageCache) -> dict[str, Any]:
        """The ensemble member ``request``: the user's search run for each query over its candidates only."""
        ids = {q: g.docid.tolist() for q, g in pairs.groupby("qid", sort=False)}
        scores = self.request_member_search().score({q: self.train_queries[q] for q in ids}, ids,
                                                    self.cfg.candidates.batch_size, self.progress)
        out = pairs.assign(teacher=[scores[q][d] for q, d in zip(pairs.qid, pairs.docid, strict=True)],
                           scorer="request")
        out["teacher"] = out["teacher"].astype("float32")
        out.to_parquet(cache.path("scores.parquet"), index=False)
        return cache.finish(pairs=len(out), queries=len(ids), scored_now=len(out), output="scores.parquet")

    def _plain_bm25_quality(self, qids: list[str]) -> float:
        """NDCG@10 of esdistill's own BM25 query (top ``candidates.k``) on the judged training queries ``qids``:
        what a search request as the teacher is measured against."""
        queries = {q: self.train_queries[q] for q in qids}
        hits = cand_mod.msearch_bm25(self.client, self.cfg.bm25_index, queries, self.text_fields,
                                     self.cfg.candidates.k, self.cfg.candidates.batch_size)
        judged = {q: self.dataset.train_qrels[q] for q in qids}
        return float(eval_mod.metrics(judged, {q: dict(h) for q, h in hits.items()})["ndcg@10"])

    def _report_labels(self, info: dict[str, Any], held_out: str) -> None:
        """How good the labels are on the judged training queries, alone and fused with BM25; warns when they
        rank no better than BM25."""
        quality = label_quality(self.raw_scores_frame(), self.dataset.train_qrels)
        if not quality:
            return
        info["label_quality"] = quality
        if self.cfg.teacher.kind == "request":  # its labels are its own order: nothing to blend, BM25 to compare
            quality["bm25_ndcg@10"] = self._plain_bm25_quality(
                sorted(judged_candidates(self.raw_scores_frame(), self.dataset.train_qrels)[0]))
            ours, bm25 = quality["teacher_ndcg@10"], quality["bm25_ndcg@10"]
            self.log(f"teacher (your search request) on {quality['queries']} judged training queries: NDCG@10 "
                     f"{ours:.3f} vs plain BM25 {bm25:.3f} on {self.cfg.bm25_index!r}")
            if ours <= bm25:
                self.console.print(
                    "[bold yellow]warning:[/] your search request ranks these judged queries no better than plain "
                    f"BM25 ({ours:.3f} vs {bm25:.3f}): a student distilled from it has no gain over BM25 to keep")
            return
        held = {"held out": " (each query held out from the model that labelled it)",
                "never saw a query": " (the corpus teacher never saw a query)"}.get(held_out, "")
        self.log(f"teacher labels on {quality['queries']} judged training queries{held}: NDCG@10 "
                 f"{quality['teacher_ndcg@10']:.3f} vs BM25 {quality['bm25_ndcg@10']:.3f}")
        weight = self.label_weight()
        if self.cfg.teacher.bm25_weight == "auto":
            tried = self._auto_weight(None)["ndcg@10"]
            self.log(f"teacher: BM25 weight {weight:g} chosen on the held-out labels (NDCG@10 "
                     + ", ".join(f"{w:g}: {v:.3f}" for w, v in tried.items()) + ")")
            info["bm25_weight_tried"] = {str(w): v for w, v in tried.items()}
        info["bm25_weight"] = weight
        if weight > 0:
            fused = label_quality(self.scores_frame(), self.dataset.train_qrels)
            info["label_quality_fused"] = fused
            if self.cfg.teacher.bm25_weight == "auto":
                # the weight was chosen on these same queries: also say what it is worth on queries it was not
                held_out = heldout_fusion_quality(self.raw_scores_frame(), self.dataset.train_qrels)
                info["label_quality_fused_heldout"] = held_out
                extra = (f"; {held_out['teacher_ndcg@10']:.3f} with the weight chosen on the other half of the "
                         "queries" if held_out else "")
                self.log(f"teacher fused with BM25 (weight {weight:g}): NDCG@10 {fused['teacher_ndcg@10']:.3f} on "
                         f"the queries the weight was chosen on{extra}")
            else:
                self.log(f"teacher fused with BM25 (weight {weight:g}): NDCG@10 {fused['teacher_ndcg@10']:.3f}")
        final = info.get("label_quality_fused", quality)["teacher_ndcg@10"]
        if final <= quality["bm25_ndcg@10"]:
            self.console.print(
                "[bold yellow]warning:[/] the teacher's labels rank the candidates no better than BM25 does; "
                "a student distilled from them learns BM25's mistakes. Fit it longer (profile full, a GPU), "
                "give it more judged queries, or set \\[teacher] model to a ready cross-encoder.")
        elif quality["teacher_ndcg@10"] < quality["bm25_ndcg@10"]:
            self.log("teacher: alone it ranks worse than BM25; only its blend with BM25 beats BM25")

    def _report_ensemble(self, info: dict[str, Any]) -> None:
        """Each member's label quality on the judged training queries, the weights, and the ensemble's — also
        with weights chosen on the other half of the queries."""
        members, qrels = self.members(), self.dataset.train_qrels
        raw = self.raw_scores_frame()
        chosen = self._ensemble_choice(None)
        if chosen["weights"] is None:
            self.log("teacher ensemble: no judged training query has candidates; its label quality is unknown")
            return
        weights = self.ensemble_weights(None)
        held = ensemble_mod.heldout_quality(raw, members, qrels, None)
        fused = label_quality(self.scores_frame(), qrels)
        info.update(ensemble={"members": [m.spec for m in members], "alone": chosen["alone"], "weights": weights,
                              "chosen_on": chosen["queries"], "label_quality_fused": fused,
                              "label_quality_fused_heldout": held},
                    label_quality_fused=fused)
        self.log(f"teacher ensemble on {chosen['queries']} judged training queries, NDCG@10 alone: "
                 + ", ".join(f"{m} {v:.3f}" for m, v in chosen["alone"].items()))
        self.log("teacher ensemble: weights " + ", ".join(f"{m.spec} {w:g}" for m, w in zip(members, weights,
                                                                                            strict=True))
                 + (" (fixed)" if self.cfg.teacher.ensemble_weights is not None else " (chosen on these queries)")
                 + f"; fused NDCG@10 {fused['teacher_ndcg@10']:.3f}"
                 + (f", {held['ndcg@10']:.3f} with weights chosen on the other half" if held else ""))
        if fused["teacher_ndcg@10"] <= fused["bm25_ndcg@10"]:
            self.console.print("[bold yellow]warning:[/] the ensemble's labels rank the candidates no better than "
                               "BM25 does; a student distilled from them learns BM25's mistakes.")

    def raw_scores_frame(self) -> pd.DataFrame:
        """The teacher's raw logits for every labelled pair (the judged and the unjudged queries' ``scores.parquet``).
        For an ensemble, ``teacher`` is its first model member's and every member has its column (``m:<name>``;
        BM25's is ``bm25``)."""
        caches = [c for c in (self._teacher_cache(True), self._teacher_cache(False)) if c is not None]
        every = self.member_caches() if self.cfg.teacher.kind == "ensemble" else caches
        if not all(c.done for c in every):
            self.teacher()
        key = tuple(c.key for c in every)
        return self._once(("raw", key), lambda: self._read_scores(caches))

    def _read_scores(self, caches: list[StageCache]) -> pd.DataFrame:
        frame = pd.concat([pd.read_parquet(c.path("scores.parquet")) for c in caches], ignore_index=True)
        if self.cfg.teacher.kind != "ensemble":
            return frame
        for m in self._model_members():
            part = pd.concat([pd.read_parquet(c.path("scores.parquet"), columns=["qid", "docid", "teacher"])
                              for j in (True, False) if (c := self._member_cache(m, j))], ignore_index=True)
            frame = frame.merge(part.rename(columns={"teacher": m.column}), on=["qid", "docid"], how="left",
                                validate="one_to_one")
            if frame[m.column].isna().any():
                raise RuntimeError(f"teacher ensemble: member {m.spec} has no score for "
                                   f"{int(frame[m.column].isna().sum())} pairs")
        return frame

    def _judged_scores(self) -> pd.DataFrame:
        cache = self._teacher_cache(True)
        if not cache.done:
            self.teacher()
        return self._once(("judged-scores", cache.key), lambda: pd.read_parquet(cache.path("scores.parquet")))

    def _auto_weight(self, depth: int | None) -> dict[str, Any]:
        return self._once(("auto-weight", depth), lambda: choose_bm25_weight(
            self._judged_scores(), self.dataset.train_qrels, depth=depth))

    def bm25_weight(self, depth: int | None = None) -> float:
        """The BM25 weight of the teacher fusion; ``auto`` is resolved on the held-out judged labels, fusing each
        query's top-``depth`` candidates (None: all scored ones); 0 when no training query is judged."""
        w = self.cfg.teacher.bm25_weight
        if self.cfg.teacher.kind in ("request", "ensemble"):
            return 0.0  # the request is the whole pipeline, BM25 included where the user put it; BM25 is a member
        if w == "auto":
            if not self.cfg.train.use_judgments:  # an unjudged log: no judgment chooses the blend
                return self.log_weights()
            return float(self._auto_weight(depth)["weight"] or 0.0)
        return float(w)

    def label_weight(self) -> float:
        """The BM25 weight of the training labels (fused over every scored candidate of a query)."""
        return self.bm25_weight(None)

    def pipeline_weight(self) -> float:
        """The BM25 weight of the pipeline at evaluation, chosen over lists of its rerank depth: z-scores over
        30 candidates are not those over 100, so a weight chosen at one depth is not the best at another."""
        return self.bm25_weight(self.pipeline_depth())

    def _label_scale(self) -> float:
        return self._once("label-scale", lambda: label_scale(self.raw_scores_frame()))

    def scores_frame(self, log_only: bool = False) -> pd.DataFrame:
        """The training signal: the teacher's scores, fused with BM25 when ``teacher.bm25_weight`` > 0 (the raw
        logit stays in ``teacher_raw``). ``log_only``: the candidates BM25 found (not the judged positives it missed,
        which only the judgments name), fused as no judgment chooses (:meth:`log_weights`)."""
        raw = self.raw_scores_frame()
        if log_only and "source" in raw:
            raw = raw[raw.source == "bm25"].reset_index(drop=True)
        if self.cfg.teacher.kind == "ensemble":  # every member's z-scores, weighted, on the first member's scale
            weights = self.log_weights() if log_only else self.ensemble_weights(None)
            return self._once(("ensemble-labels", tuple(weights), log_only), lambda: ensemble_mod.fuse_frame(
                raw, self.members(), weights, self._label_scale()))
        w = self.log_weights() if log_only else self.label_weight()
        return fuse_frame(raw, w, self._label_scale() if w else None)

    def log_weights(self):
        """The teacher's fusion without judgments (the log-only student, ``train.use_judgments = false``): an
        ensemble's fixed ``teacher.ensemble_weights``, else equal weights; a fixed ``teacher.bm25_weight``, else
        none (``auto`` is chosen on judgments). A teacher fitted on the judgments is refused: its labels carry
        them."""
        t = self.cfg.teacher
        fitted = [m.spec for m in self.members() if m.kind == "fit"] if t.kind == "ensemble" else (
            ["fit"] if t.kind == "fit" else [])
        if fitted and t.fit.source != "corpus":
            raise InputError(f"a student trained without judgments cannot learn from a teacher fitted on them "
                             f"({', '.join(fitted)}: teacher.fit.source = {t.fit.source!r})",
                             hint="use a teacher that needs no judgment (a cross-encoder, bi_encoder:<model>, the "
                                  "corpus teacher, your search request), or leave log_only out of the systems")
        if t.kind == "ensemble":
            return list(t.ensemble_weights) if t.ensemble_weights is not None else [1 / len(t.ensemble)] * len(
                t.ensemble)
        return 0.0 if t.kind == "request" or t.bm25_weight == "auto" else float(t.bm25_weight)

    def _train_cache(self) -> StageCache:
        return self._cache("train", self.keys.train())

    def _parallel_inputs(self, what: str, caches: list[StageCache], first: str) -> None:
        """Under torchrun every process reads the same cached inputs; computing them in each would do the work
        once per process (and the cluster-side stages would all query the cluster)."""
        if distributed.world_size() > 1 and not all(c.done for c in caches):
            missing = sorted({c.stage for c in caches if not c.done})
            raise InputError(f"{what} under torchrun ({distributed.world_size()} processes) needs its inputs cached "
                             f"first; not cached: {', '.join(missing)}", hint=f"run `{first}` in one process first")

    def train(self) -> dict[str, Any]:
        """Distill the teacher's scores into the student bi-encoder."""
        cache = self._train_cache()
        if cache.done:  # no need to read and fuse every score again
            return {**cache.info(), "cached": True}
        teacher_caches = (self.member_caches() if self.cfg.teacher.kind == "ensemble" else
                          [c for c in (self._teacher_cache(True), self._teacher_cache(False)) if c is not None])
        self._parallel_inputs("train", teacher_caches, "esdistill teacher -c CONFIG")
        scores = self.scores_frame()
        with self.stage("train"):
            info = train_student(self.cfg.train, scores, self.train_queries, self.dataset.train_qrels,
                                 self.docs, self._train_cache(), self.log, self.max_positives(),
                                 self.progress, self.cfg.profile, self._cap_record())
            if info.get("dev_before"):
                b = info["dev_before"].get("dev_cosine_ndcg@10")
                a = info["dev_after"].get("dev_cosine_ndcg@10")
                if a is not None and b is not None:
                    self.log(f"train: dev NDCG@10 {b:.3f} → {a:.3f}; teacher agreement (Spearman) "
                             f"{info['agreement_before'].get('spearman', float('nan')):.3f} → "
                             f"{info['agreement_after'].get('spearman', float('nan')):.3f}")
            return info

    def _cap_record(self) -> dict[str, Any]:
        """What the train record keeps of ``data.max_positives_per_query``: the setting and the cap it meant."""
        return {"max_positives": self.max_positives(), "max_positives_setting": self.cfg.data.max_positives_per_query}

    def student_path(self) -> str:
        cache = self._train_cache()
        if not cache.done:
            self.train()
        return str(cache.path("model"))

    def _control_config(self):
        return self.cfg.train.model_copy(update={"loss": "judgments"})

    def _control_cache(self) -> StageCache:
        return self._cache("train-judgments", self.keys.control())

    def train_judgments(self) -> dict[str, Any]:
        """The control: a student trained on the judgments alone (BM25 hard negatives, no teacher), with the
        same base model and settings as the student. A distilled student that does not beat it has not earned
        its teacher."""
        self._parallel_inputs("train --judgments", [self._candidates_cache()], "esdistill candidates -c CONFIG")
        pairs = self.teacher_pairs(judged=True)  # BM25 candidates plus the judged positives BM25 missed
        floor = pairs.groupby("qid").bm25.transform("min").fillna(0.0) - 1.0
        scores = pairs.assign(teacher=pairs.bm25.fillna(floor).astype("float32"))
        with self.stage("train (judgments only)"):
            info = train_student(self._control_config(), scores, self.dataset.train_queries, self.dataset.train_qrels,
                                 self.docs, self._control_cache(), self.log, self.max_positives(),
                                 self.progress, self.cfg.profile, self._cap_record())
            b = info.get("dev_before", {}).get("dev_cosine_ndcg@10")
            a = info.get("dev_after", {}).get("dev_cosine_ndcg@10")
            if a is not None and b is not None:
                self.log(f"train (judgments only): dev NDCG@10 {b:.3f} → {a:.3f}")
            return info

    def _log_only_config(self):
        return self.cfg.train.model_copy(update={"use_judgments": False})

    def _log_only_cache(self) -> StageCache:
        return self._cache("train-log", self.keys.log_only())

    def train_log_only(self) -> dict[str, Any]:
        """The student of a user with a query log and no judgments: the same teacher's labels on the same training
        queries, fused without judgments (:meth:`log_weights`), no judged positive and no MNRL — no judgment
        touches it; the judgments only evaluate it (system ``log_only``)."""
        cache = self._log_only_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        scores = self.scores_frame(log_only=True)
        with self.stage("train (log only)"):
            return train_student(self._log_only_config(), scores, self.train_queries, {}, self.docs, cache,
                                 self.log, None, self.progress, self.cfg.profile)

    def log_only_path(self) -> str:
        cache = self._log_only_cache()
        if not cache.done:
            self.train_log_only()
        return str(cache.path("model"))

    def judgments_path(self) -> str:
        cache = self._control_cache()
        if not cache.done:
            self.train_judgments()
        return str(cache.path("model"))

    def dense_models(self) -> dict[str, tuple[Callable[[], str], Callable[[], str], str]]:
        """Every bi-encoder that can be served: name -> (model path, its cache key, alias)."""
        base = self.cfg.train.base_model
        return {
            "student": (self.student_path, lambda: self._train_cache().key, self.cfg.dense_alias),
            "zero_shot": (lambda: base, lambda: fingerprint({"base": model_fingerprint(base)}),
                          f"{self.cfg.dense_alias}-zero-shot"),
            "judgments": (self.judgments_path, lambda: self._control_cache().key,
                          f"{self.cfg.dense_alias}-judgments"),
            "log_only": (self.log_only_path, lambda: self._log_only_cache().key, f"{self.cfg.dense_alias}-log-only"),
        }

    def _deploy_key(self, which: str = "student") -> str:
        return fingerprint(self.keys.deploy(which))

    def dense_index(self, which: str = "student") -> str:
        """The versioned dense index of the configured deploy of ``which`` (whether or not its alias points there)."""
        return versioned_index(self.dense_models()[which][2], self._deploy_key(which))

    def deploy(self, which: str = "student", move_alias: bool = True) -> dict[str, Any]:
        """Embed the corpus with the student (or ``which`` other bi-encoder of :meth:`dense_models`) into its
        versioned dense index — syncing an existing one with the source — and, with ``move_alias``, point its
        alias at it. Only ``deploy`` moves an alias: evaluation builds what it measures with ``move_alias=False``."""
        path_of, _, alias = self.dense_models()[which]
        if self.cfg.deploy.embed_in == "cluster" and which == "student" and move_alias:
            return self.deploy_in_cluster()
        path = path_of()
        t0 = time.perf_counter()
        label = "deploy" if which == "student" else f"deploy ({which})"
        with self.stage(label if move_alias else f"{label}, for evaluation"):
            max_length = self.cfg.deploy.effective_max_length(self.cfg.train)
            embedded = self._embed_cache(which)
            if embedded.done:  # vectors computed elsewhere (esdistill run --offline): index them as they are
                from .embed import PrecomputedEmbedder

                model = PrecomputedEmbedder(embedded, (lambda: load_bi_encoder(path, max_length=max_length))
                                            if model_available(path) else None)
            else:
                model = load_bi_encoder(path, max_length=max_length)
            if self.dataset.corpus is not None:
                docs, total = self.dataset.corpus.values(), len(self.dataset.corpus)
            else:
                self.client.indices.refresh(index=self.cfg.data.index)
                docs = iter_index_docs(self.client, self.cfg.data.index, self.text_fields)
                total = self.client.count(index=self.cfg.data.index).body["count"]
            meta = served_mod.deploy_record(self, which, path)
            key = self._deploy_key(which)
            info = deploy_student(self.client, model, docs, total, alias, key, self.cfg.deploy, meta, self.progress,
                                  move_alias=move_alias)
            if info.get("read_only"):  # served (or once served): evaluation measures it as it is
                self.log(f"deploy: {info['index']} is served by deploy key {key[:10]}; evaluation reads it as it is "
                         f"({info['docs']} documents" + (f", the source has {total}: `esdistill deploy` syncs it)"
                                                         if info["docs"] != total else ")"))
                return info
            record = self.workdir / "deploy" / f"{key}.json"
            record.parent.mkdir(parents=True, exist_ok=True)
            prev = json.loads(record.read_text()) if record.exists() else {}
            # a resumed (or finished) deploy only counts what it embedded itself: add the earlier runs' count
            resumed = info["embedded_now"] < info["docs"]
            for count in ("truncated_docs", "from_vectors"):
                info[f"{count}_total"] = info[count] + (prev.get(f"{count}_total", 0) if resumed else 0)
            # what embedding cost, kept across reruns that find the index complete
            info["seconds"] = (time.perf_counter() - t0) if info["embedded_now"] else prev.get("seconds")
            record.write_text(dumps(info, indent=2))
            synced = (f" ({info['embedded_now']} indexed now, {info['from_vectors']} of them from precomputed vectors, "
                      f"{info['deleted_now']} deleted)" if info["from_vectors"] else
                      f" ({info['embedded_now']} embedded now, {info['deleted_now']} deleted)"
                      if info["embedded_now"] or info["deleted_now"] else " (up to date)")
            where = (f"alias {info['alias']} → {info['index']}" if move_alias else
                     f"alias {info['alias']} not moved (only `esdistill deploy` moves it)")
            self.log(f"deploy: {info['docs']} documents in {info['index']}{synced} ({info['dims']} dims, "
                     f"{info['similarity']}, {info['index_options']}, {info['replicas']} replicas); {where}")
            if info["truncated_docs"]:
                self.log(f"deploy: {info['truncated_docs']} of {info['embedded_now']} documents embedded now are longer "
                         f"than {info['max_tokens']} tokens and were truncated (deploy.max_length raises the limit)")
            return info

    def served_systems(self) -> list[str]:
        """The bi-encoders the configured evaluation serves from a dense index (hybrid serves the student)."""
        wanted = set(self.cfg.evaluate.systems) | ({"student"} if "hybrid" in self.cfg.evaluate.systems else set())
        return [w for w in self.dense_models() if w in wanted]

    def _embed_cache(self, which: str) -> StageCache:
        return self._cache("embed", self.keys.embed(which))

    def embed(self, which: str = "student") -> dict[str, Any]:
        """The ``embed`` stage: the corpus's vectors by ``which`` model, computed ahead of a deploy (on a machine
        that need not reach the cluster). ``deploy`` indexes them instead of embedding."""
        cache = self._embed_cache(which)
        if cache.done:
            return {**cache.info(), "cached": True}
        from .embed import embed_corpus

        with self.stage(f"embed ({which})"), self.engine() as engine:
            info = embed_corpus(self.dense_models()[which][0](), self.cfg.deploy.effective_max_length(self.cfg.train),
                                self.dataset.corpus.values(), len(self.dataset.corpus), cache,
                                self.cfg.deploy.encode_batch_size, self.progress, engine=engine)
            self.log(f"embed ({which}): {info['docs']} documents, {info['dims']} dims, {info['truncated_docs']} "
                     "truncated")
            return info

    def _query_vectors_cache(self, which: str) -> StageCache:
        return self._cache("query-vectors", self.keys.query_vectors(which))

    def query_vectors(self, which: str = "student") -> dict[str, Any]:
        """The ``query-vectors`` stage: the evaluated test queries encoded by ``which`` model, for evaluating it
        where the model itself is not."""
        from .embed import embed_queries

        model = load_bi_encoder(self.dense_models()[which][0](), max_length=self.cfg.train.max_length)
        return embed_queries(model, self.eval_queries(), self._query_vectors_cache(which))

    def pipeline_offline(self) -> dict[str, Any]:
        """The pipeline's run on the test queries without the cluster: the BM25 answers the cluster side recorded
        (:meth:`test_candidates`) reranked here, one query at a time. Its latency is that BM25 request's, timed
        there, plus the reranking, timed here (``rerank_ms``; the report says where each ran)."""
        import torch

        cache = self._system_cache("pipeline")
        if cache.done:
            return {**cache.info(), "cached": True}
        tc = self._test_candidates_cache()
        if not tc.done:
            self.test_candidates()  # needs the cluster: a bundle carries it
        cands = pd.read_parquet(tc.path("candidates.parquet"))
        timing = pd.read_parquet(tc.path("timing.parquet")).set_index("qid")
        ev = self.cfg.evaluate
        pipe = search_mod.Pipeline(None, self.cfg.bm25_index, self.text_fields, self.pipeline_reranker(),
                                   ev.rerank_depth, ev.k, self.cfg.teacher.batch_size,
                                   bm25_weight=self.pipeline_weight())
        queries = self.eval_queries()
        by_q = {q: g for q, g in cands.groupby("qid")}
        run, wall, took, rerank = {}, [], [], []
        cuda = torch.cuda.is_available()
        with self.stage("pipeline (offline rerank)"):
            task = self.progress.add_task("pipeline: rerank the recorded BM25 answers", total=len(queries))
            for n, qid in enumerate(sorted(queries)):
                g = by_q.get(qid)
                if g is None:  # BM25 found nothing for this query: nor does the pipeline
                    head, docs, ranked = pd.DataFrame({"bm25": []}), [], []
                else:
                    head = g[g["head"].astype(bool)].sort_values("bm25", ascending=False)
                    texts = self.docs(list(head.docid))
                    docs = [texts[d] for d in head.docid]
                    ranked = list(g[g["rank"] > 0].sort_values("rank").docid)
                if n == 0:
                    pipe.rerank(queries[qid], docs, list(head.bm25), ranked)  # warm-up
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                hits = pipe.rerank(queries[qid], docs, list(head.bm25), ranked)
                if cuda:
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) * 1e3
                run[qid] = dict(hits)
                rerank.append(ms)
                wall.append(float(timing.loc[qid, "bm25_wall_ms"]) + ms)
                took.append(float(timing.loc[qid, "took_ms"]))
                self.progress.advance(task)
            out = {"run": run, "wall_ms": wall, "took_ms": took, "extra_ms": {"rerank_ms": rerank},
                   "measured": {"reranked on": environment_label(),
                                "its BM25 request timed": "where the bundle was exported"}}
            cache.path("run.json").write_text(dumps(out))
        return cache.finish(system="pipeline", queries=len(queries), offline=True)

    def run_offline(self) -> dict[str, Any]:
        """Every stage that needs no cluster, from the bundle: teacher fit and scores, the student and (when
        evaluated) the control, the corpus and test-query vectors of every served model, the pipeline's
        rankings of the test queries."""
        if self.bundle is None:
            raise InputError("run_offline needs a bundle", hint="esdistill run --offline --bundle FOLDER")
        done: dict[str, Any] = {}
        if self.fits_needed():
            done["teacher fit"] = self.teacher_fit()
        done["teacher"] = self.teacher()
        done["train"] = self.train()
        if "judgments" in self.cfg.evaluate.systems:
            done["train (judgments only)"] = self.train_judgments()
        if "log_only" in self.cfg.evaluate.systems:
            done["train (log only)"] = self.train_log_only()
        for which in self.served_systems():
            done[f"embed ({which})"] = self.embed(which)
            done[f"query vectors ({which})"] = self.query_vectors(which)
        if ("pipeline" in self.cfg.evaluate.systems and self.cfg.teacher.kind != "request"
                and self.request_member_search() is None):
            done["pipeline"] = self.pipeline_offline()  # a search request (teacher or member) runs in the cluster
        return done

    def _system_cache(self, name: str) -> StageCache:
        return self._cache("evaluate-system", self.keys.system(name))

    def _eval_cache(self) -> StageCache:
        return self._cache("evaluate", self.keys.evaluate())

    def systems(self, served: bool = False) -> dict[str, Callable[[], Any]]:
        """Builders of each system to evaluate (models load only when a system runs). Dense systems search the
        configured deploy's versioned index, or with ``served`` the alias (what applications query now) with the
        model of the deploy behind it, and the pipeline is the one that taught that deploy's student — as the
        deploy recorded them (:mod:`esdistill.served`): nothing is trained, fitted or scored."""
        ev, c = self.cfg.evaluate, self.client
        loaded: dict[str, Any] = {}
        served_index: dict[str, str] = {}  # served: the index whose model was loaded

        def dense_model(which: str):  # one load shared by the student and hybrid systems
            if which not in loaded and served:
                d = self.served_deploy(which)
                served_index[which] = d.index
                m = load_query_encoder(d.model_path(), ev.query_encoder, self.workdir / "onnx" / d.model_key[:16],
                                       max_length=d.meta.get("query_max_length") or self.cfg.train.max_length,
                                       threads=ev.encoder_threads)
                check_dims(c, d.index, embedding_info(m)[0])
                loaded[which] = BatchingEncoder(m, ev.encode_batch) if batches(ev) else m
            if which not in loaded:
                path_of, key_of, _ = self.dense_models()[which]
                path, vectors = path_of(), self._query_vectors_cache(which)
                if not model_available(path) and vectors.done:
                    # the model stayed where it was trained; its test-query vectors came back
                    from .embed import PrecomputedQueryEncoder

                    m = PrecomputedQueryEncoder(vectors, self.eval_queries())
                    dims = m.dims
                else:
                    m = load_query_encoder(path, ev.query_encoder, self.workdir / "onnx" / key_of()[:16],
                                           max_length=self.cfg.train.max_length, threads=ev.encoder_threads)
                    dims = embedding_info(m)[0]
                    if batches(ev):  # PyTorch: concurrent queries (search under load) share batched passes
                        m = BatchingEncoder(m, ev.encode_batch)
                check_dims(c, self._dense_target(which, served), dims)
                loaded[which] = m
            return loaded[which]

        def expect(which: str) -> str | None:  # checked on every hit (call after dense_model)
            return served_index.get(which)

        def knn(which: str):  # a served bi-encoder: the student, the zero-shot base, the control
            s = search_mod.Student(c, self._dense_target(which, served), dense_model(which), ev.k, ev.num_candidates,
                                   oversample=ev.oversample, expect_index=expect(which))
            s.name = which
            return s

        return {
            "bm25": lambda: search_mod.BM25(c, self.cfg.bm25_index, self.text_fields, ev.k),
            "pipeline": lambda: served_mod.served_pipeline(self, self.served_deploy("student")) if served
            else search_mod.RequestPipeline(self.request_search(), ev.k)
            if self.cfg.teacher.kind == "request" else search_mod.Pipeline(
                c, self.cfg.bm25_index, self.text_fields, self.pipeline_reranker(),
                ev.rerank_depth, ev.k, self.cfg.teacher.batch_size, bm25_weight=self.pipeline_weight()),
            "zero_shot": lambda: knn("zero_shot"),
            "judgments": lambda: knn("judgments"),
            "log_only": lambda: knn("log_only"),
            "student": lambda: knn("student"),
            "hybrid": lambda: search_mod.Hybrid(c, self.cfg.bm25_index, self.text_fields,
                                                self._dense_target("student", served), dense_model("student"), ev.k,
                                                ev.num_candidates, ev.rrf_k, oversample=ev.oversample,
                                                expect_index=expect("student")),
        }

    def served_deploy(self, which: str = "student") -> served_mod.ServedDeploy:
        """The deploy the alias of ``which`` serves now (its index and the record its deploy wrote)."""
        return served_mod.served_deploy(self.client, self.dense_models()[which][2])

    def _dense_target(self, which: str, served: bool) -> str:
        return self.dense_models()[which][2] if served else self.dense_index(which)

    def evaluate(self) -> dict[str, Any]:
        """Run every system over the test queries and write the side-by-side report. Dense systems are measured
        on the configured deploy's versioned index (built if missing); no alias is moved."""
        ds = self.dataset
        if not ds.test_qrels:
            raise InputError("evaluate needs test queries with judgments",
                             hint="BEIR: qrels/<test_split>.tsv; own data: data.test_queries and data.test_qrels")
        self._ensure_index()  # another project (or a person) may have rebuilt the BM25 index under this name
        queries = self.eval_queries()
        unjudged = len(ds.test_queries) - len(queries)
        if unjudged:
            self.log(f"evaluate: {unjudged} of {len(ds.test_queries)} test queries have no relevant judgment and are "
                     "left out (every system would score 0 on them)")
        if not queries:
            raise InputError("no test query has a relevant judgment (grade > 0)", hint="check the test qrels")
        qrels = {q: ds.test_qrels[q] for q in queries}
        wanted = set(self.cfg.evaluate.systems)
        for which in self.dense_models():
            if which in wanted or (which == "student" and "hybrid" in wanted):
                self.deploy(which, move_alias=False)
        builders = self.systems()
        results = {}
        with self.stage("evaluate"):
            for name in self.cfg.evaluate.systems:
                cache = self._system_cache(name)
                if not cache.done:
                    system = builders[name]()
                    run = eval_mod.run_system(system, queries, self.progress)
                    encoder = getattr(getattr(system, "student", system), "model", None)
                    if getattr(encoder, "precomputed", False):
                        run["measured"] = {"encode": "query vectors computed where the model was trained: the latency "
                                                     "here excludes encoding"}
                    elif encoder is not None:
                        run["measured"] = {"encode": f"queries encoded by {served_encoder_label(self.cfg.evaluate)}"}
                    cache.path("run.json").write_text(dumps(run))
                    cache.finish(system=name, queries=len(queries))
                results[name] = json.loads(cache.path("run.json").read_text())
            summary = eval_mod.summarize(qrels, results)
            summary["test_queries_without_relevant"] = unjudged
            if "pipeline" in results:
                summary["agreement_with_pipeline"] = {
                    n: self.agreement_with_pipeline(builders[n](), results["pipeline"]["run"], queries)
                    for n in ("zero_shot", "student", "log_only", "judgments") if n in results}
        cache = self._eval_cache()
        record = self.workdir / "deploy" / f"{self._deploy_key()}.json"
        deploy_info = json.loads(record.read_text()) if record.exists() else None
        measured = {n: "; ".join(f"{what}: {how}" for what, how in r["measured"].items())
                    for n, r in results.items() if r.get("measured")}
        extra = {"dataset": self.cfg.data.name, "profile": self.cfg.profile, "deploy": deploy_info,
                 "measured": measured,
                 "config": json.loads(self.cfg.model_dump_json()), "left_out_of_training": len(ds.leaked),
                 "stage_seconds": self.stage_seconds, "stage_estimates": self.stage_estimates,
                 "environment": environment(), "evaluate_key": cache.key}
        out = self.workdir / "reports" / f"{self.cfg.data.name}-{self.cfg.profile}-{cache.key[:8]}"
        md, js = eval_mod.write_report(summary, out, f"{self.cfg.data.name} — {self.cfg.profile} profile", extra)
        cache.finish(report=str(md))
        print(md.read_text(), flush=True)  # the table goes to stdout; progress and logs to stderr
        self.log(f"report: {md} and {js}")
        written = self.write_results(summary, results, queries, cache.key)
        self.log(f"results: {written} documents in index {results_mod.RESULTS_INDEX} (Kibana dashboards read it)")
        return {"markdown": str(md), "json": str(js), "summary": summary}

    def agreement_with_pipeline(self, knn, pipeline_run: dict[str, dict[str, float]],
                                queries: dict[str, str]) -> dict[str, Any]:
        """A served bi-encoder (``knn``: a :class:`~esdistill.search.Student`) reranking the pipeline's own
        candidates — the head it reranked, BM25's top ``rerank_depth`` of each test query — scored against the
        pipeline's order (:func:`esdistill.agreement.agreement`: NDCG@10 graded by the pipeline's order,
        overlap@10, RBO, bootstrap intervals). Distillation shows here first: the student must agree more with its
        teacher than the zero-shot base does. The documents' vectors are the deployed ones (a kNN search
        restricted to the candidates' ids, exact at that size)."""
        from .agreement import agreement

        depth = self.cfg.evaluate.rerank_depth
        heads = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:depth]) for q, r in pipeline_run.items()}
        knn.k = knn.num_candidates = depth
        tested = {}
        for qid, head in heads.items():
            knn.filter = {"ids": {"values": sorted(head)}}
            tested[qid] = dict(knn.search(queries[qid]).hits)
        return agreement(heads, tested)

    def sweep(self, index_types: list[str], num_candidates: list[int], oversample: float | None = None,
              k: int = 10) -> dict[str, Any]:
        """Recall@k of approximate kNN vs exact and latency, per index type and num_candidates (test queries),
        on indices built as the served one is (same bulk size, not force-merged)."""
        import numpy as np

        from .sweep import sweep as run_sweep
        from .sweep import sweep_markdown

        path = self.student_path()
        cache = self._cache("sweep-vectors", self.keys.sweep_vectors())
        model = load_bi_encoder(path, max_length=self.cfg.deploy.effective_max_length(self.cfg.train))
        with self.stage("sweep"):
            if not cache.done:
                docs = (list(self.dataset.corpus.values()) if self.dataset.corpus is not None
                        else list(iter_index_docs(self.client, self.cfg.data.index, self.text_fields)))
                vecs = model.encode([d.full_text for d in docs], batch_size=self.cfg.deploy.encode_batch_size,
                                    normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
                np.save(cache.path("docs.npy"), vecs.astype("float32"))
                cache.path("ids.txt").write_text("\n".join(d.id for d in docs))
                cache.finish(docs=len(docs))
            doc_vecs = np.load(cache.path("docs.npy"))
            ids = cache.path("ids.txt").read_text().split("\n")
            qids = sorted(self.dataset.test_queries)
            q_vecs = model.encode([self.dataset.test_queries[q] for q in qids], normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
            rows = run_sweep(self.client, ids, doc_vecs, q_vecs, self.cfg.dense_alias, index_types, num_candidates,
                             k=k, oversample=oversample, m=self.cfg.deploy.m,
                             ef_construction=self.cfg.deploy.ef_construction, chunk_size=self.cfg.deploy.batch_size,
                             progress=self.progress)
        md = sweep_markdown(rows, k)
        out = self.workdir / "reports" / f"{self.cfg.data.name}-sweep-{cache.key[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.md").write_text(md)
        (out / "sweep.json").write_text(dumps({"rows": rows, "queries": len(qids), "docs": len(ids), "k": k,
                                               "environment": environment()}, indent=2))
        print(md, flush=True)
        return {"rows": rows, "markdown": str(out / "sweep.md")}

    def export(self, upload: bool = False, start: bool = False, replace: bool = False) -> dict[str, Any]:
        """Trace the student with eland, verify it against sentence-transformers; optionally upload it."""
        from . import eland_export as ex

        path = self.student_path()
        cache = self._cache("export", {"student": self._train_cache().key})
        with self.stage("export"):
            name = self.student_model_id()
            export = ex.trace_student(path, cache.dir, self.cfg.deploy.effective_max_length(self.cfg.train),
                                      name=name)
            sample = [d.full_text for d in list(self.docs(sorted(self.candidates_frame().docid.unique())[:16]).values())]
            sample += list(self.dataset.train_queries.values())[:4]
            cos = ex.verify_traced(export, path, sample)
            self.log(f"export: {export.model_id} traced to {export.model_path} ({export.dims} dims, "
                     f"max {export.max_length} tokens); min cosine vs sentence-transformers {cos:.6f}")
            info = {"model_id": export.model_id, "folder": str(cache.dir), "min_cosine": cos}
            if upload:
                backend = backend_for(self.client)
                info.update(backend.upload_model(export, start=start, replace=replace))
                backend.put_ingest_pipeline(f"{export.model_id}-embed",
                                            backend.embed_pipeline(export.model_id, self.text_fields))
                self.log(f"export: uploaded {export.model_id}" + (" and started it" if start else "")
                         + f"; ingest pipeline {export.model_id}-embed")
            return info

    def student_model_id(self) -> str:
        """The id ``esdistill export`` uploads the student under (``deploy.model_id`` overrides it)."""
        return self.cfg.deploy.model_id or f"esdistill-{self.cfg.data.name}-{self._train_cache().key[:8]}"

    def deploy_in_cluster(self) -> dict[str, Any]:
        """``deploy`` with ``deploy.embed_in = "cluster"``: the cluster's ML nodes embed the source index into the
        versioned dense index through the uploaded student's ingest pipeline (:mod:`esdistill.cluster_embed`);
        counts verified, then the alias moves. Refused clearly where the cluster has no ML (the test build)."""
        from .cluster_embed import embed_in_cluster, require_deployed
        from .deploy import dense_body, point_alias, prune, replica_count, update_meta
        from .indexing import create_index, drop_own_index

        cfg, alias, key = self.cfg.deploy, self.cfg.dense_alias, self._deploy_key("student")
        index, model_id = versioned_index(alias, key), self.student_model_id()
        with self.stage("deploy (in the cluster)"):
            require_deployed(self.client, model_id)  # before anything is created
            source = self.cfg.bm25_index
            self._ensure_index()
            self.client.indices.refresh(index=source)
            total = self.client.count(index=source).body["count"]
            meta = index_meta(self.client, index)
            record = {**served_mod.deploy_record(self, "student", self.student_path()), "model": model_id,
                      "model_path": served_mod.local_path(self.student_path()), "embedded_by": "cluster"}
            if meta and meta.get("key") == key and self.client.count(index=index).body["count"] == total:
                update_meta(self.client, index, record)
                info = {"index": index, "docs": total, "embedded_now": 0}
            else:
                from .models import read_meta

                # the trained student's record says its dims; a model from elsewhere is loaded to ask
                dims = read_meta(Path(self.student_path())).get("dims") or embedding_info(
                    load_bi_encoder(self.student_path(), device="cpu"))[0]
                drop_own_index(self.client, index)
                body = dense_body(dims, True, cfg)
                body["settings"]["number_of_replicas"] = replica_count(self.client, cfg.replicas)
                create_index(self.client, index, body, {"key": key, "dims": dims, **record})
                done = embed_in_cluster(self.client, model_id, source, index, self.text_fields, total, cfg.slices,
                                        self.progress)
                info = {"index": index, "docs": done["docs"], "embedded_now": done["created"] + done["updated"],
                        "task": done["task"]}
            info.update(alias=alias, alias_left=point_alias(self.client, alias, index),
                        pruned=prune(self.client, alias, cfg.keep_versions), embedded_by=model_id)
            self.log(f"deploy: alias {alias} → {index} ({info['docs']} documents, embedded in the cluster by "
                     f"{model_id})")
            return info

    def export_encoder(self, out: Path | None = None) -> dict[str, Any]:
        """The deployed student as a portable query encoder (ONNX fp32 + int8, ``tokenizer.json``, a manifest
        naming this deploy): see :mod:`esdistill.encoder_export`. Written to ``out`` (default
        ``<workdir>/encoders/<deploy key>``); an export already there for this deploy is kept."""
        from . import encoder_export as ee
        from .deploy import VECTOR_FIELD

        key, alias, index = self._deploy_key("student"), self.cfg.dense_alias, self.dense_index("student")
        out = Path(out) if out else self.workdir / "encoders" / key
        with self.stage("export (query encoder)"):
            meta = index_meta(self.client, index)
            if not meta or meta.get("key") != key:
                raise ClusterError(f"this config's deploy {index!r} is not in the cluster, so there is nothing to "
                                   "encode queries for", hint="run `esdistill deploy` first")
            try:
                live = set(self.client.indices.get_alias(name=alias).body)
            except Exception:  # noqa: BLE001 - no alias yet: said below
                live = set()
            if live != {index}:
                self.log(f"[yellow]note:[/] alias {alias!r} serves {sorted(live) or 'nothing'}, not {index!r}: "
                         "clients refuse this encoder until `esdistill deploy` points the alias at it")
            complete = ee.is_complete(out, key)
            mapping = self.client.indices.get_mapping(index=index).body[index]["mappings"]
            ev = self.cfg.evaluate
            manifest = ee.manifest_for(
                deploy_key=key, alias=alias, index=index, vector_field=VECTOR_FIELD,
                similarity=mapping["properties"][VECTOR_FIELD].get("similarity", "cosine"),
                model=ee.read_manifest(out)["model"] if complete else model_fingerprint(self.student_path()),
                knn={"k": ev.k, "num_candidates": ev.num_candidates}, bm25_index=self.cfg.bm25_index,
                bm25_query=cand_mod.bm25_query("{{query}}", self.text_fields), rrf_k=ev.rrf_k)
            if complete:  # the graphs are this deploy's; the settings are the config's now
                kept, changed = ee.update_manifest(out, manifest)
                self.log(f"export: query encoder for {index} in {out} (cached"
                         + (f"; manifest updated: {', '.join(changed)})" if changed else ")"))
                return kept
            model = load_bi_encoder(self.student_path(), max_length=self.cfg.train.max_length, device="cpu")
            sample = list(self.eval_queries().values())[:24] + list(self.dataset.train_queries.values())[:8]
            info = ee.export_query_encoder(model, out, manifest, model.max_seq_length, sample)
            self.log(f"export: query encoder for {index} in {out} ({info['dims']} dims, max {info['max_length']} "
                     f"tokens; min cosine vs sentence-transformers: fp32 "
                     f"{info['min_cosine_vs_sentence_transformers']['model.onnx']:.6f}, int8 "
                     f"{info['min_cosine_vs_sentence_transformers']['model_int8.onnx']:.4f})")
            return info

    def teacher_id(self) -> str:
        """The teacher as the results index names it: the user's model, the search request, or the fit."""
        t = self.cfg.teacher
        return t.model or (self.keys.scorer() if t.kind in ("request", "ensemble")
                           else f"fit:{self._teacher_fit_cache().key}")

    def write_results(self, summary, results, queries, evaluate_key: str) -> int:
        """Per-query and per-system results into the results index (overwriting this evaluation's earlier ones)."""
        now = datetime.now(timezone.utc)
        # run ids sort by time (the dashboard lists the newest runs first), then name the evaluation
        meta = {"run_id": f"{now:%Y%m%dT%H%M%S}-{evaluate_key[:8]}", "evaluate_key": evaluate_key,
                "dataset": self.cfg.data.name, "profile": self.cfg.profile,
                "model_id": self.student_path() if {"student", "hybrid"} & set(results) else None,
                "teacher_id": self.teacher_id(), "timestamp": now}
        return results_mod.write_results(self.client, results_mod.result_docs(summary, results, queries, meta))

    def monitor(self, source: str | None = None, index: str | None = None) -> dict[str, Any]:
        """The deployed student's agreement with the pipeline on recent queries (:mod:`esdistill.monitor`): a
        report in ``<workdir>/monitor/``, documents in the results index, ``below`` when under ``min_ndcg``."""
        from . import monitor as mon

        with self.stage("monitor"):
            queries = mon.monitor_queries(self, source, index)
            served = self.served_deploy()
            report = mon.run_monitor(self, queries, self.progress)
            report["deploy"] = {"alias": served.alias, "index": served.index, "key": served.key,
                                "model": served.model}
            import uuid

            # time-sortable and unique: two runs in one second neither share files nor overwrite each other's docs
            stamp = f"{report['date'].replace(':', '').replace('-', '')[:15]}-{uuid.uuid4().hex[:6]}"
            md, js = mon.write_report(report, self.workdir / "monitor", stamp)
            meta = {"run_id": f"{stamp}-monitor", "evaluate_key": f"monitor-{stamp}-{served.key[:8]}",
                    "dataset": self.cfg.data.name, "profile": self.cfg.profile, "model_id": served.model,
                    "teacher_id": (served.meta.get("pipeline") or {}).get("teacher_id")}
            written = results_mod.write_results(self.client, mon.result_docs(report, meta))
            threshold = self.cfg.monitor.min_ndcg
            report.update(markdown=str(md), json=str(js), results_written=written,
                          below=threshold is not None and report["mean"]["ndcg@10"] < threshold)
            print(mon.markdown(report), flush=True)
            self.log(f"monitor: {md}; {written} documents in index {results_mod.RESULTS_INDEX}")
            return report

    def run(self) -> dict[str, Any]:
        """All stages in order; finished stages are cache hits."""
        self.index()
        self.candidates()
        if self.fits_needed():
            self.teacher_fit()
        self.teacher()
        self.train()
        self.deploy()
        return self.evaluate()


def model_available(path: str) -> bool:
    """Whether a model can be loaded here: a folder that exists, or a name (hub id, ``minilm``) rather than the
    path of a folder that stayed on another machine."""
    return Path(path).exists() or not Path(path).is_absolute()


def environment_label() -> str:
    """This machine in a few words: the GPU's name, else its CPU count."""
    import os

    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"


def environment() -> dict[str, Any]:
    import os

    import elasticsearch
    import sentence_transformers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "elasticsearch_client": elasticsearch.__versionstr__, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "machine": platform.machine(), "system": platform.system()}
