"""The student copies its teacher's bi-encoder member, text by text (``train.embedding_passes``).

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

#: the copy's learning rate: the rotated targets start at a squared distance of ~0.67 from the student's own
#: embeddings, and 1e-4 closes it within passes where 2e-5 (the ranking losses') barely moves (embedding probe)
LEARNING_RATE = 1e-4
#: the share of a training budget the copy may take; the ranking losses get the rest (and the time it left)
BUDGET_SHARE = 0.6
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


def copy_member(model, member: str, queries: list[str], docs: list[str], cfg, cache: Path,
                seconds: float | None = None, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Train ``model`` (in place) for ``cfg.embedding_passes`` passes to reproduce ``member``'s embeddings of
    ``queries`` and ``docs``, rotated onto its own space (:func:`rotation`). With ``seconds`` (the share of a
    training budget this copy may take, the member's encoding included), the passes are cut to what fits by the
    speed measured on the first batches, and the log says so. Returns the record the train stage keeps: texts,
    passes kept, the squared distance to the targets before and after (on the rotation's texts), seconds."""
    import math

    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformerTrainer
    try:
        from sentence_transformers.sentence_transformer.losses import MSELoss
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers.losses import MSELoss

    from .budget import fmt_seconds, measure_seconds_per_text
    from .console import attach_progress
    from .encoding import inference_context
    from .training_args import training_args

    t0 = time.perf_counter()
    texts = queries + docs
    targets_raw = member_embeddings(member, queries, docs, cfg.max_length, cache)
    fit = np.sort(np.random.default_rng(cfg.seed).permutation(len(texts))[:FIT_TEXTS])  # a 384-d rotation: 2k texts
    with inference_context():
        own = model.encode([texts[i] for i in fit], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    targets = (targets_raw @ rotation(targets_raw[fit], own)).astype(np.float32)
    start = float(((own - targets[fit]) ** 2).sum(-1).mean())
    rows = list(range(len(texts))) * math.ceil(cfg.embedding_passes)
    rows = rows[: round(cfg.embedding_passes * len(texts))]
    note, per_text = "", None
    if seconds is not None:
        per_text = measure_seconds_per_text(model, docs[:64] or texts[:64], cfg.batch_size)
        left = seconds - (time.perf_counter() - t0)
        fits = max(cfg.batch_size, int(left / per_text)) if left > 0 else cfg.batch_size
        if fits < len(rows):
            note = (f" — {fits / len(texts):.2f} of {cfg.embedding_passes:g} passes fit its "
                    f"{fmt_seconds(seconds)} share of the budget")
            rows = rows[:fits]
    order = np.random.default_rng(cfg.seed).permutation(len(rows))  # every text once a pass, in a seeded order
    rows = [rows[i] for i in order]
    data = HFDataset.from_dict({"text": [texts[i] for i in rows], "label": targets[rows].tolist()})
    log(f"train: copying {member}'s embeddings of {len(queries)} queries and {len(docs)} documents (rotated onto "
        f"the student's space; squared distance {start:.3f}) for {len(rows) / len(texts):.2f} passes{note}")
    args = training_args(cfg.model_copy(update={"epochs": 1.0, "learning_rate": LEARNING_RATE}), cache / "copy",
                         mnrl=False, batches_per_epoch=-(-len(rows) // cfg.batch_size))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=MSELoss(model))
    attach_progress(trainer, progress, f"train (copying {member})",
                    estimate=per_text * len(rows) if per_text else None)  # without a budget: timed on its first steps
    trainer.train()
    with inference_context():
        after = model.encode([texts[i] for i in fit], batch_size=64, normalize_embeddings=True,
                             show_progress_bar=False)
    end = float(((after - targets[fit]) ** 2).sum(-1).mean())
    shutil.rmtree(cache / "copy", ignore_errors=True)
    return {"member": member, "queries": len(queries), "documents": len(docs),
            "passes": round(len(rows) / len(texts), 3), "steps": trainer.state.global_step,
            "distance_before": start, "distance_after": end, "seconds": round(time.perf_counter() - t0, 1)}
