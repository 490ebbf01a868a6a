"""The teacher's labels as training reads them: the BM25 weight (``auto``: chosen on the held-out judged
labels), an ensemble's weights, the fused scores, and the report of how good the labels are."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import candidates as cand_mod
from .. import ensemble as ensemble_mod
from .. import evaluate as eval_mod
from ..errors import InputError
from ..teacher import (
    choose_bm25_weight,
    fuse_frame,
    heldout_fusion_quality,
    judged_candidates,
    label_quality,
    label_scale,
)
from .base import StageWork


class Labels(StageWork):
    """The teacher's scores fused into training labels, and how good they are."""

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
        return self.p._once(("ensemble-weights", depth), lambda: ensemble_mod.choose_weights(
            self.p.raw_scores_frame(), self.p.members(), self.p.dataset.train_qrels, depth))

    def pipeline_depth(self) -> int:
        """How many BM25 candidates the pipeline reranks that the teacher also scored in training."""
        return min(self.cfg.evaluate.rerank_depth, self.cfg.teacher.depth or self.cfg.candidates.k)

    def _plain_bm25_quality(self, qids: list[str]) -> float:
        """NDCG@10 of esdistill's own BM25 query (top ``candidates.k``) on the judged training queries ``qids``:
        what a search request as the teacher is measured against."""
        queries = {q: self.p.train_queries[q] for q in qids}
        hits = cand_mod.msearch_bm25(self.p.client, self.cfg.bm25_index, queries, self.p.text_fields,
                                     self.cfg.candidates.k, self.cfg.candidates.batch_size)
        judged = {q: self.p.dataset.train_qrels[q] for q in qids}
        return float(eval_mod.metrics(judged, {q: dict(h) for q, h in hits.items()})["ndcg@10"])

    def _report_labels(self, info: dict[str, Any], held_out: str) -> None:
        """How good the labels are on the judged training queries, alone and fused with BM25; warns when they
        rank no better than BM25."""
        quality = label_quality(self.p.raw_scores_frame(), self.p.dataset.train_qrels)
        if not quality:
            return
        info["label_quality"] = quality
        if self.cfg.teacher.kind == "request":  # its labels are its own order: nothing to blend, BM25 to compare
            quality["bm25_ndcg@10"] = self._plain_bm25_quality(
                sorted(judged_candidates(self.p.raw_scores_frame(), self.p.dataset.train_qrels)[0]))
            ours, bm25 = quality["teacher_ndcg@10"], quality["bm25_ndcg@10"]
            self.p.log(f"teacher (your search request) on {quality['queries']} judged training queries: NDCG@10 "
                       f"{ours:.3f} vs plain BM25 {bm25:.3f} on {self.cfg.bm25_index!r}")
            if ours <= bm25:
                self.p.console.print(
                    "[bold yellow]warning:[/] your search request ranks these judged queries no better than plain "
                    f"BM25 ({ours:.3f} vs {bm25:.3f}): a student distilled from it has no gain over BM25 to keep")
            return
        held = {"held out": " (each query held out from the model that labelled it)",
                "never saw a query": " (the corpus teacher never saw a query)"}.get(held_out, "")
        self.p.log(f"teacher labels on {quality['queries']} judged training queries{held}: NDCG@10 "
                   f"{quality['teacher_ndcg@10']:.3f} vs BM25 {quality['bm25_ndcg@10']:.3f}")
        weight = self.label_weight()
        if self.cfg.teacher.bm25_weight == "auto":
            tried = self._auto_weight(None)["ndcg@10"]
            self.p.log(f"teacher: BM25 weight {weight:g} chosen on the held-out labels (NDCG@10 "
                       + ", ".join(f"{w:g}: {v:.3f}" for w, v in tried.items()) + ")")
            info["bm25_weight_tried"] = {str(w): v for w, v in tried.items()}
        info["bm25_weight"] = weight
        if weight > 0:
            fused = label_quality(self.scores_frame(), self.p.dataset.train_qrels)
            info["label_quality_fused"] = fused
            if self.cfg.teacher.bm25_weight == "auto":
                # the weight was chosen on these same queries: also say what it is worth on queries it was not
                held_out = heldout_fusion_quality(self.p.raw_scores_frame(), self.p.dataset.train_qrels)
                info["label_quality_fused_heldout"] = held_out
                extra = (f"; {held_out['teacher_ndcg@10']:.3f} with the weight chosen on the other half of the "
                         "queries" if held_out else "")
                self.p.log(f"teacher fused with BM25 (weight {weight:g}): NDCG@10 {fused['teacher_ndcg@10']:.3f} on "
                           f"the queries the weight was chosen on{extra}")
            else:
                self.p.log(f"teacher fused with BM25 (weight {weight:g}): NDCG@10 {fused['teacher_ndcg@10']:.3f}")
        final = info.get("label_quality_fused", quality)["teacher_ndcg@10"]
        if final <= quality["bm25_ndcg@10"]:
            self.p.console.print(
                "[bold yellow]warning:[/] the teacher's labels rank the candidates no better than BM25 does; "
                "a student distilled from them learns BM25's mistakes. Fit it longer (profile full, a GPU), "
                "give it more judged queries, or set \\[teacher] model to a ready cross-encoder.")
        elif quality["teacher_ndcg@10"] < quality["bm25_ndcg@10"]:
            self.p.log("teacher: alone it ranks worse than BM25; only its blend with BM25 beats BM25")

    def _report_ensemble(self, info: dict[str, Any]) -> None:
        """Each member's label quality on the judged training queries, the weights, and the ensemble's — also
        with weights chosen on the other half of the queries."""
        members, qrels = self.p.members(), self.p.dataset.train_qrels
        raw = self.p.raw_scores_frame()
        chosen = self._ensemble_choice(None)
        if chosen["weights"] is None:
            self.p.log("teacher ensemble: no judged training query has candidates; its label quality is unknown")
            return
        weights = self.ensemble_weights(None)
        held = ensemble_mod.heldout_quality(raw, members, qrels, None)
        fused = label_quality(self.scores_frame(), qrels)
        info.update(ensemble={"members": [m.spec for m in members], "alone": chosen["alone"], "weights": weights,
                              "chosen_on": chosen["queries"], "label_quality_fused": fused,
                              "label_quality_fused_heldout": held},
                    label_quality_fused=fused)
        self.p.log(f"teacher ensemble on {chosen['queries']} judged training queries, NDCG@10 alone: "
                   + ", ".join(f"{m} {v:.3f}" for m, v in chosen["alone"].items()))
        self.p.log("teacher ensemble: weights " + ", ".join(f"{m.spec} {w:g}" for m, w in zip(members, weights,
                                                                                              strict=True))
                   + (" (fixed)" if self.cfg.teacher.ensemble_weights is not None else " (chosen on these queries)")
                   + f"; fused NDCG@10 {fused['teacher_ndcg@10']:.3f}"
                   + (f", {held['ndcg@10']:.3f} with weights chosen on the other half" if held else ""))
        if fused["teacher_ndcg@10"] <= fused["bm25_ndcg@10"]:
            self.p.console.print("[bold yellow]warning:[/] the ensemble's labels rank the candidates no better than "
                                 "BM25 does; a student distilled from them learns BM25's mistakes.")

    def _auto_weight(self, depth: int | None) -> dict[str, Any]:
        return self.p._once(("auto-weight", depth), lambda: choose_bm25_weight(
            self.p._judged_scores(), self.p.dataset.train_qrels, depth=depth))

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
        return self.p._once("label-scale", lambda: label_scale(self.p.raw_scores_frame()))

    def scores_frame(self, log_only: bool = False) -> pd.DataFrame:
        """The training signal: the teacher's scores, fused with BM25 when ``teacher.bm25_weight`` > 0 (the raw
        logit stays in ``teacher_raw``). ``log_only``: the candidates BM25 found (not the judged positives it missed,
        which only the judgments name), fused as no judgment chooses (:meth:`log_weights`)."""
        raw = self.p.raw_scores_frame()
        if log_only and "source" in raw:
            raw = raw[raw.source == "bm25"].reset_index(drop=True)
        if self.cfg.teacher.kind == "ensemble":  # every member's z-scores, weighted, on the first member's scale
            weights = self.log_weights() if log_only else self.ensemble_weights(None)
            return self.p._once(("ensemble-labels", tuple(weights), log_only), lambda: ensemble_mod.fuse_frame(
                raw, self.p.members(), weights, self._label_scale()))
        w = self.log_weights() if log_only else self.label_weight()
        return fuse_frame(raw, w, self._label_scale() if w else None)

    def log_weights(self):
        """The teacher's fusion without judgments (the log-only student, ``train.use_judgments = false``): an
        ensemble's fixed ``teacher.ensemble_weights``, else equal weights; a fixed ``teacher.bm25_weight``, else
        none (``auto`` is chosen on judgments). A teacher fitted on the judgments is refused: its labels carry
        them."""
        t = self.cfg.teacher
        fitted = [m.spec for m in self.p.members() if m.kind == "fit"] if t.kind == "ensemble" else (
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
