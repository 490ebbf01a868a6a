"""The student copies its teacher's bi-encoder member, text by text (``train.embedding_passes``), before the
ranking losses (``train.embedding_copy = "before"``) or in their batches (``"mixed"``).

A ranking of a query's 30 candidates is little signal: on SciFact a student fitted to 362 queries' orders agrees
with its teacher on those queries and on no others (bench/README.md, "Why the log-only student does not move").
When the teacher has a bi-encoder member (the quick profile's bge-small), that member's embedding of every text
the student trains on is hundreds of numbers of signal, with no judgment needed. Before the ranking losses, the
student learns to reproduce those embeddings — sentence-transformers' model-distillation recipe (``MSELoss``) —
on the training queries (the member's query prompt) and their candidate documents (its document prompt), at the
student's own ``max_length``.

The member's space is first rotated onto the student's zero-shot space (orthogonal Procrustes, fitted on the same
texts): a rotation keeps every cosine of the member, so the targets carry the member's geometry while starting
near the student's own embeddings, instead of asking it to relearn a coordinate system. Measured on SciFact quick
(``bench/embedding_probe.py``): test agreement with the pipeline on its own candidates 0.802 → 0.831 after three
passes over the corpus and the 400 training queries — the first training here that moves it on unseen queries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .budget import fmt_seconds, measure_seconds_per_text
from .models import training_bf16
from .st_compat import st_losses

#: the copy's learning rate: the rotated targets start at a squared distance of ~0.67 from the student's own
#: embeddings, and 1e-4 closes it within passes where 2e-5 (the ranking losses') barely moves (embedding probe)
LEARNING_RATE = 1e-4
#: texts the rotation is fitted on (and the distances measured on), at most
FIT_TEXTS = 2048


def rotation(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """The orthogonal map ``R`` (teacher dims × student dims, orthonormal rows) that brings ``teacher @ R`` closest
    to ``student`` in squared distance (Procrustes: ``U Vᵀ`` of the SVD of ``teacherᵀ student``)."""
    u, _, vt = np.linalg.svd(teacher.T @ student, full_matrices=False)
    return u @ vt


def member_embeddings(member: str, queries: list[str], docs: list[str], max_length: int, cache: Path) -> np.ndarray:
    """The member's unit embeddings of ``queries`` (its query prompt) then ``docs`` (its document prompt), kept in
    ``cache`` keyed by the member, the texts and ``max_length``: a resumed run does not encode them again."""
    from .encoding import inference_context
    from .models import load_bi_encoder, model_fingerprint

    key = hashlib.sha256(json.dumps([model_fingerprint(member), max_length, queries, docs]).encode()).hexdigest()[:16]
    path = cache / f"member-{key}.npy"
    if path.exists():
        return np.load(path)
    model = load_bi_encoder(member, max_length=max_length)
    with inference_context():
        q = model.encode_query(queries, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        d = model.encode_document(docs, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    out = np.concatenate([q, d]).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.stem}.{os.getpid()}.part.npy")  # data-parallel ranks may write it side by side
    np.save(part, out)
    part.replace(path)
    return out


class Copy:
    """What the student copies: the texts (queries, then documents), the member's embeddings of them rotated onto
    the student's zero-shot space (:func:`rotation`), the rows a training takes (text indices, every text once a
    pass in a seeded order, cut to the time allowed) and the squared distance the student starts at."""

    def __init__(self, model, member: str, queries: list[str], docs: list[str], cfg, cache: Path,
                 seconds: float | None = None, rows: int | None = None):
        """Encode (or read back) the member's embeddings, fit the rotation and measure the speed a text trains at.
        With ``seconds`` (the share of a training budget the copy may take, the member's encoding included) the rows
        are cut to what fits at that speed; ``rows`` (a resumed run's record) fixes their number instead."""
        import math

        t0 = time.perf_counter()
        self.member, self.queries, self.docs = member, len(queries), len(docs)
        self.texts = queries + docs
        targets_raw = member_embeddings(member, queries, docs, cfg.max_length, cache)
        self.fit = np.sort(np.random.default_rng(cfg.seed).permutation(len(self.texts))[:FIT_TEXTS])  # 2k texts
        own = self._encode_fit(model)  # a 384-d rotation
        self.targets = (targets_raw @ rotation(targets_raw[self.fit], own)).astype(np.float32)
        self.distance_before = self._distance(own)
        wanted = list(range(len(self.texts))) * math.ceil(cfg.embedding_passes)
        wanted = wanted[: round(cfg.embedding_passes * len(self.texts))]
        self.note, self.per_text = "", None
        if rows is not None:
            wanted = wanted[:rows]
        else:  # measured with or without a budget: the training's estimate (and its progress bar) includes the copy
            self.per_text = measure_seconds_per_text(model, docs[:64] or self.texts[:64], cfg.batch_size,
                                                     bf16=training_bf16(cfg.precision))
        if rows is None and seconds is not None:
            left = seconds - (time.perf_counter() - t0)
            fits = max(cfg.batch_size, int(left / self.per_text)) if left > 0 else cfg.batch_size
            if fits < len(wanted):
                self.note = (f" — {fits / len(self.texts):.2f} of {cfg.embedding_passes:g} passes fit its "
                             f"{fmt_seconds(seconds)} share of the budget")
                wanted = wanted[:fits]
        order = np.random.default_rng(cfg.seed).permutation(len(wanted))  # every text once a pass, seeded order
        self.rows = [wanted[i] for i in order]
        self.prepare_seconds = time.perf_counter() - t0

    def _encode_fit(self, model) -> np.ndarray:
        """The student's unit embeddings of the texts the rotation is fitted (and the distance measured) on."""
        from .encoding import inference_context

        with inference_context():
            return model.encode([self.texts[i] for i in self.fit], batch_size=64, normalize_embeddings=True,
                                show_progress_bar=False)

    def _distance(self, own: np.ndarray) -> float:
        """The mean squared distance of the student's embeddings of the fit texts to their targets."""
        return float(((own - self.targets[self.fit]) ** 2).sum(-1).mean())

    @property
    def passes(self) -> float:
        return round(len(self.rows) / len(self.texts), 3)

    @property
    def estimate_seconds(self) -> float | None:
        """The rows' training time at the measured speed (None where it was not measured)."""
        return self.per_text * len(self.rows) if self.per_text else None

    def dataset(self):
        """The rows as sentence-transformers' distillation data: ``text`` and its target embedding, ``label``."""
        from datasets import Dataset as HFDataset

        return HFDataset.from_dict({"text": [self.texts[i] for i in self.rows],
                                    "label": self.targets[self.rows].tolist()})

    def describe(self, how: str) -> str:
        return (f"train: copying {self.member}'s embeddings of {self.queries} queries and {self.docs} documents "
                f"(rotated onto the student's space; squared distance {self.distance_before:.3f}) for "
                f"{self.passes:.2f} passes {how}"
                + (f", ≈ {fmt_seconds(self.estimate_seconds)} of training" if self.estimate_seconds else "") + self.note)

    def record(self, model, steps: int, seconds: float) -> dict[str, Any]:
        """What the train stage keeps: texts, passes, steps, the squared distance to the targets before and now
        (on the rotation's texts), seconds."""
        return {"member": self.member, "queries": self.queries, "documents": self.docs, "passes": self.passes,
                "rows": len(self.rows), "steps": steps, "distance_before": self.distance_before,
                "distance_after": self._distance(self._encode_fit(model)),
                "seconds": round(seconds, 1)}


def distance_loss(model):
    """The copy's loss among the ranking losses (``embedding_copy = "mixed"``): sentence-transformers' ``MSELoss``
    times the embedding's dimensions, i.e. the squared distance to the target per text. A mean over 384 dimensions
    is ~0.002 at the start where the ranking losses are ~1: one optimiser (Adam) shares them, and its step for the
    copy would be a few hundredths of theirs."""
    (MSELoss,) = st_losses("MSELoss")

    class SquaredDistanceLoss(MSELoss):
        def forward(self, sentence_features, labels):
            return super().forward(sentence_features, labels) * labels.shape[-1]

    return SquaredDistanceLoss(model)


def copy_member(model, member: str, queries: list[str], docs: list[str], cfg, cache: Path,
                seconds: float | None = None, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Train ``model`` (in place) for ``cfg.embedding_passes`` passes to reproduce ``member``'s embeddings of
    ``queries`` and ``docs``, rotated onto its own space (:class:`Copy`), before the ranking losses. With
    ``seconds`` the passes are cut to what fits (the log says so). Returns the record the train stage keeps
    (:meth:`Copy.record`)."""
    from sentence_transformers import SentenceTransformerTrainer

    from .console import attach_progress
    from .training_args import training_args

    t0 = time.perf_counter()
    copy = Copy(model, member, queries, docs, cfg, cache, seconds)
    log(copy.describe("before the ranking losses"))
    args = training_args(cfg.model_copy(update={"epochs": 1.0, "learning_rate": LEARNING_RATE}), cache / "copy",
                         mnrl=False, batches_per_epoch=-(-len(copy.rows) // cfg.batch_size))
    (MSELoss,) = st_losses("MSELoss")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=copy.dataset(), loss=MSELoss(model))
    attach_progress(trainer, progress, f"train (copying {member})", estimate=copy.estimate_seconds)
    trainer.train()
    shutil.rmtree(cache / "copy", ignore_errors=True)
    return copy.record(model, trainer.state.global_step, time.perf_counter() - t0)
