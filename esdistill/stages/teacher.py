"""The ``teacher`` and ``teacher-unjudged`` stages: the candidate pairs to label and their raw scores by the
teacher — a fitted or given cross-encoder, the user's search request, or each member of an ensemble."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import ensemble as ensemble_mod
from ..cache import StageCache
from ..config import fingerprint
from ..data import relevant
from ..errors import InputError
from ..models import model_fingerprint
from ..teacher import assign_scorers, score_candidates
from .base import StageWork
from .keys import pairs_fingerprint


class TeacherStage(StageWork):
    """The pairs to label and the teacher's raw scores of them."""

    def members(self) -> list[ensemble_mod.Member]:
        return [ensemble_mod.parse(s) for s in self.cfg.teacher.ensemble]

    def _model_members(self) -> list[ensemble_mod.Member]:
        return [m for m in self.members() if m.kind != "bm25"]

    def _member_cache(self, member, judged: bool) -> StageCache | None:
        if not judged and self.teacher_pairs(judged=False).empty:
            return None
        return self.p._cache("teacher" if judged else "teacher-unjudged", self.teacher_inputs(judged, member))

    def member_caches(self) -> list[StageCache]:
        """Every model member's scores of the judged and the unjudged queries."""
        return [c for m in self._model_members() for j in (True, False) if (c := self._member_cache(m, j))]

    def _member_scorers(self, member, qids: list[str]) -> tuple[str, dict[str, str]]:
        """(job kind, qid → model) of one member: the fit's held-out fold models, the corpus teacher, a ready
        cross-encoder, or a bi-encoder's cosine."""
        if member.kind == "fit":
            return "score", assign_scorers(qids, self.p._fit_info(), None)
        if member.kind == "corpus":
            return "score", assign_scorers(qids, self.p._fit_info(corpus=True), None)
        return ("cosine" if member.kind == "bi_encoder" else "score"), {q: member.model for q in qids}

    def teacher_model(self) -> str:
        """The reranker of the pipeline: the user's, or the full fitted model."""
        if self.cfg.teacher.kind == "request":
            raise InputError("the teacher is a search request: it runs in the cluster, there is no reranker model")
        if self.cfg.teacher.kind == "ensemble":
            raise InputError("the teacher is an ensemble: the pipeline reranks with all its members",
                             hint="Project.pipeline_reranker() loads them")
        return self.cfg.teacher.model or self.p._fit_info()["models"]["full"]

    def teacher_pairs(self, judged: bool | None = None) -> pd.DataFrame:
        """Candidates to label (top ``teacher.depth``) plus every judged positive BM25 missed, so it gets a score
        too. ``judged`` selects the judged queries' pairs (True) or the unjudged ones' (False); None gives all."""
        def build() -> pd.DataFrame:
            frame = self.p.candidates_frame()
            depth = self.cfg.teacher.depth or self.cfg.candidates.k
            frame = frame[frame["rank"] <= depth].assign(source="bm25")
            have = set(zip(frame.qid, frame.docid, strict=True))
            cap = self.p.max_positives()  # only the positives training uses need a score
            chosen = {q: relevant(q, docs, cap) for q, docs in self.p.dataset.train_qrels.items()}
            corpus_ids = set(self.p.docs([d for docs in chosen.values() for d in docs]))
            extra = [(q, d, 0, float("nan"), "judged") for q, docs in chosen.items()
                     for d in docs if (q, d) not in have and d in corpus_ids]
            extra_df = pd.DataFrame(extra, columns=["qid", "docid", "rank", "bm25", "source"])
            return pd.concat([frame, extra_df], ignore_index=True) if extra else frame

        pairs = self.p._once(("pairs", self.p._candidates_cache().key), build)
        if judged is None:
            return pairs
        return pairs[pairs.qid.isin(self.p.judged_qids) == judged].reset_index(drop=True)

    def _teacher_cache(self, judged: bool = True) -> StageCache | None:
        """The judged queries' teacher scores (always), or the unjudged ones' (None when there are none). For an
        ensemble: its first model member's (the others' are :meth:`member_caches`)."""
        if self.cfg.teacher.kind == "ensemble":
            return self._member_cache(self._model_members()[0], judged)
        if not judged and self.teacher_pairs(judged=False).empty:
            return None
        return self.p._cache("teacher" if judged else "teacher-unjudged", self.teacher_inputs(judged))

    def teacher(self) -> dict[str, Any]:
        """Score every candidate pair with the teacher (fitting it first when none is given): the judged queries
        each by the fold model that never saw it, the unjudged ones (query log, pseudo-queries) by the full one."""
        fit_info = self.p._fit_info()
        ensemble = self.cfg.teacher.kind == "ensemble"
        work = ([(m, j) for m in self._model_members() for j in (True, False)] if ensemble
                else [(None, j) for j in (True, False)])
        with self.p.stage("teacher"):
            infos = []
            for member, judged in work:
                cache = self._member_cache(member, judged) if ensemble else self._teacher_cache(judged)
                if cache is None:
                    continue
                pairs = self.teacher_pairs(judged)
                if self.cfg.teacher.kind == "request":  # the labels are the request's own scores
                    was_done = cache.done
                    if not was_done:
                        from ..request_teacher import labels

                        labels(pairs, self.scorer()).to_parquet(cache.path("scores.parquet"), index=False)
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
                    self.p.log(f"teacher: ensemble member {member.spec}, {'judged' if judged else 'unjudged'} queries")
                with self.p.engine() as engine:
                    infos.append(score_candidates(pairs, self.p.train_queries, self.p.docs, scorers, cache,
                                                  self.cfg.teacher.max_length, self.cfg.teacher.batch_size,
                                                  self.cfg.teacher.chunk_queries, progress=self.p.progress,
                                                  engine=engine, kind=kind))
            info = {"pairs": sum(i["pairs"] for i in infos), "queries": sum(i["queries"] for i in infos),
                    "scored_now": sum(i.get("scored_now", 0) for i in infos if not i.get("cached")),
                    "cached": all(i.get("cached") for i in infos),
                    "seconds": sum(i.get("seconds") or 0.0 for i in infos)}  # when they were scored
            self.p.log(f"teacher: {info['pairs']} pairs scored" + (" (cached)" if info["cached"] else
                                                                   f" ({info['scored_now']} now)"))
            if ensemble:
                self.p._report_ensemble(info)
            else:
                self.p._report_labels(info, "never saw a query" if self.cfg.teacher.fit.source == "corpus"
                                      and fit_info else "held out" if fit_info else "")
            return info

    def run_offline(self) -> dict[str, Any]:
        return {"teacher": self.teacher()}

    def bundle_out(self) -> list[StageCache]:
        return self.request_member_caches()  # the user's search as an ensemble member runs in the cluster

    def bundle_back(self, weights, vectors):
        caches = (self.member_caches() if self.cfg.teacher.kind == "ensemble"
                  else [self._teacher_cache(True), self._teacher_cache(False)])
        return [(c, False) for c in caches]

    def request_member_caches(self) -> list[StageCache]:
        """The scores of the ensemble member ``request`` (judged and unjudged queries), scored now where they are
        not yet: it runs in the cluster, so a bundle for a machine without one carries them
        (:func:`esdistill.bundle.export`). Empty without that member."""
        if self.p.request_member_search() is None:
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
        scores = self.p.request_member_search().score({q: self.p.train_queries[q] for q in ids}, ids,
                                                      self.cfg.candidates.batch_size, self.p.progress)
        out = pairs.assign(teacher=[scores[q][d] for q, d in zip(pairs.qid, pairs.docid, strict=True)],
                           scorer="request")
        out["teacher"] = out["teacher"].astype("float32")
        out.to_parquet(cache.path("scores.parquet"), index=False)
        return cache.finish(pairs=len(out), queries=len(ids), scored_now=len(out), output="scores.parquet")

    def raw_scores_frame(self) -> pd.DataFrame:
        """The teacher's raw logits for every labelled pair (the judged and the unjudged queries' ``scores.parquet``).
        For an ensemble, ``teacher`` is its first model member's and every member has its column (``m:<name>``;
        BM25's is ``bm25``)."""
        caches = [c for c in (self._teacher_cache(True), self._teacher_cache(False)) if c is not None]
        every = self.member_caches() if self.cfg.teacher.kind == "ensemble" else caches
        if not all(c.done for c in every):
            self.teacher()
        key = tuple(c.key for c in every)
        return self.p._once(("raw", key), lambda: self._read_scores(caches))

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
        return self.p._once(("judged-scores", cache.key), lambda: pd.read_parquet(cache.path("scores.parquet")))

    # -- the key: what this stage reads --------------------------------------------------------------
    def member_scorer(self, member) -> str:
        """One ensemble member's identity (:mod:`esdistill.ensemble`); its scores' cache is keyed on it."""
        if member.kind == "fit":
            return self.p.fitted_scorer()
        if member.kind == "corpus":
            return self.p._ict_cache().key
        if member.kind == "cross_encoder":
            return model_fingerprint(member.model)
        if member.kind == "bi_encoder":
            return f"cosine-{model_fingerprint(member.model)}"
        if member.kind == "request":
            return "request-" + self.p.request_member_search().fingerprint()
        return "bm25"

    def scorer(self) -> str:
        """The teacher's identity: the user's reranker by its fingerprint, the request's body, the fit's key, or
        an ensemble's members (with its fixed weights, if any)."""
        t = self.cfg.teacher
        if t.kind == "ensemble":
            return "ensemble-" + fingerprint({"members": {m.spec: self.member_scorer(m) for m in self.members()},
                                              "weights": t.ensemble_weights})
        if t.kind == "request":
            return f"request-{self.p.request_inputs()}"
        if t.model:
            return model_fingerprint(t.model)
        return self.p.fitted_scorer()

    def teacher_inputs(self, judged: bool, member=None) -> dict[str, Any]:
        """The scores of one part (judged or not) by the teacher — or by one ensemble ``member``: a member that
        is the single teacher of another config (the fit, a cross-encoder) has that teacher's key, so its scores
        are shared."""
        pairs = self.teacher_pairs(judged)
        return {"part": "judged" if judged else "unjudged", "pairs": pairs_fingerprint(pairs),
                "queries": fingerprint({q: self.p.train_queries[q] for q in pairs.qid.unique()}),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "scorer": self.member_scorer(member) if member is not None else self.scorer(),
                "max_length": self.cfg.teacher.max_length}
