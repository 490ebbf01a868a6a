"""The ``evaluate-system`` and ``evaluate`` stages: every system run over the test queries (the pipeline also
offline, from the recorded BM25 answers), the side-by-side report and the results index."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from .. import ensemble as ensemble_mod
from .. import evaluate as eval_mod
from .. import results as results_mod
from .. import search as search_mod
from .. import served as served_mod
from ..cache import StageCache
from ..config import fingerprint
from ..deploy import check_dims
from ..environment import environment, environment_label
from ..errors import InputError
from ..jsonutil import dumps
from ..models import embedding_info, load_bi_encoder, load_cross_encoder
from ..query_encoder import BatchingEncoder, batches, load_query_encoder, resolve_query_encoder, served_encoder_label
from .base import StageWork, model_available

#: systems served by the cluster's own model (the uploaded student): they search the student's dense index
CLUSTER_SYSTEMS = ("neural", "hybrid_cluster")
#: how ``hybrid_cluster`` fuses (the cluster's normalization search pipeline): min-max, as the client-side hybrid
CLUSTER_FUSION = {"normalization": "min_max", "combination": "arithmetic_mean"}


class EvaluateStage(StageWork):
    """Every system over the test queries; the report; the results index."""

    def pipeline_reranker(self):
        """What the pipeline reranks BM25's head with: the cross-encoder, or the ensemble's members loaded."""
        if self.cfg.teacher.kind != "ensemble":
            return load_cross_encoder(self.p.teacher_model(), max_length=self.cfg.teacher.max_length)
        scorers = []
        for m in self.p.members():
            if m.kind == "bm25":
                scorers.append((m, None))
            elif m.kind == "bi_encoder":
                scorers.append((m, load_bi_encoder(m.model, max_length=self.cfg.teacher.max_length)))
            elif m.kind == "request":
                scorers.append((m, self.p.request_member_search()))
            else:
                path = (m.model if m.kind == "cross_encoder"
                        else self.p._fit_info(corpus=m.kind == "corpus")["models"]["full"])
                scorers.append((m, load_cross_encoder(path, max_length=self.cfg.teacher.max_length)))
        return ensemble_mod.EnsembleReranker(scorers, self.p.ensemble_weights(self.p.pipeline_depth()))

    def run_offline(self) -> dict[str, Any]:
        if ("pipeline" in self.cfg.evaluate.systems and self.cfg.teacher.kind != "request"
                and self.p.request_member_search() is None):
            return {"pipeline": self.pipeline_offline()}  # a search request (teacher or member) runs in the cluster
        return {}

    def bundle_back(self, weights, vectors):
        return [(self._system_cache("pipeline"), False)] if "pipeline" in self.cfg.evaluate.systems else []

    def pipeline_offline(self) -> dict[str, Any]:
        """The pipeline's run on the test queries without the cluster: the BM25 answers the cluster side recorded
        (:meth:`test_candidates`) reranked here, one query at a time. Its latency is that BM25 request's, timed
        there, plus the reranking, timed here (``rerank_ms``; the report says where each ran)."""
        import torch

        cache = self._system_cache("pipeline")
        if cache.done:
            return {**cache.info(), "cached": True}
        tc = self.p._test_candidates_cache()
        if not tc.done:
            self.p.test_candidates()  # needs the cluster: a bundle carries it
        cands = pd.read_parquet(tc.path("candidates.parquet"))
        timing = pd.read_parquet(tc.path("timing.parquet")).set_index("qid")
        ev = self.cfg.evaluate
        pipe = search_mod.Pipeline(None, self.cfg.bm25_index, self.p.text_fields, self.pipeline_reranker(),
                                   ev.rerank_depth, ev.k, self.cfg.teacher.batch_size,
                                   bm25_weight=self.p.pipeline_weight())
        queries = self.p.eval_queries()
        by_q = {q: g for q, g in cands.groupby("qid")}
        run, wall, took, rerank = {}, [], [], []
        cuda = torch.cuda.is_available()
        with self.p.stage("pipeline (offline rerank)"):
            task = self.p.progress.add_task("pipeline: rerank the recorded BM25 answers", total=len(queries))
            for n, qid in enumerate(sorted(queries)):
                g = by_q.get(qid)
                if g is None:  # BM25 found nothing for this query: nor does the pipeline
                    head, docs, ranked = pd.DataFrame({"bm25": []}), [], []
                else:
                    head = g[g["head"].astype(bool)].sort_values("bm25", ascending=False)
                    texts = self.p.docs(list(head.docid))
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
                self.p.progress.advance(task)
            out = {"run": run, "wall_ms": wall, "took_ms": took, "extra_ms": {"rerank_ms": rerank},
                   "measured": {"reranked on": environment_label(),
                                "its BM25 request timed": "where the bundle was exported"}}
            cache.path("run.json").write_text(dumps(out))
        return cache.finish(system="pipeline", queries=len(queries), offline=True)

    def _system_cache(self, name: str) -> StageCache:
        return self.p._cache("evaluate-system", self.system_inputs(name))

    def _eval_cache(self) -> StageCache:
        return self.p._cache("evaluate", self.evaluate_inputs())

    def systems(self, served: bool = False) -> dict[str, Callable[[], Any]]:
        """Builders of each system to evaluate (models load only when a system runs). Dense systems search the
        configured deploy's versioned index, or with ``served`` the alias (what applications query now) with the
        model of the deploy behind it, and the pipeline is the one that taught that deploy's student — as the
        deploy recorded them (:mod:`esdistill.served`): nothing is trained, fitted or scored."""
        ev, c = self.cfg.evaluate, self.p.client
        loaded: dict[str, Any] = {}
        served_index: dict[str, str] = {}  # served: the index whose model was loaded

        def dense_model(which: str):  # one load shared by the student and hybrid systems
            if which not in loaded and served:
                d = self.served_deploy(which)
                served_index[which] = d.index
                m = load_query_encoder(d.model_path(), ev.query_encoder, self.p.workdir / "onnx" / d.model_key[:16],
                                       max_length=d.meta.get("query_max_length") or self.cfg.train.max_length,
                                       threads=ev.encoder_threads)
                check_dims(c, d.index, embedding_info(m)[0])
                loaded[which] = BatchingEncoder(m, ev.encode_batch) if batches(ev) else m
            if which not in loaded:
                path_of, key_of, _ = self.p.dense_models()[which]
                path, vectors = path_of(), self.p._query_vectors_cache(which)
                if not model_available(path) and vectors.done:
                    # the model stayed where it was trained; its test-query vectors came back
                    from ..embed import PrecomputedQueryEncoder

                    m = PrecomputedQueryEncoder(vectors, self.p.eval_queries())
                    dims = m.dims
                else:
                    m = load_query_encoder(path, ev.query_encoder, self.p.workdir / "onnx" / key_of()[:16],
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
            "bm25": lambda: search_mod.BM25(c, self.cfg.bm25_index, self.p.text_fields, ev.k),
            "pipeline": lambda: served_mod.served_pipeline(self.p, self.served_deploy("student")) if served
            else search_mod.RequestPipeline(self.p.request_search(), ev.k)
            if self.cfg.teacher.kind == "request" else search_mod.Pipeline(
                c, self.cfg.bm25_index, self.p.text_fields, self.pipeline_reranker(),
                ev.rerank_depth, ev.k, self.cfg.teacher.batch_size, bm25_weight=self.p.pipeline_weight()),
            "zero_shot": lambda: knn("zero_shot"),
            "judgments": lambda: knn("judgments"),
            "log_only": lambda: knn("log_only"),
            "student": lambda: knn("student"),
            "hybrid": lambda: search_mod.Hybrid(c, self.cfg.bm25_index, self.p.text_fields,
                                                self._dense_target("student", served), dense_model("student"), ev.k,
                                                ev.num_candidates, ev.rrf_k, oversample=ev.oversample,
                                                expect_index=expect("student"), fusion=ev.hybrid_fusion,
                                                weight=ev.hybrid_weight),
            "neural": lambda: search_mod.Neural(c, self._dense_target("student", served), self.cluster_model(),
                                                ev.k, ev.num_candidates),
            "hybrid_cluster": lambda: search_mod.ClusterHybrid(c, self._dense_target("student", served),
                                                               self.cluster_model(), ev.k, ev.num_candidates,
                                                               **self.cluster_hybrid()),
        }

    def run_pipeline(self, system, queries: dict[str, str]) -> dict[str, Any]:
        """The pipeline over the test queries. With ``evaluate.pipeline_latency_queries`` (fewer than the queries)
        and a bi-encoder member, every query is ranked by the same pipeline with that member's document vectors
        kept across queries (:meth:`esdistill.ensemble.EnsembleReranker.memoized`), and the pipeline itself —
        every document encoded for its query, as it serves — is timed on a stable sample of that many queries.
        Otherwise every query runs live. Either way its BM25 request runs for every query.

        The memoized run also keeps each member's own ranking of the same documents (``members`` in the run: member
        → query → document → score), which the report sets beside the student: the hybrid fuses the student with
        BM25 as the pipeline fuses its model member with BM25, so it passes the pipeline about when the student
        passes that member (bench/README.md, "what holds its hybrid at the pipeline")."""
        n = self.cfg.evaluate.pipeline_latency_queries
        reranker = getattr(system, "reranker", None)
        memo = (reranker.memoized(self.member_vectors) if n and n < len(queries) and hasattr(reranker, "memoized")
                else None)
        if memo is None:
            return eval_mod.run_system(system, queries, self.p.progress)
        fast = copy.copy(system)
        fast.reranker = memo
        self.prefill(system, memo, queries)
        memo.record = {}
        out = eval_mod.run_system_sampled(system, fast, queries, eval_mod.latency_sample(queries, n),
                                          self.p.progress)
        out["members"] = {m.spec: {} for m, _ in memo.scorers}
        for qid, text in queries.items():
            ids, cols = memo.record.get(text, ([], [()] * len(memo.scorers)))  # no BM25 hit: nothing reranked
            for (m, _), col in zip(memo.scorers, cols, strict=True):
                out["members"][m.spec][qid] = {d: float(x) for d, x in zip(ids, col, strict=True)}
        memo.record = None
        check = out["check"]
        out["measured"] = {
            "latency": f"timed live on {check['timed']} of {len(queries)} queries (a stable sample)",
            "quality": f"every query, each document encoded once a run; on the timed queries the live ranking's top "
                       f"10 differs on {len(check['top10_differ'])}, scores by at most {check['max_score_diff']:.1e}"}
        if check["top10_differ"]:
            self.p.log(f"evaluate: the pipeline with document vectors kept ranks {len(check['top10_differ'])} of "
                       f"{check['timed']} timed queries' top 10 differently from the live pipeline (largest score "
                       f"difference {check['max_score_diff']:.1e}): ties or float noise if small — "
                       "leave evaluate.pipeline_latency_queries unset to run every query live")
        return out

    def member_vectors(self, member, model) -> dict:
        """A bi-encoder member's document vectors: the work dir's store of that model at the teacher's length
        (:mod:`esdistill.vectors`), which the teacher's scoring of the training candidates filled — the test
        queries' BM25 head is mostly the same documents."""
        from ..encoding import open_store

        return open_store(self.p.vectors_dir, member.model, model.max_seq_length)

    def prefill(self, system, memo, queries: dict[str, str]) -> None:
        """Each bi-encoder member of ``memo`` encodes every document the pipeline reranks for ``queries`` (BM25's
        head of each, fetched here), once, with a progress bar over documents."""
        from ..encoding import inference_context

        texts = []
        task = self.p.progress.add_task("pipeline: BM25's head of every query", total=len(queries))
        for text in queries.values():
            texts.extend(d.full_text for d in system.retrieve(text)[0])
            self.p.progress.advance(task)
        unique = list(dict.fromkeys(texts))
        for member, model in memo.scorers:
            if member.kind != "bi_encoder":
                continue
            todo = model.missing(unique)
            kept = f", {len(unique) - len(todo)} kept in the work dir" if len(todo) < len(unique) else ""
            task = self.p.progress.add_task(f"pipeline: encode {len(todo)} of {len(unique)} documents once "
                                            f"({member.spec}{kept})", total=len(todo))
            with inference_context():
                model.prefill(unique, self.cfg.teacher.batch_size,
                              advance=lambda n, task=task: self.p.progress.advance(task, n))

    def cluster_hybrid(self) -> dict[str, Any]:
        """How ``hybrid_cluster`` fuses: the client-side hybrid's min-max with its weights (BM25 ``1 -
        evaluate.hybrid_weight``, kNN ``hybrid_weight``), done by the cluster's normalization search pipeline."""
        w = self.cfg.evaluate.hybrid_weight
        return {"weights": (1.0 - w, w), **CLUSTER_FUSION}

    def cluster_model(self) -> str:
        """The model the cluster encodes queries with for ``neural``/``hybrid_cluster``: the uploaded student
        (``deploy.model_id``, else the id ``esdistill export --upload`` gives it), refused clearly unless the
        cluster has ML and the model is deployed there, and — ``hybrid_cluster`` — unless the engine has a hybrid
        query of its own."""
        from ..cluster_embed import require_deployed

        model_id = self.p.student_model_id()
        require_deployed(self.p.client, model_id)
        if "hybrid_cluster" in self.cfg.evaluate.systems:
            self.p.backend.hybrid_text_body("", ["text"], model_id, 1, 1, self.cluster_hybrid()["weights"])
        return model_id

    def served_deploy(self, which: str = "student") -> served_mod.ServedDeploy:
        """The deploy the alias of ``which`` serves now (its index and the record its deploy wrote)."""
        return served_mod.served_deploy(self.p.client, self.p.dense_models()[which][2])

    def _dense_target(self, which: str, served: bool) -> str:
        return self.p.dense_models()[which][2] if served else self.p.dense_index(which)

    def evaluate(self) -> dict[str, Any]:
        """Run every system over the test queries and write the side-by-side report. Dense systems are measured
        on the configured deploy's versioned index (built if missing); no alias is moved."""
        ds = self.p.dataset
        if not ds.test_qrels:
            raise InputError("evaluate needs test queries with judgments",
                             hint="BEIR: qrels/<test_split>.tsv; own data: data.test_queries and data.test_qrels")
        self.p._ensure_index()  # another project (or a person) may have rebuilt the BM25 index under this name
        queries = self.p.eval_queries()
        unjudged = len(ds.test_queries) - len(queries)
        if unjudged:
            self.p.log(f"evaluate: {unjudged} of {len(ds.test_queries)} test queries have no relevant judgment and are "
                       "left out (every system would score 0 on them)")
        if not queries:
            raise InputError("no test query has a relevant judgment (grade > 0)", hint="check the test qrels")
        qrels = {q: ds.test_qrels[q] for q in queries}
        wanted = set(self.cfg.evaluate.systems)
        if wanted & set(CLUSTER_SYSTEMS) and not all(self._system_cache(n).done for n in wanted & set(CLUSTER_SYSTEMS)):
            self.cluster_model()  # refused before anything runs: no ML, no deployed student, no hybrid query
        for which in self.p.dense_models():
            if which in wanted or (which == "student" and {"hybrid", *CLUSTER_SYSTEMS} & wanted):
                self.p.deploy(which, move_alias=False)
        builders = self.systems()
        results = {}
        with self.p.stage("evaluate"):
            for name in self.cfg.evaluate.systems:
                cache = self._system_cache(name)
                if not cache.done:
                    system = builders[name]()
                    run = (self.run_pipeline(system, queries) if name == "pipeline"
                           else eval_mod.run_system(system, queries, self.p.progress))
                    encoder = getattr(getattr(system, "student", system), "model", None)
                    if getattr(system, "measured", None):  # the cluster encodes (neural, hybrid_cluster)
                        run["measured"] = dict(system.measured)
                    elif getattr(encoder, "precomputed", False):
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
        record = self.p.workdir / "deploy" / f"{self.p._deploy_key()}.json"
        deploy_info = json.loads(record.read_text()) if record.exists() else None
        measured = {n: "; ".join(f"{what}: {how}" for what, how in r["measured"].items())
                    for n, r in results.items() if r.get("measured")}
        extra = {"dataset": self.cfg.data.name, "profile": self.cfg.profile, "deploy": deploy_info,
                 "measured": measured,
                 "config": json.loads(self.cfg.model_dump_json()), "left_out_of_training": len(ds.leaked),
                 "stage_seconds": self.p.stage_seconds, "stage_estimates": self.p.stage_estimates,
                 "environment": environment(), "evaluate_key": cache.key}
        out = self.p.workdir / "reports" / f"{self.cfg.data.name}-{self.cfg.profile}-{cache.key[:8]}"
        md, js = eval_mod.write_report(summary, out, f"{self.cfg.data.name} — {self.cfg.profile} profile", extra)
        cache.finish(report=str(md))
        print(md.read_text(), flush=True)  # the table goes to stdout; progress and logs to stderr
        self.p.log(f"report: {md} and {js}")
        written = self.write_results(summary, results, queries, cache.key)
        self.p.log(f"results: {written} documents in index {results_mod.RESULTS_INDEX} (Kibana dashboards read it)")
        return {"markdown": str(md), "json": str(js), "summary": summary}

    def agreement_with_pipeline(self, knn, pipeline_run: dict[str, dict[str, float]],
                                queries: dict[str, str]) -> dict[str, Any]:
        """A served bi-encoder (``knn``: a :class:`~esdistill.search.Student`) reranking the pipeline's own
        candidates — the head it reranked, BM25's top ``rerank_depth`` of each test query — scored against the
        pipeline's order (:func:`esdistill.agreement.agreement`: NDCG@10 graded by the pipeline's order,
        overlap@10, RBO, bootstrap intervals). Distillation shows here first: the student must agree more with its
        teacher than the zero-shot base does. The documents' vectors are the deployed ones (a kNN search
        restricted to the candidates' ids, exact at that size)."""
        from ..agreement import agreement

        depth = self.cfg.evaluate.rerank_depth
        heads = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:depth]) for q, r in pipeline_run.items()}
        knn.k = knn.num_candidates = depth
        tested = {}
        for qid, head in heads.items():
            knn.filter = {"ids": {"values": sorted(head)}}
            tested[qid] = dict(knn.search(queries[qid]).hits)
        return agreement(heads, tested)

    def teacher_id(self) -> str:
        """The teacher as the results index names it: the user's model, the search request, or the fit."""
        t = self.cfg.teacher
        return t.model or (self.p.scorer() if t.kind in ("request", "ensemble")
                           else f"fit:{self.p._teacher_fit_cache().key}")

    def write_results(self, summary, results, queries, evaluate_key: str) -> int:
        """Per-query and per-system results into the results index (overwriting this evaluation's earlier ones)."""
        now = datetime.now(timezone.utc)
        # run ids sort by time (the dashboard lists the newest runs first), then name the evaluation
        meta = {"run_id": f"{now:%Y%m%dT%H%M%S}-{evaluate_key[:8]}", "evaluate_key": evaluate_key,
                "dataset": self.cfg.data.name, "profile": self.cfg.profile,
                "model_id": self.p.student_path() if {"student", "hybrid"} & set(results) else None,
                "teacher_id": self.teacher_id(), "timestamp": now}
        return results_mod.write_results(self.p.client, results_mod.result_docs(summary, results, queries, meta))

    # -- the key: what this stage reads --------------------------------------------------------------
    def system_inputs(self, name: str) -> dict[str, Any]:
        ev = self.cfg.evaluate
        out: dict[str, Any] = {"system": name, "queries": fingerprint(self.p.eval_queries()), "k": ev.k,
                               "index_key": self.p.index_key, "fields": self.p.text_fields}
        dense = {"num_candidates": ev.num_candidates, "oversample": ev.oversample,
                 "encoder": resolve_query_encoder(ev.query_encoder)}
        if name == "pipeline":
            out.update(reranker=self.p.scorer(), depth=ev.rerank_depth, max_length=self.cfg.teacher.max_length,
                       bm25_weight=self.p.pipeline_weight())
            if ev.pipeline_latency_queries:  # which queries are timed (the ranking is the same either way)
                out["latency_queries"] = ev.pipeline_latency_queries
            if self.cfg.teacher.kind == "ensemble":
                out["ensemble_weights"] = self.p.ensemble_weights(self.p.pipeline_depth())
        elif name == "hybrid":
            out.update(deploy=self.p._deploy_key("student"), **dense,
                       **({"rrf_k": ev.rrf_k} if ev.hybrid_fusion == "rrf"
                          else {"fusion": ev.hybrid_fusion, "weight": ev.hybrid_weight}))
        elif name in CLUSTER_SYSTEMS:  # the cluster's model encodes: no client-side encoder
            out.update(deploy=self.p._deploy_key("student"), num_candidates=ev.num_candidates,
                       model=self.p.student_model_id())
            if name == "hybrid_cluster":
                out.update(fusion={k: list(v) if isinstance(v, tuple) else v for k, v in self.cluster_hybrid().items()})
        elif name != "bm25":
            out.update(deploy=self.p._deploy_key(name), **dense)
        return out

    def evaluate_inputs(self) -> dict[str, Any]:
        return {"systems": {n: self._system_cache(n).key for n in self.cfg.evaluate.systems},
                "qrels": fingerprint(self.p.dataset.test_qrels)}
