"""How much a run trains, decided from the data and from this machine's measured speed (issue 24).

* :func:`resolve_max_positives` — ``data.max_positives_per_query = "auto"``: a cap on the judged positives a query
  contributes to training, chosen from the judgments themselves.
* :func:`plan_training` — ``train.budget_minutes``: the student's training time, estimated from the measured
  throughput of the first batches of its own rows, and the rows sampled down (later passes first) when the data
  would take longer than the budget.
* :func:`fmt_seconds` — a duration for humans.

The time estimates of the other long stages (teacher scoring, corpus embedding) come from their progress bars
(:class:`esdistill.console.EstimatingProgress`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ``auto`` caps a query's judged positives at this many ...
AUTO_CAP = 4
#: ... when more than this share of all judged positives lie beyond each query's ``AUTO_CAP``-th. SciFact's
#: training judgments (809 queries, 919 positives, median 1, at most 5 a query): 0.1% lie beyond the 4th, so no
#: cap (and its cache keys stay those of before). NFCorpus's (2,590 queries, 110,575 positives, median 18, up to
#: 1,363 a query): 91.5% lie beyond the 4th — uncapped, one query makes dozens of near-identical training rows and
#: a quick run trains thousands of them. 4 is the cap examples/nfcorpus.toml chose by hand (bench/README.md), and
#: more than a quick run's per-query lists use: each of its ``ceil(epochs)`` passes heads a query's list with one
#: judged positive.
AUTO_SHARE = 0.25


def resolve_max_positives(setting: int | str | None, qrels: dict[str, dict[str, int]]) -> tuple[int | None, str]:
    """``(cap, why)``: the cap on judged positives per query that ``data.max_positives_per_query`` means for these
    training judgments — a number as it is, ``"none"``/None as no cap, and ``"auto"`` as :data:`AUTO_CAP` when
    more than :data:`AUTO_SHARE` of the judged positives lie beyond each query's :data:`AUTO_CAP`-th (else no cap).
    ``why`` is one line for the log (empty when there is nothing to say)."""
    if setting is None or setting == "none":
        return None, ""
    if setting != "auto":
        return int(setting), ""
    counts = [n for n in (sum(1 for g in docs.values() if g > 0) for docs in qrels.values()) if n]
    if not counts:
        return None, ""
    total = sum(counts)
    beyond = sum(max(0, n - AUTO_CAP) for n in counts)
    if beyond <= AUTO_SHARE * total:
        return None, ""
    why = (f"data: training uses at most {AUTO_CAP} judged positives per query (data.max_positives_per_query = "
           f"'auto'): {len(counts)} judged training queries judge {total:,} documents relevant (median "
           f"{statistics.median(counts):g} a query, at most {max(counts):,}); {beyond / total:.0%} of them lie "
           f"beyond each query's {AUTO_CAP}th and would make near-identical rows of one query. Label quality is "
           "still measured on all of them; set data.max_positives_per_query to a number, or 'none', to choose")
    return AUTO_CAP, why


def fmt_seconds(s: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# ----------------------------------------------------------------------------------------------- training
def measure_seconds_per_text(model, texts: list[str], batch_size: int, batches: int = 5,
                             enough: float = 3.0, bf16: bool = False) -> float:
    """Seconds one text costs a training step of ``model`` on this machine: tokenizing, forward and backward
    passes over batches of ``texts``, after one warm-up batch (not counted) — up to ``batches`` of them, fewer once
    ``enough`` seconds are spent (at least two); the median batch, so one stalled by another process does not
    decide. ``bf16``: under the autocast training runs in (``train.precision``). Gradients are cleared afterwards
    and no optimiser steps, so the model's weights are untouched (the trainer seeds its own randomness later)."""
    from .models import autocast

    prepare = getattr(model, "preprocess", None) or model.tokenize  # tokenize: sentence-transformers < 5.7
    was_training = model.training
    model.train()
    times: list[float] = []
    try:
        for i in range(batches + 1):
            batch = [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
            t0 = time.perf_counter()
            feats = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in prepare(batch).items()}
            with autocast(bf16):
                emb = model(feats)["sentence_embedding"]
            emb.float().pow(2).sum().backward()
            if i:  # the first batch warms up (allocations, kernels)
                times.append(time.perf_counter() - t0)
                if len(times) >= 2 and sum(times) >= enough:
                    break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return statistics.median(times) / batch_size


#: the most of a training budget the dev evaluations may take before those between passes are left out
EVAL_SHARE = 0.25

#: a budget keeps the rows its steps would take this multiple of their time to train at the first batches' speed:
#: that measurement varies between fresh processes (85–109 ms a document on one 2-core AMD EPYC) and came out 3–33%
#: below the steps' real speed there (bench/README.md, "The demo on a 2-core AMD EPYC"). The clock
#: (:func:`budget_guard`) stops the steps and runs the learning rate's schedule out when the time is spent, so rows
#: planned past it are not reached — where a plan sized exactly would leave the budget unspent whenever the
#: measurement came out slow
PLAN_MARGIN = 1.25

def budget_guard(seconds: float):
    """A trainer callback that keeps the training steps within ``seconds`` (their share of ``train.budget_minutes``)
    and lets the learning rate's schedule run out with them.

    The plan's measurement of the first batches can be optimistic — on a 2-core AMD EPYC (AVX2, no AVX-512) the
    steps ran 1.14–1.33x the time it priced (bench/README.md, "The demo on a 2-core AMD EPYC"): a training step
    holds a whole batch of lists in memory where the measurement holds one batch of texts. So the budget is kept by
    the clock, not by the plan:

    * **the schedule follows the clock**: the linear warm-up and decay read the training's progress as the larger
      of its steps (``global_step / max_steps``) and its time (the steps' seconds / ``seconds``). Where the steps
      are as fast as planned, or faster, nothing changes; where they are slower, the decay runs ahead of the steps
      and the learning rate reaches zero when the time does — not cut off mid-decay at a step the plan did not
      foresee (until 2026-12-07 such a run stopped with the rate still at 8–20% of its peak);
    * **the steps stop when the time is spent**, after the step under way (never at the last step, which ends the
      training anyway).

    Time spent in the dev evaluations between passes is not the steps' (the plan prices it apart): it is left out
    of the clock. A resumed run counts the steps it resumes from as their planned share of the time. ``stopped_at``:
    the step it stopped after (None: the training ended on its own); ``seconds_run``: the steps' seconds;
    ``paced_from``: the first step whose learning rate the clock set (None: the steps kept ahead of it)."""
    from transformers import TrainerCallback

    class BudgetGuard(TrainerCallback):
        def __init__(self):
            self.seconds, self.t0, self.stopped_at, self.seconds_run = seconds, None, None, None
            self.paced_from, self.evaluating, self.start, self.max_steps, self.last = None, 0.0, 0.0, 0, None

        def progress(self) -> float:
            """The share of the steps' time spent (a resumed run's earlier steps at their planned share)."""
            if self.t0 is None:
                return 0.0
            run = time.perf_counter() - self.t0 - self.evaluating
            return self.start + run / self.seconds if self.seconds > 0 else math.inf

        def expected_steps(self, state) -> int:
            """The steps the training is now expected to run: all of them while they keep ahead of the clock,
            else those the time left holds at the pace so far."""
            done = self.progress()
            if state.global_step and done > state.global_step / max(state.max_steps, 1):
                return min(state.max_steps, max(state.global_step, round(state.global_step / done)))
            return state.max_steps

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            self.t0 = time.perf_counter()
            self.max_steps = state.max_steps
            self.start = state.global_step / state.max_steps if state.max_steps else 0.0
            for i, schedule in enumerate(getattr(lr_scheduler, "lr_lambdas", None) or []):
                lr_scheduler.lr_lambdas[i] = self._paced(schedule)

        def _paced(self, schedule):
            def paced(step):  # a function, not an object: torch leaves it out of the scheduler's saved state
                by_time = self.progress() * self.max_steps
                if by_time > step and self.paced_from is None:
                    self.paced_from = int(step)
                return schedule(max(step, min(by_time, self.max_steps)))
            return paced

        def on_step_end(self, args, state, control, **kwargs):
            if self.t0 is None:
                return control
            self.last = time.perf_counter()
            self.seconds_run = self.last - self.t0 - self.evaluating
            if self.progress() >= 1.0 and state.global_step < state.max_steps:
                control.should_training_stop = True
                self.stopped_at = state.global_step
            return control

        def on_evaluate(self, args, state, control, **kwargs):
            if self.last is not None:  # the evaluation ran since the step that just ended
                self.evaluating += time.perf_counter() - self.last
                self.last = time.perf_counter()
            return control

    return BudgetGuard()


@dataclass
class TrainingPlan:
    """What :func:`plan_training` decided: the rows kept, and the record of why (``record``)."""

    examples: list[list]
    judged: list[list]
    record: dict[str, Any] = field(default_factory=dict)


def _subset(rows: list, keep: int, seed: int, p: int) -> list:
    """``keep`` of ``rows``, a stable pseudo-random choice, in their order."""
    if keep >= len(rows):
        return rows
    idx = np.sort(np.random.default_rng([seed, p, 24]).choice(len(rows), size=keep, replace=False))
    return [rows[i] for i in idx]


def list_width(examples_by_pass: list[list], distill: bool = True) -> int:
    """The texts a distilling row encodes: its query, its first document and the others (0 for the judgments-only
    control, which trains no list)."""
    return 2 + len(examples_by_pass[0][0][2]) if distill and examples_by_pass and examples_by_pass[0] else 0


def plan_training(
    model,
    cfg,
    examples_by_pass: list[list],
    judged_by_pass: list[list],
    queries: dict[str, str],
    texts: dict,
    profile: str | None,
    log: Callable[[str], None] = print,
    measure: Callable[..., float] = measure_seconds_per_text,
    distill: bool = True,
    saved: Path | None = None,
    eval_texts: int = 0,
    pass_eval_texts: int = 0,
    distill_cost: float = 1.0,
    margin: float = PLAN_MARGIN,
) -> TrainingPlan:
    """Estimate the student's training time on this machine and keep it within ``cfg.budget_minutes``.

    The cost is counted in text encodings (each distilling row: its query and ``list_size`` documents; each MNRL
    row: query, positive, hard negative), documents priced at the seconds per text measured on the first batches
    of the rows' own documents and queries at those measured on the rows' own queries
    (:func:`measure_seconds_per_text`: the losses encode each column of a batch apart, so a batch of queries is
    padded to the longest query, not to a document's length: MiniLM at 128 tokens on 2 cores, 16 ms a SciFact query
    against 63 ms a document). Until 2026-12-06 queries were priced as documents, and the estimate came out 9–25%
    above the training it planned; pricing them apart takes about half of that off (bench/README.md). When the
    whole would take longer than the budget, passes are kept in order while they fit and a stable sample of the
    next one fills the rest (lists and MNRL rows alike; at least one batch of lists is kept); the log says what was
    sampled down and how to lift it. The rows kept are those of ``margin`` times the steps' share of the budget
    (:data:`PLAN_MARGIN`): the clock, not this estimate, ends the training (:func:`budget_guard`), so the steps
    use the whole budget even where the first batches measured slow. ``record["estimate_seconds"]`` is what the
    training is expected to take (at most the budget), ``planned_seconds`` the price of the rows kept. Without a
    budget only the estimate is made.
    ``distill`` off (the judgments-only control): only the MNRL rows train, so only they count and are sampled.
    ``eval_texts``: the texts the dev evaluations before and after training encode, priced at a third of a training
    text (a forward pass alone): a fixed cost, in the estimate and taken off the budget first. ``pass_eval_texts``:
    those of the evaluations between passes, kept only while all evaluations together stay within
    :data:`EVAL_SHARE` of the budget — else they are dropped (``record["evaluate_between_passes"]`` false, and the
    log says so), so measuring never eats the training it measures.
    ``distill_cost``: the price of a distilling row's text against a measured one (a mini-batched step encodes
    each twice forward: :data:`esdistill.memory.CACHED_COST`).
    ``record`` (kept in the train record as ``budget``) holds the measurement, the estimate, the budget and the
    rows and steps kept. With ``saved`` (a file in the stage's folder), the plan is written there, and a plan found
    there (a run that was killed and resumes from its checkpoint) is kept as it was: the rows must be those the
    checkpoint was trained on, not a new measurement's."""
    bs = cfg.batch_size
    if saved is not None and saved.exists():
        record = json.loads(saved.read_text())
        kept = record["kept"]
        examples = [_subset(ex, n_ex, cfg.seed, p) for p, (ex, (n_ex, _)) in enumerate(zip(examples_by_pass, kept))]
        judged = [_subset(jd, n_jd, cfg.seed, p) for p, (jd, (_, n_jd)) in enumerate(zip(judged_by_pass, kept))]
        log(f"train: the plan of the run this one resumes: estimated {fmt_seconds(record['estimate_seconds'])}"
            + (f", sampled down to {record['passes_kept']:.2f} of {record['passes']} passes" if record["sampled_down"]
               else ""))
        return TrainingPlan(examples, judged, record)
    width = list_width(examples_by_pass, distill)
    doc_sample = [texts[d].full_text for _, p, negs, _ in examples_by_pass[0][:64] for d in [p, *negs] if d in texts]
    doc_sample += [texts[d].full_text for rows in judged_by_pass[:1] for _, p, n in rows[:64] for d in (p, n)
                   if d in texts]
    per_text = measure(model, doc_sample or list(queries.values())[:bs], bs)
    query_sample = [queries[r[0]] for rows in (*examples_by_pass[:1], *judged_by_pass[:1]) for r in rows[:64]
                    if r[0] in queries]
    # no query text to measure (or the documents were not found): a query costs what a document does
    per_query = measure(model, query_sample, bs) if query_sample and doc_sample else per_text
    list_price = (per_query + (width - 1) * per_text) * distill_cost if width else 0.0
    row_price = per_query + 2 * per_text  # an MNRL row: query, positive, hard negative
    cost = [len(ex) * list_price + len(jd) * row_price for ex, jd in zip(examples_by_pass, judged_by_pass,
                                                                        strict=True)]
    budget = cfg.budget_minutes if isinstance(cfg.budget_minutes, (int, float)) else None
    allowed = budget * 60 if budget else math.inf
    between = (eval_texts + pass_eval_texts) * per_text / 3 <= EVAL_SHARE * allowed
    fixed = (eval_texts + (pass_eval_texts if between else 0)) * per_text / 3
    whole = fixed + sum(cost)
    room = fixed + max(0.0, allowed - fixed) * margin  # the rows' time kept: the steps' share, with the margin
    examples, judged, spent, kept_passes = [], [], fixed, 0.0
    for p, (ex, jd) in enumerate(zip(examples_by_pass, judged_by_pass, strict=True)):
        if spent + cost[p] <= room:
            examples.append(ex)
            judged.append(jd)
            spent += cost[p]
            kept_passes += 1
            continue
        share = max(0.0, (room - spent) / cost[p]) if cost[p] else 0.0
        keep_ex = int(len(ex) * share) if distill else len(ex)  # the control trains no list: keep them as they are
        keep_jd = int(len(jd) * share)
        if not examples:  # at least one batch, whatever the budget
            if distill:
                keep_ex = max(keep_ex, min(bs, len(ex)))
            else:
                keep_jd = max(keep_jd, min(bs, len(jd)))
        if keep_ex or keep_jd:
            examples.append(_subset(ex, keep_ex, cfg.seed, p))
            judged.append(_subset(jd, keep_jd, cfg.seed, p))
            spent += keep_ex * list_price + keep_jd * row_price
            kept_passes += (keep_ex / len(ex) if distill and ex else keep_jd / len(jd) if jd else 0.0)
        break

    def steps(exs, jds) -> int:
        parts = (exs, jds) if distill else (jds,)
        return sum(-(-sum(len(x) for x in part) // bs) for part in parts)

    sampled = spent < whole
    record = {
        "minutes": budget, "profile": profile, "seconds_per_text": per_text, "seconds_per_query": per_query,
        "evaluation_seconds": fixed,
        **({"distill_cost": distill_cost} if distill_cost != 1.0 else {}),
        "evaluate_between_passes": between,
        "estimate_seconds": min(spent, allowed), "estimate_seconds_whole": whole, "sampled_down": sampled,
        **({"planned_seconds": spent, "margin": margin} if budget else {}),
        "passes": len(examples_by_pass), "passes_kept": round(kept_passes, 3),
        "lists": [sum(len(x) for x in examples), sum(len(x) for x in examples_by_pass)],
        "judged_rows": [sum(len(x) for x in judged), sum(len(x) for x in judged_by_pass)],
        "encodings": sum(len(x) for x in examples) * width + 3 * sum(len(x) for x in judged),
        "encodings_whole": sum(len(x) for x in examples_by_pass) * width + 3 * sum(len(x) for x in judged_by_pass),
        "steps_allowed": steps(examples, judged), "steps_whole": steps(examples_by_pass, judged_by_pass),
        "kept": [[len(ex), len(jd)] for ex, jd in zip(examples, judged, strict=True)],
    }
    if saved is not None:
        saved.write_text(json.dumps(record, indent=2))
    where = (f"{per_text * 1000:.0f} ms a document, {per_query * 1000:.0f} ms a query, measured on the first "
             "batches of training texts")
    if pass_eval_texts and not between:
        log(f"train: the dev evaluations between passes would take more than {EVAL_SHARE:.0%} of the "
            f"{fmt_seconds(allowed)} budget: left out (the dev slice is measured before and after training)")
    if sampled:
        lift = ("--profile full (no training budget), or " if profile == "quick" else "") \
            + "train.budget_minutes = N (minutes; 'none': no budget)"
        log(f"train: the data would train {fmt_seconds(whole)} on this machine ({where}); the "
            f"{profile or 'configured'} budget is {fmt_seconds(allowed)}: sampled down to {kept_passes:.2f} of "
            f"{len(examples_by_pass)} passes — "
            # the control trains no list: its lists are kept whole and untrained, not worth a mention
            + (f"{record['lists'][0]:,} of {record['lists'][1]:,} lists, " if distill else "")
            + f"{record['judged_rows'][0]:,} of {record['judged_rows'][1]:,} MNRL rows, "
            f"{record['steps_allowed']:,} of {record['steps_whole']:,} steps (those of {margin:g}x the budget at "
            f"that speed: the steps stop when it is spent). To train it all: {lift}")
    elif whole > allowed:
        log(f"train: the data would train {fmt_seconds(whole)} at the first batches' speed, over the "
            f"{fmt_seconds(allowed)} budget: the steps stop when it is spent")
    log(f"train: estimated {fmt_seconds(min(spent, allowed))} on this machine ({where}"
        + (f"; budget {fmt_seconds(allowed)}" if budget else "") + ")")
    return TrainingPlan(examples, judged, record)
