"""The ``teacher-fit`` stage: which teachers must be fitted here, and the cross-fitted cross-encoders on the
judged training queries (from the base model or the corpus teacher)."""

from __future__ import annotations

from typing import Any

from .. import ict as ict_mod
from ..cache import StageCache
from ..config import fingerprint
from ..errors import InputError
from ..models import model_fingerprint
from ..teacher import fit_teacher
from .base import StageWork


class TeacherFitStage(StageWork):
    """The teacher fitted here: which ones, and the judged cross-fit."""

    def _fit_cache(self) -> StageCache:
        return self.p._cache("teacher-fit", self.teacher_fit_inputs())

    def _teacher_fit_cache(self) -> StageCache:
        """The cache of the fitted teacher that labels: the corpus teacher's, or the judged (cross-)fit's."""
        return self.p._ict_cache() if self.cfg.teacher.fit.source == "corpus" else self._fit_cache()

    def fits_needed(self) -> list[str]:
        """Which teachers must be fitted here: ``ict`` (the corpus teacher), ``judged`` (the judged cross-fit)
        — for the fitted teacher (by ``teacher.fit.source``) or for the ensemble members that name them."""
        t = self.cfg.teacher
        of_fit = {"judgments": ["judged"], "corpus": ["ict"], "corpus+judgments": ["ict", "judged"]}[t.fit.source]
        if t.kind == "fit":
            return of_fit
        if t.kind != "ensemble":
            return []
        kinds = {m.kind for m in self.p.members()}
        wanted = set(of_fit if "fit" in kinds else []) | ({"ict"} if "corpus" in kinds else set())
        return [x for x in ("ict", "judged") if x in wanted]

    def run_offline(self) -> dict[str, Any]:
        return {"teacher fit": self.teacher_fit()} if self.fits_needed() else {}

    def bundle_back(self, weights, vectors):
        return [(self._fit_cache() if "judged" in self.fits_needed() else None, "teacher" in weights)]

    def teacher_fit(self) -> dict[str, Any]:
        """Fit the teacher: cross-fitted from the train judgments, from the corpus alone, or both in turn."""
        needed = self.fits_needed()
        if not needed:
            raise InputError(f"there is no teacher to fit: the config's teacher is {self.cfg.teacher.kind!r} "
                             f"({self.cfg.teacher.model or self.cfg.teacher.request or self.cfg.teacher.request_template or ', '.join(self.cfg.teacher.ensemble)})",
                             hint="unset [teacher] model / request to fit one from the judgments")
        self.p._parallel_inputs("teacher fit", [self.p._candidates_cache()]
                                + ([self.p._ict_pairs_cache()] if "ict" in needed else []), "esdistill candidates -c CONFIG")
        source = self.cfg.teacher.fit.source
        base = None
        if "ict" in needed:
            info = self.p.teacher_ict()
            if "judged" not in needed:
                return info
            if source == "corpus+judgments":
                base = str(self.p._ict_cache().path(ict_mod.MODEL))
        frame = self.p.candidates_frame()
        with self.p.stage("teacher fit"):
            info = fit_teacher(self.cfg.teacher.fit, self.p.train_queries, self.p.dataset.train_qrels, frame,
                               self.p.docs, self._fit_cache(), self.p.log, self.p.max_positives(),
                               self.p.progress, base_model=base)
            self.p.log(f"teacher fit: {len(info['models']) - 1} fold models + full model on {info['judged_queries']} "
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
                           and "fit" not in {m.kind for m in self.p.members()}):
            return None
        cache = self.p._ict_cache() if corpus else self._teacher_fit_cache()
        if not cache.done:
            self.teacher_fit()
        info = cache.info()
        return {**info, "models": {n: str(cache.path(f"model-{n}")) for n in info["models"]}}

    # -- the key: what this stage reads --------------------------------------------------------------
    def cap_inputs(self) -> dict[str, Any]:
        """The cap ``data.max_positives_per_query`` means for these judgments, as a number, where there is one
        (``auto`` resolved on the data: :meth:`~esdistill.pipeline.Project.max_positives`). Without a cap the keys
        stay those of earlier versions, and ``auto`` that caps at 4 is keyed like a hand-written 4."""
        cap = self.p.max_positives()
        return {} if cap is None else {"max_positives": cap}

    def teacher_fit_inputs(self) -> dict[str, Any]:
        # the fit reads only the judged queries' candidates: a query log or pseudo-queries do not refit it
        ds = self.p.dataset
        judged = {q: t for q, t in ds.train_queries.items() if q in ds.train_qrels}
        fit = self.cfg.teacher.fit
        out = {"index": self.cfg.bm25_index, "index_key": self.p.index_key, "fields": self.p.text_fields,
               "k": self.cfg.candidates.k, "judged_queries": fingerprint(judged),
               "qrels": fingerprint(ds.train_qrels), "fit": fit.model_dump(exclude={"source", "corpus"}),
               "base": model_fingerprint(fit.base_model), **self.cap_inputs()}
        if fit.source == "corpus+judgments":  # starts from the corpus teacher (a judged-only key stays as it was)
            out.update(source=fit.source, base=f"teacher-ict-{self.p._ict_cache().key}")
        return out

    def fitted_scorer(self) -> str:
        """The teacher fitted here (``teacher.fit.source``): the corpus teacher's key, or the judged fit's."""
        return self.p._ict_cache().key if self.cfg.teacher.fit.source == "corpus" else self._fit_cache().key
