"""The ``train``, ``train-judgments`` and ``train-log`` stages: the distilled student, the control trained on
the judgments alone, and the log-only student; and every servable bi-encoder (:meth:`dense_models`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cache import StageCache
from ..config import fingerprint
from ..models import model_fingerprint
from ..train import agreement_summary, train_student
from .base import StageWork
from .keys import budget_key, pairs_fingerprint, train_settings, trained_key


class TrainStage(StageWork):
    """The three students: distilled, judgments-only control, log-only."""

    def _train_cache(self) -> StageCache:
        return self.p._cache("train", self.train_inputs())

    def train(self) -> dict[str, Any]:
        """Distill the teacher's scores into the student bi-encoder."""
        cache = self._train_cache()
        if cache.done:  # no need to read and fuse every score again
            return {**cache.info(), "cached": True}
        teacher_caches = (self.p.member_caches() if self.cfg.teacher.kind == "ensemble" else
                          [c for c in (self.p._teacher_cache(True), self.p._teacher_cache(False)) if c is not None])
        self.p._parallel_inputs("train", teacher_caches, "esdistill teacher -c CONFIG")
        scores = self.p.scores_frame()
        with self.p.stage("train"):
            info = train_student(self.cfg.train, scores, self.p.train_queries, self.p.dataset.train_qrels,
                                 self.p.docs, self._train_cache(), self.p.log, self.p.max_positives(),
                                 self.p.progress, self.cfg.profile, self._cap_record(), member=self.bi_encoder_member())
            if info.get("dev_before"):
                b = info["dev_before"].get("dev_cosine_ndcg@10")
                a = info["dev_after"].get("dev_cosine_ndcg@10")
                if a is not None and b is not None:
                    self.p.log(f"train: dev NDCG@10 {b:.3f} → {a:.3f}; teacher agreement (Spearman) "
                               f"{info['agreement_before'].get('spearman', float('nan')):.3f} → "
                               f"{info['agreement_after'].get('spearman', float('nan')):.3f}")
            self._log_agreement(info, self.cfg.train, "train")
            return info

    def run_offline(self) -> dict[str, Any]:
        done = {"train": self.train()}
        if "judgments" in self.cfg.evaluate.systems:
            done["train (judgments only)"] = self.train_judgments()
        if "log_only" in self.cfg.evaluate.systems:
            done["train (log only)"] = self.train_log_only()
        return done

    def bundle_back(self, weights, vectors):
        out = [(self._train_cache(), "student" in weights)]
        if "judgments" in self.cfg.evaluate.systems:
            out.append((self._control_cache(), "judgments" in weights))
        if "log_only" in self.cfg.evaluate.systems:
            out.append((self._log_only_cache(), "log_only" in weights))
        return out

    def bi_encoder_member(self) -> str | None:
        """The teacher's bi-encoder member the students copy (``train.embedding_passes``): the first
        ``bi_encoder:<model>`` of ``teacher.ensemble``, else None."""
        from ..ensemble import parse

        return next((m.model for m in map(parse, self.cfg.teacher.ensemble or []) if m.kind == "bi_encoder"), None)

    def _cap_record(self) -> dict[str, Any]:
        """What the train record keeps of ``data.max_positives_per_query``: the setting and the cap it meant."""
        return {"max_positives": self.p.max_positives(), "max_positives_setting": self.cfg.data.max_positives_per_query}

    def student_path(self) -> str:
        cache = self._train_cache()
        if not cache.done:
            self.train()
        return str(cache.path("model"))

    def _control_config(self):
        return self.cfg.train.model_copy(update={"loss": "judgments"})

    def _control_cache(self) -> StageCache:
        return self.p._cache("train-judgments", self.control_inputs())

    def train_judgments(self) -> dict[str, Any]:
        """The control: a student trained on the judgments alone (BM25 hard negatives, no teacher), with the
        same base model and settings as the student. A distilled student that does not beat it has not earned
        its teacher."""
        self.p._parallel_inputs("train --judgments", [self.p._candidates_cache()], "esdistill candidates -c CONFIG")
        pairs = self.p.teacher_pairs(judged=True)  # BM25 candidates plus the judged positives BM25 missed
        floor = pairs.groupby("qid").bm25.transform("min").fillna(0.0) - 1.0
        scores = pairs.assign(teacher=pairs.bm25.fillna(floor).astype("float32"))
        with self.p.stage("train (judgments only)"):
            info = train_student(self._control_config(), scores, self.p.dataset.train_queries, self.p.dataset.train_qrels,
                                 self.p.docs, self._control_cache(), self.p.log, self.p.max_positives(),
                                 self.p.progress, self.cfg.profile, self._cap_record())
            b = info.get("dev_before", {}).get("dev_cosine_ndcg@10")
            a = info.get("dev_after", {}).get("dev_cosine_ndcg@10")
            if a is not None and b is not None:
                self.p.log(f"train (judgments only): dev NDCG@10 {b:.3f} → {a:.3f}")
            return info

    def _log_only_config(self):
        return self.cfg.train.model_copy(update={"use_judgments": False})

    def _log_only_cache(self) -> StageCache:
        return self.p._cache("train-log", self.log_only_inputs())

    def train_log_only(self) -> dict[str, Any]:
        """The student of a user with a query log and no judgments: the same teacher's labels on the same training
        queries, fused without judgments (:meth:`log_weights`), no judged positive and no MNRL — no judgment
        touches it; the judgments only evaluate it (system ``log_only``)."""
        cache = self._log_only_cache()
        if cache.done:
            return {**cache.info(), "cached": True}
        scores = self.p.scores_frame(log_only=True)
        cfg = self._log_only_config()
        with self.p.stage("train (log only)"):
            info = train_student(cfg, scores, self.p.train_queries, {}, self.p.docs, cache,
                                 self.p.log, None, self.p.progress, self.cfg.profile, member=self.bi_encoder_member())
            self._log_agreement(info, cfg, "train (log only)")
            return info

    def _log_agreement(self, info: dict[str, Any], cfg, stage: str) -> None:
        """The console line of :func:`esdistill.train.agreement_summary` for a student just trained."""
        line = agreement_summary(info.get("agreement_before") or {}, info.get("agreement_after") or {}, cfg, stage)
        if line:
            self.p.log(line)

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
            "student": (self.student_path, lambda: trained_key(self._train_cache()), self.cfg.dense_alias),
            "zero_shot": (lambda: base, lambda: fingerprint({"base": model_fingerprint(base)}),
                          f"{self.cfg.dense_alias}-zero-shot"),
            "judgments": (self.judgments_path, lambda: trained_key(self._control_cache()),
                          f"{self.cfg.dense_alias}-judgments"),
            "log_only": (self.log_only_path, lambda: trained_key(self._log_only_cache()),
                         f"{self.cfg.dense_alias}-log-only"),
        }

    # -- the key: what this stage reads --------------------------------------------------------------
    def train_inputs(self) -> dict[str, Any]:
        out = {"teacher": self.p._teacher_cache().key, "qrels": fingerprint(self.p.dataset.train_qrels),
               **self.p.cap_inputs(), **budget_key(self.cfg), "bm25_weight": self.p.label_weight(),
               "train": train_settings(self.cfg.train),
               "base": model_fingerprint(self.cfg.train.base_model)}
        unjudged = self.p._teacher_cache(judged=False)
        out["teacher_unjudged"] = unjudged.key if unjudged else None
        if self.cfg.teacher.kind == "ensemble":  # the labels: every member's scores, fused with these weights
            out["ensemble"] = {"scores": [c.key for c in self.p.member_caches()],
                               "weights": self.p.ensemble_weights(None)}
        return out

    def log_only_inputs(self) -> dict[str, Any]:
        """The log-only student: BM25's candidate pairs of every training query and the teacher that scores them
        (no judged positive, no judged/unjudged split: nothing a judgment changes), the fusion chosen without
        judgments, train, the base model."""
        pairs = self.p.teacher_pairs()
        found = pairs[pairs.source == "bm25"] if "source" in pairs else pairs
        return {"pairs": pairs_fingerprint(found),
                "queries": fingerprint({q: self.p.train_queries[q] for q in found.qid.unique()}),
                "index_key": self.p.index_key, "fields": self.p.text_fields, "scorer": self.p.scorer(),
                "max_length": self.cfg.teacher.max_length, "log_weights": self.p.log_weights(),
                "train": train_settings(self._log_only_config()), **budget_key(self.cfg),
                "base": model_fingerprint(self.cfg.train.base_model)}

    def control_inputs(self) -> dict[str, Any]:
        control = self._control_config()
        return {"pairs": pairs_fingerprint(self.p.teacher_pairs(judged=True)),
                "queries": fingerprint(self.p.dataset.train_queries),
                "qrels": fingerprint(self.p.dataset.train_qrels), **self.p.cap_inputs(),
                "index_key": self.p.index_key, "fields": self.p.text_fields,
                "train": train_settings(control, exclude={"judged_above_teacher", "embedding_passes",
                                                          "embedding_copy", "embedding_share"}),
                **budget_key(self.cfg),
                "base": model_fingerprint(self.cfg.train.base_model)}
