"""``train`` stage: distill the teacher's scores into a sentence-transformers bi-encoder (the student).

Examples are built per query from the teacher's ranking of its candidates: the positive is a judged relevant
document where one is known (``use_judged_positives``), else the teacher's top document; ``negatives`` more are
drawn from the teacher's ranks 2..``negative_depth``. Losses (sentence-transformers):

* ``kl`` (default) — :class:`DistillKLDivLoss`: listwise KL between softmax(teacher) and softmax(student) over
  the list. On the quick profile it beat MarginMSE on the same labels (bench/README.md).
* ``margin_mse`` — :class:`MarginMSELoss`: the student's score margins pos-neg_i regress onto the teacher's
  logit margins. Near-constant teacher logits make it push the student's margins toward zero.
* ``judgments`` — no teacher: :class:`MultipleNegativesRankingLoss` on the judged (query, positive, one BM25 hard
  negative) triplets alone. ``scores`` then holds BM25's scores in its ``teacher`` column. This is the control
  that shows what distillation adds.

With ``judged_loss`` (default) the distilling losses are trained next to MNRL on the judged triplets, so the
student learns from judged positives where they exist and from the teacher's soft labels everywhere. With
``judged_above_teacher`` (default) a judged positive's label is raised, where the teacher ranks it below one of
its sampled negatives, to one standard deviation of the query's labels above the best of them: otherwise the
distilling loss would push the student to rank a judged positive below a negative while MNRL pulls it up.

The student scores with ``score_scale * cosine`` so its margins live on the teacher's logit scale. A held-out
dev slice of the training queries (never trained on) is evaluated before and after training.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import distributed
from .cache import StageCache
from .config import TrainConfig
from .console import attach_progress
from .data import Doc, Qrels, relevant
from .models import bf16_available, embedding_info, load_bi_encoder, st_modules, warmup


def split_dev(qids: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, dev): a stable hash split, so the dev slice never changes between runs."""
    def u(q: str) -> float:
        return int(hashlib.sha1(f"dev:{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    dev = sorted(q for q in qids if u(q) < fraction)
    return sorted(set(qids) - set(dev)), dev


def build_examples(
    scores: pd.DataFrame,
    qids: list[str],
    qrels: Qrels,
    cfg: TrainConfig,
    max_positives: int | None = None,
    stats: dict[str, int] | None = None,
) -> list[tuple[str, str, list[str], list[float]]]:
    """(qid, positive, [negatives], [teacher(pos), teacher(neg_1), ...]) per training example: one per judged
    positive (at most ``max_positives`` per query), else one for the teacher's top document.

    A candidate the teacher scores at or above a judged positive is a suspect negative — likely relevant, only
    unjudged. ``cfg.suspect_negatives`` keeps it (``keep``) or leaves it out of that positive's negatives
    (``drop``, falling back to the suspects when nothing else is left); ``stats`` counts them (``suspect``,
    ``dropped``)."""
    rng = random.Random(cfg.seed)
    if stats is not None:
        stats.setdefault("suspect", 0)
        stats.setdefault("dropped", 0)
    out = []
    grouped = {q: g.sort_values("teacher", ascending=False) for q, g in scores[scores.qid.isin(qids)].groupby("qid")}
    for qid in qids:
        g = grouped.get(qid)
        if g is None or len(g) < 2:
            continue
        ranked = list(zip(g.docid, g.teacher, strict=True))
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        chosen = set(relevant(qid, qrels.get(qid, {}), max_positives))
        positives = [(d, s) for d, s in ranked if d in chosen] if cfg.use_judged_positives else []
        if not positives:
            positives = [ranked[0]]
        depth = cfg.negative_depth or len(ranked)
        pool = [(d, s) for d, s in ranked[1:depth] if d not in judged and d != positives[0][0]]
        if not pool:
            continue
        spread = float(np.std([s for _, s in ranked])) if cfg.judged_above_teacher else 0.0
        for pos, pos_score in positives:
            candidates = pool
            if pos in judged:
                clean = [(d, sc) for d, sc in pool if sc < pos_score]
                if stats is not None:
                    stats["suspect"] += len(pool) - len(clean)
                if cfg.suspect_negatives == "drop" and clean:
                    if stats is not None:
                        stats["dropped"] += len(pool) - len(clean)
                    candidates = clean
            negs = rng.sample(candidates, min(cfg.negatives, len(candidates)))
            while len(negs) < cfg.negatives:  # fixed width: pad by repeating (a short list, rare)
                negs.append(rng.choice(candidates))
            best_neg = max(s for _, s in negs)
            if cfg.judged_above_teacher and pos in judged and pos_score <= best_neg:
                # the judgment wins where the teacher disagrees: the positive's label tops its list by one spread
                pos_score = best_neg + spread
            out.append((qid, pos, [d for d, _ in negs], [float(pos_score)] + [float(s) for _, s in negs]))
    return out


def judged_triplets(examples, qrels: Qrels, seed: int) -> list[tuple[str, str, str]]:
    """(qid, judged positive, one hard negative from the teacher's pool) for every judged positive in
    ``examples`` — the supervised half of the student's loss, next to the teacher's soft labels."""
    rng = random.Random(seed + 1)
    out = []
    for qid, pos, negs, _ in examples:
        if qrels.get(qid, {}).get(pos, 0) > 0:
            out.append((qid, pos, rng.choice(negs)))
    return out


def to_hf_dataset(examples, queries: dict[str, str], texts: dict[str, Doc], loss: str):
    from datasets import Dataset as HFDataset

    n = len(examples[0][2])
    cols: dict[str, list] = {"query": [], "positive": [], **{f"negative_{i}": [] for i in range(n)}, "label": []}
    for qid, pos, negs, t in examples:
        cols["query"].append(queries[qid])
        cols["positive"].append(texts[pos].full_text)
        for i, d in enumerate(negs):
            cols[f"negative_{i}"].append(texts[d].full_text)
        cols["label"].append([t[0] - x for x in t[1:]] if loss == "margin_mse" else t)
    return HFDataset.from_dict(cols)


class ScaledCosine:
    """``scale * cos(a, b)`` pairwise: the student's score on the teacher's logit scale."""

    def __init__(self, scale: float):
        self.scale = scale
        self.__name__ = f"scaled_cosine_{scale:g}"

    def __call__(self, a, b):
        import torch.nn.functional as F

        return self.scale * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def teacher_agreement(model, scores: pd.DataFrame, queries: dict[str, str], texts: dict[str, Doc]) -> dict:
    """How closely the student's ranking of each query's candidates follows the teacher's.

    Returns mean per-query Spearman correlation and pairwise ordering accuracy (pairs whose teacher scores
    differ). Used to show that training moves the student toward its teacher.
    """
    from scipy.stats import spearmanr

    rhos, acc = [], []
    for qid, g in scores.groupby("qid"):
        if len(g) < 3:
            continue
        q = model.encode([queries[qid]], normalize_embeddings=True, show_progress_bar=False)
        d = model.encode([texts[x].full_text for x in g.docid], normalize_embeddings=True, show_progress_bar=False)
        s = (d @ q[0]).astype(float)
        t = g.teacher.to_numpy(dtype=float)
        rho = spearmanr(s, t).statistic
        if not np.isnan(rho):
            rhos.append(rho)
        diff_t = np.sign(t[:, None] - t[None, :])
        diff_s = np.sign(s[:, None] - s[None, :])
        mask = diff_t != 0
        acc.append(float((diff_t[mask] == diff_s[mask]).mean()))
    return {"spearman": float(np.mean(rhos)) if rhos else float("nan"), "pair_accuracy": float(np.mean(acc)),
            "queries": len(acc)}


def dev_evaluator(dev: list[str], queries, qrels: Qrels, scores: pd.DataFrame, texts: dict[str, Doc]):
    """IR evaluator on the dev slice over the documents its queries' candidates cover.

    Relevance: the judgments where known, else the teacher's top document (agreement with the pipeline).
    """
    try:
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers.evaluation import InformationRetrievalEvaluator

    sub = scores[scores.qid.isin(dev)]
    if sub.empty:
        return None
    relevant = {}
    for qid, g in sub.groupby("qid"):
        judged = {d for d, grade in qrels.get(qid, {}).items() if grade > 0 and d in texts}
        relevant[qid] = judged or {g.sort_values("teacher", ascending=False).docid.iloc[0]}
    corpus = {d: texts[d].full_text for d in sub.docid.unique()}
    for docs in relevant.values():
        corpus.update({d: texts[d].full_text for d in docs})
    return InformationRetrievalEvaluator(
        queries={q: queries[q] for q in relevant}, corpus=corpus, relevant_docs=relevant, name="dev",
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10],
        show_progress_bar=False,
    )


def _silent(_msg: str) -> None:
    """The log of a process other than rank 0 (data-parallel training): rank 0 speaks for all."""


def training_args(cfg: TrainConfig, output_dir: Path, evaluate_epochs: bool = False, mnrl: bool = True,
                  batches_per_epoch: int = 0):
    """The trainer's arguments. With MNRL in the mix (``mnrl``) and ``cfg.no_duplicates``, batches never hold
    two rows that share a text: MNRL takes the other rows' documents as negatives, and a second row of the same
    query would hand it one of its own relevant documents as a negative."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        **warmup(0.1),
        seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=25,
        report_to="none",
        batch_sampler="no_duplicates" if cfg.no_duplicates and mnrl else "batch_sampler",
        eval_strategy="epoch" if evaluate_epochs else "no",
        bf16=bf16_available(),  # mixed precision on a GPU; float32 on a CPU
        disable_tqdm=True,  # progress is one rich bar (esdistill.console.attach_progress)
        **distributed.trainer_kwargs(),  # torchrun on CPUs: data-parallel over gloo
        **distributed.max_steps(batches_per_epoch, cfg.epochs),
    )


def train_student(
    cfg: TrainConfig,
    scores: pd.DataFrame,
    queries: dict[str, str],
    qrels: Qrels,
    docs: Callable[[list[str]], dict[str, Doc]],
    cache: StageCache,
    log: Callable[[str], None] = print,
    max_positives: int | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train the student; the model lands in ``<cache>/model``. Checkpoints let a killed run resume.
    ``max_positives`` caps the judged positives a query contributes (``data.max_positives_per_query``);
    ``progress`` (rich) shows the training steps."""
    if cache.done:
        return {**cache.info(), "cached": True}
    from sentence_transformers import SentenceTransformerTrainer
    try:
        from sentence_transformers.sentence_transformer.losses import (
            DistillKLDivLoss,
            MarginMSELoss,
            MultipleNegativesRankingLoss,
        )
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers.losses import DistillKLDivLoss, MarginMSELoss, MultipleNegativesRankingLoss
    (Normalize,) = st_modules("Normalize")

    judgments_only = cfg.loss == "judgments"
    qids = sorted(scores.qid.unique())
    if judgments_only:
        qids = [q for q in qids if any(g > 0 for g in qrels.get(q, {}).values())]
    train_q, dev_q = split_dev(qids, cfg.dev_fraction)
    suspects: dict[str, int] = {}
    examples = build_examples(scores, train_q, qrels, cfg, max_positives, suspects)
    if not examples:
        raise ValueError("no training examples: every query needs at least two scored candidates")
    needed = {d for _, p, negs, _ in examples for d in [p, *negs]} | set(scores[scores.qid.isin(dev_q)].docid)
    needed |= {d for q in dev_q for d in qrels.get(q, {})}
    judged = judged_triplets(examples, qrels, cfg.seed) if (cfg.judged_loss or judgments_only) else []
    texts = docs(sorted(needed))
    data = to_hf_dataset(examples, queries, texts, cfg.loss)

    model = load_bi_encoder(cfg.base_model, max_length=cfg.max_length)
    _, normalized = embedding_info(model)
    if not normalized:
        model.append(Normalize())  # unit vectors: dot_product in Elasticsearch == the cosine trained here
    sim = ScaledCosine(cfg.score_scale)
    loss = (MarginMSELoss(model, similarity_fct=sim) if cfg.loss == "margin_mse"
            else DistillKLDivLoss(model, similarity_fct=sim, temperature=cfg.temperature))
    train_data, train_loss = data, loss
    if judged:
        from datasets import Dataset as HFDataset

        judged_data = HFDataset.from_dict({
            "anchor": [queries[q] for q, _, _ in judged], "positive": [texts[p].full_text for _, p, _ in judged],
            "negative": [texts[n].full_text for _, _, n in judged]})
        mnrl = MultipleNegativesRankingLoss(model, scale=cfg.score_scale)
        if judgments_only:
            train_data, train_loss = judged_data, mnrl
        else:
            train_data = {"distill": data, "judged": judged_data}
            train_loss = {"distill": loss, "judged": mnrl}
    elif judgments_only:
        raise ValueError("loss 'judgments' needs judged training queries (qrels) with a BM25 candidate each")
    evaluator = dev_evaluator(dev_q, queries, qrels, scores, texts)
    main = distributed.is_main()  # under torchrun only rank 0 measures and writes
    before = evaluator(model) if evaluator and main else {}
    dev_scores = scores[scores.qid.isin(dev_q)]
    agree_before = (teacher_agreement(model, dev_scores, queries, texts) if main and len(dev_q) and not judgments_only
                    else {})

    ckpt = cache.path("checkpoints")
    # the dev slice is also evaluated at each epoch's end when there are several epochs
    parts = train_data.values() if isinstance(train_data, dict) else [train_data]
    batches = sum(-(-len(d) // cfg.batch_size) for d in parts)  # what one process takes per epoch
    args = training_args(cfg, ckpt, evaluate_epochs=evaluator is not None and cfg.epochs > 1, mnrl=bool(judged),
                         batches_per_epoch=batches)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_data, loss=train_loss,
                                         evaluator=evaluator if cfg.epochs > 1 else None)
    attach_progress(trainer, progress, "train (judgments only)" if judgments_only else "train")
    found = sorted(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if ckpt.exists() else []
    for partial in [p for p in found if not (p / "trainer_state.json").exists()]:
        if distributed.is_main():
            shutil.rmtree(partial)  # killed while it was being written: trainer_state.json comes last
        found.remove(partial)
    resume = bool(found)
    if suspects.get("suspect") and not judgments_only and main:
        log(f"train: {suspects['suspect']} candidates scored by the teacher at or above a judged positive (likely "
            f"relevant, unjudged): {suspects['dropped']} left out of that positive's negatives "
            f"(train.suspect_negatives = {cfg.suspect_negatives!r})")
    skipped = len(set(train_q) - {q for q, *_ in examples})
    if skipped and main:
        log(f"train: {skipped} training queries give no example (fewer than two scored candidates)")
    if not main:
        log = _silent
    log(f"train: {len(examples)} examples from {len(train_q) - skipped} queries, dev {len(dev_q)} queries, "
        + (f"MNRL on {len(judged)} judged pairs only (no teacher)" if judgments_only else
           f"loss {cfg.loss}" + (f" + MNRL on {len(judged)} judged pairs" if judged else ""))
        + (" (resuming from checkpoint)" if resume else ""))
    trainer.train(resume_from_checkpoint=str(found[-1]) if resume else None)
    if not distributed.is_main():  # data parallel (torchrun): rank 0 writes the model and the record
        distributed.barrier()
        return {"rank": distributed.rank(), "steps": trainer.state.global_step}

    after = evaluator(model) if evaluator else {}
    agree_after = teacher_agreement(model, dev_scores, queries, texts) if len(dev_q) and not judgments_only else {}
    out = cache.path("model")
    model.save(str(out))
    dims, _ = embedding_info(model)
    meta = {"base_model": cfg.base_model, "loss": cfg.loss, "max_length": cfg.max_length, "dims": dims,
            "normalized": True, "teacher_key": cache.inputs.get("teacher_key"), "train_key": cache.key}
    (out / "esdistill.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    used = {q for q, *_ in examples}
    record = cache.finish(
        model=str(out), examples=len(examples), judged_pairs=len(judged), train_queries=len(train_q),
        dev_queries=len(dev_q),
        queries_without_examples=len(set(train_q) - used),
        resumed_from=found[-1].name if found else None, steps=trainer.state.global_step,
        dev_before={k: float(v) for k, v in before.items()}, dev_after={k: float(v) for k, v in after.items()},
        agreement_before=agree_before, agreement_after=agree_after, suspect_negatives=suspects,
        processes=distributed.world_size(),
    )
    distributed.barrier()  # the others wait until the model and the record are written
    return record
