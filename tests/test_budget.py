"""Issue 24: ``data.max_positives_per_query = "auto"`` caps what the data needs capped, the quick profile's
training keeps its time budget (sampled down, said in the log), and each long stage's time is estimated from its
first batches before it is spent."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest

from esdistill.budget import AUTO_CAP, resolve_max_positives
from esdistill.config import PROFILES, build_config
from esdistill.console import EstimatingProgress
from esdistill.evaluate import stage_table
from esdistill.stages import budget_key

from .conftest import SCIFACT, tiny_config

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _train_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows)
        for q, d, g in rows:
            out.setdefault(q, {})[d] = int(g)
    return out


# ---------------------------------------------------------------------------------------------- the cap
def test_auto_caps_many_judgments_per_query_and_leaves_few_alone():
    few = {f"q{i}": {f"d{i}": 1, **({f"e{i}": 1} if i % 9 == 0 else {})} for i in range(100)}  # SciFact-like
    assert resolve_max_positives("auto", few) == (None, "")
    many = {f"q{i}": {f"q{i}d{j}": 1 for j in range(40)} for i in range(30)}
    cap, why = resolve_max_positives("auto", many)
    assert cap == AUTO_CAP == 4
    assert "at most 4 judged positives" in why and "1,200" in why and "90%" in why and "'none'" in why
    # a few queries judging hundreds dominate the rows even with a median of 1: capped too
    tail = {**few, **{f"big{i}": {f"b{i}-{j}": 1 for j in range(300)} for i in range(3)}}
    assert resolve_max_positives("auto", tail)[0] == 4
    # a number is taken as it is, "none" (or None) is no cap, nothing to log
    assert resolve_max_positives(7, many) == (7, "")
    assert resolve_max_positives("none", many) == (None, "") == resolve_max_positives(None, many)
    assert resolve_max_positives("auto", {}) == (None, "")


@pytest.mark.parametrize("dataset,expected", [("scifact", None), ("nfcorpus", 4)])
def test_auto_on_the_benchmarks_training_judgments(dataset, expected):
    path = SHARED_DATA / dataset / "qrels" / "train.tsv"
    if not path.exists():
        pytest.skip(f"{path} not here (the shared benchmark data)")
    assert resolve_max_positives("auto", _train_qrels(path))[0] == expected


def test_auto_that_caps_nothing_keeps_the_keys_of_before():
    """SciFact's judgments resolve to no cap: its keys hold no max_positives (as before 'auto' existed); a cap
    set by hand is keyed as the number."""
    from esdistill.pipeline import Project

    base = {"data": {"name": "s", "beir": str(SCIFACT), "max_train_queries": 200}}
    auto = Project(build_config(base, profile="quick"))
    assert auto.cfg.data.max_positives_per_query == "auto"
    assert auto.max_positives() is None and auto.keys._cap() == {}
    hand = Project(build_config({"data": {**base["data"], "max_positives_per_query": 1}}, profile="quick"))
    assert hand.keys._cap() == {"max_positives": 1}


def test_the_first_budget_is_not_in_the_key_but_any_other_is():
    """The quick profile's first budget (20 minutes) kept the keys of before budgets; its default since (15) and any
    other budget are keyed, so a student trained to one budget is never taken for another's."""
    base = {"data": {"name": "s", "beir": "x"}}
    quick = build_config(base, profile="quick")
    assert quick.train.budget_minutes == 15.0 and build_config(base, profile="full").train.budget_minutes is None
    assert budget_key(quick) == {"budget_minutes": 15.0} and budget_key(build_config(base, profile="full")) == {}
    first = build_config({**base, "train": {"budget_minutes": 20}}, profile="quick")
    assert budget_key(first) == {}
    lifted = build_config({**base, "train": {"budget_minutes": "none"}}, profile="quick")
    assert budget_key(lifted) == {"budget_minutes": "none"}
    assert budget_key(build_config({**base, "train": {"budget_minutes": 5}}, profile="full")) == {"budget_minutes": 5}


# ------------------------------------------------------------------------------------------- the plan
def _rows(passes=3, lists=100, judged=50, negs=7):
    from esdistill.data import Doc

    ex = [[(f"q{i}", f"p{i}", [f"n{i}-{j}" for j in range(negs)], [1.0] * (negs + 1)) for i in range(lists)]
          for _ in range(passes)]
    jd = [[(f"q{i}", f"p{i}", f"n{i}-0") for i in range(judged)] for _ in range(passes)]
    texts = {d: Doc(d, "", f"text of {d}") for i in range(lists)
             for d in [f"p{i}"] + [f"n{i}-{j}" for j in range(negs)]}
    return ex, jd, texts


def test_the_plan_keeps_whole_passes_then_a_sample_of_the_next_and_a_resumed_run_keeps_the_plan(tmp_path):
    """At 10 ms a text, a pass of 100 lists of 9 texts and 50 MNRL rows of 3 costs 10.5 s; 30 s keep passes 1
    and 2 and 6/7 of pass 3 (85 lists, 42 rows) — without the margin (``margin=1.0``; the next test has it).
    Written to the stage's folder, the plan is what a resumed run trains on, whatever its own measurement would say."""
    from esdistill.budget import plan_training
    from esdistill.config import TrainConfig

    ex, jd, texts = _rows()
    cfg = TrainConfig(batch_size=16, budget_minutes=0.5)
    lines: list[str] = []
    saved = tmp_path / "budget.json"
    plan = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=lambda m, t, bs: 0.01,
                         saved=saved, margin=1.0)
    assert [len(x) for x in plan.examples] == [100, 100, 85] and [len(x) for x in plan.judged] == [50, 50, 42]
    r = plan.record
    assert r["sampled_down"] and r["passes_kept"] == pytest.approx(2.85) and r["estimate_seconds"] <= 30
    assert r["estimate_seconds_whole"] == pytest.approx(31.5) and (r["steps_allowed"], r["steps_whole"]) == (27, 29)
    assert {r[0] for r in plan.examples[2]} < {r[0] for r in ex[2]} and plan.examples[:2] == ex[:2]
    assert "sampled down to 2.85 of 3 passes" in lines[0] and "285 of 300 lists" in lines[0]

    def no_measure(*_):
        raise AssertionError("a resumed run measures nothing")

    again = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=no_measure, saved=saved)
    assert again.examples == plan.examples and again.judged == plan.judged
    # the dev evaluations' 900 texts (a forward pass each: 3 ms) come off the budget first: 27 s left for rows
    evaluated = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=lambda m, t, bs: 0.01,
                              eval_texts=900, margin=1.0)
    assert [len(x) for x in evaluated.examples] == [100, 100, 57] and [len(x) for x in evaluated.judged] == [50, 50, 28]
    assert evaluated.record["evaluation_seconds"] == pytest.approx(3.0)
    assert evaluated.record["estimate_seconds_whole"] == pytest.approx(34.5)
    # evaluations between passes are kept while all evaluations stay within a quarter of the budget (7.5 s here)...
    kept = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=lambda m, t, bs: 0.01,
                         eval_texts=900, pass_eval_texts=600, margin=1.0)
    assert kept.record["evaluate_between_passes"] and kept.record["evaluation_seconds"] == pytest.approx(5.0)
    # ... and left out beyond it: the rows get back what they would have cost, and the log says so
    lines.clear()
    dropped = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=lambda m, t, bs: 0.01,
                            eval_texts=900, pass_eval_texts=2000, margin=1.0)
    assert not dropped.record["evaluate_between_passes"] and dropped.record["evaluation_seconds"] == pytest.approx(3.0)
    assert dropped.examples == evaluated.examples and dropped.judged == evaluated.judged
    assert any("between passes" in line and "left out" in line for line in lines)
    # the judgments-only control trains the MNRL rows alone: they are what is sampled, and all its line names
    lines.clear()
    # (a pass of its 50 rows costs 1.5 s: 2.4 s keep pass 1 and 30 rows of pass 2)
    control = plan_training(None, cfg.model_copy(update={"budget_minutes": 0.04}), ex, jd, {}, texts, "quick",
                            lines.append, measure=lambda m, t, bs: 0.01, distill=False, margin=1.0)
    assert [len(x) for x in control.judged] == [50, 30] and control.record["sampled_down"]
    said = [line for line in lines if "sampled down" in line]
    assert len(said) == 1 and "80 of 150 MNRL rows" in said[0] and "lists" not in said[0]
    # without a budget: only the estimate
    free = plan_training(None, TrainConfig(batch_size=16), ex, jd, {}, texts, None, lines.append,
                         measure=lambda m, t, bs: 0.01)
    assert free.examples == ex and not free.record["sampled_down"] and free.record["minutes"] is None


def test_a_budget_keeps_the_rows_of_its_margin_and_expects_no_more_than_the_budget():
    """The rows kept are those of 1.25x the budget at the first batches' speed — the clock stops the steps — so a
    24 s budget keeps what 30 s kept without the margin; the training is expected to take the budget, not more,
    and the log says the steps stop when it is spent."""
    from esdistill.budget import PLAN_MARGIN, plan_training
    from esdistill.config import TrainConfig

    assert PLAN_MARGIN == 1.25
    ex, jd, texts = _rows()
    lines: list[str] = []
    plan = plan_training(None, TrainConfig(batch_size=16, budget_minutes=0.4), ex, jd, {}, texts, "quick",
                         lines.append, measure=lambda m, t, bs: 0.01)
    exact = plan_training(None, TrainConfig(batch_size=16, budget_minutes=0.5), ex, jd, {}, texts, "quick",
                          lines.append, measure=lambda m, t, bs: 0.01, margin=1.0)
    assert plan.examples == exact.examples and plan.judged == exact.judged
    r = plan.record
    assert r["estimate_seconds"] == pytest.approx(24.0) and r["planned_seconds"] == pytest.approx(29.91)
    assert r["margin"] == 1.25 and r["sampled_down"]
    assert "(those of 1.25x the budget at that speed: the steps stop when it is spent)" in lines[0]
    assert lines[1].startswith("train: estimated 24 s")
    # data that fits the margin but not the budget: every row kept, and the log says the clock will stop it
    lines.clear()
    fits = plan_training(None, TrainConfig(batch_size=16, budget_minutes=0.45), ex, jd, {}, texts, "quick",
                         lines.append, measure=lambda m, t, bs: 0.01)
    assert fits.examples == ex and not fits.record["sampled_down"] and fits.record["estimate_seconds"] == 27.0
    assert any("over the 27 s budget: the steps stop when it is spent" in line for line in lines)


def test_queries_are_priced_at_their_own_measurement():
    """Each column of a batch is encoded apart, so a query costs what a query batch measures, not a document's
    price: at 10 ms a document and 2 ms a query, a pass of 100 lists (1 query + 8 documents) and 50 MNRL rows
    (1 query + 2 documents) costs 9.3 s, and the rows a document's price sampled down to 2.85 passes fit whole in
    30 s. Without query texts to measure, a query is priced as a document (the conservative estimate)."""
    from esdistill.budget import plan_training
    from esdistill.config import TrainConfig

    ex, jd, texts = _rows()
    queries = {f"q{i}": f"query {i}" for i in range(100)}
    measured: list[list[str]] = []

    def measure(model, sample, bs):
        measured.append(sample)
        return 0.002 if all(t.startswith("query ") for t in sample) else 0.01

    cfg = TrainConfig(batch_size=16, budget_minutes=0.5)
    lines: list[str] = []
    plan = plan_training(None, cfg, ex, jd, queries, texts, "quick", lines.append, measure=measure)
    assert len(measured) == 2 and set(measured[1]) <= set(queries.values())  # documents, then the rows' queries
    r = plan.record
    assert r["seconds_per_text"] == 0.01 and r["seconds_per_query"] == 0.002
    assert r["estimate_seconds_whole"] == pytest.approx(27.9) and not r["sampled_down"]
    assert [len(x) for x in plan.examples] == [100, 100, 100] and "10 ms a document, 2 ms a query" in lines[-1]
    unknown = plan_training(None, cfg, ex, jd, {}, texts, "quick", lines.append, measure=measure)
    assert unknown.record["seconds_per_query"] == 0.01
    assert unknown.record["estimate_seconds_whole"] == pytest.approx(31.5)


# ------------------------------------------------------------------------------------ the quick budget, end to end
def many_judgments(root: Path, queries: int = 30, positives: int = 40) -> Path:
    """A small BEIR folder judged like NFCorpus: ``queries`` training queries with ``positives`` judged documents
    each, and 5 test queries. Each topic has half as many documents again that are not judged, written to rank
    first in BM25 (the teacher's negatives; the judged ones BM25 misses are scored next to them)."""
    topics = [f"topic{i} alpha{i} beta{i}" for i in range(queries + 5)]
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    with open(root / "corpus.jsonl", "w") as fh:
        for i, t in enumerate(topics):
            for j in range(positives * 3 // 2):
                again = f" More on {t}." if j >= positives else ""
                fh.write(json.dumps({"_id": f"t{i}d{j}", "title": f"{t} study {j}",
                                     "text": f"A report on {t} with cohort {j * 3} and outcome {j % 5}.{again}"})
                         + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for i, t in enumerate(topics):
            fh.write(json.dumps({"_id": f"q{i}", "text": f"what about {t}"}) + "\n")
    for split, ids in (("train", range(queries)), ("test", range(queries, queries + 5))):
        with open(root / "qrels" / f"{split}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for i in ids:
                for j in range(positives if split == "train" else 3):
                    fh.write(f"q{i}\tt{i}d{j}\t1\n")
    return root


@pytest.fixture(scope="module")
def judged_project(tmp_path_factory, es, es_url, tiny_models):
    """The many-judgments dataset through index → train on the quick profile (tiny models); the log kept."""
    from esdistill.pipeline import Project

    tmp = tmp_path_factory.mktemp("many")
    name = f"mj{uuid.uuid4().hex[:8]}"
    over = {"data": {"beir": str(many_judgments(tmp / "beir")), "max_train_queries": 400, "max_corpus_docs": None},
            "train": {"epochs": 3.0}}
    cfg = tiny_config(tmp, es_url, tiny_models, name, **over)
    project = Project(cfg, client=es)
    lines: list[str] = []
    project.log = lines.append
    project.index()
    project.candidates()
    if project.fits_needed():
        project.teacher_fit()
    project.teacher()
    info = project.train()
    yield project, info, lines
    es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_many_judgments_are_capped_by_auto(judged_project):
    project, info, lines = judged_project
    assert project.cfg.profile == "quick" and project.cfg.data.max_positives_per_query == "auto"
    assert project.max_positives() == 4
    said = [m for m in lines if "at most 4 judged positives per query" in m]
    assert len(said) == 1 and "1,200" in said[0]  # one line: what was capped and why
    assert info["max_positives"] == 4 and info["max_positives_setting"] == "auto"
    assert 0 < info["judged_pairs"] <= 4 * info["train_queries"]  # MNRL rows of one pass, at most 4 a query
    assert project.keys.train()["max_positives"] == 4  # keyed as the number, like a hand-written cap
    pairs = project.teacher_pairs(judged=True)
    assert (pairs[pairs.source == "judged"].groupby("qid").size() <= 4).all()  # only the capped ones scored


def test_training_stays_within_the_quick_budget(judged_project):
    _, info, lines = judged_project
    b = info["budget"]
    quick = PROFILES["quick"]["train"]["budget_minutes"]  # the profile's budget, whatever it is now (15)
    assert b["minutes"] == quick and b["profile"] == "quick" and b["seconds_per_text"] > 0
    assert b["estimate_seconds"] <= quick * 60 and b["passes"] == 3
    assert info["steps"] <= b["steps_allowed"]
    assert any(m.startswith("train: estimated") for m in lines)
    assert b["steps_seconds"] <= quick * 60 * 1.05 or b["stopped_at_step"] is not None


def test_a_budget_the_data_exceeds_samples_it_down_and_says_how_to_lift_it(judged_project):
    """The same data with a budget far below what it needs: trained on fewer steps than the whole would take, the
    rows left out named in the log with the way to train them all; the budget is in the key (a new model)."""
    from esdistill.pipeline import Project

    project, whole, _ = judged_project
    cfg = project.cfg.model_copy(update={"train": project.cfg.train.model_copy(update={"budget_minutes": 0.0005})})
    tight = Project(cfg, client=project.client)
    lines: list[str] = []
    tight.log = lines.append
    assert tight._train_cache().key != project._train_cache().key
    info = tight.train()
    b = info["budget"]
    assert b["sampled_down"] and b["steps_allowed"] < b["steps_whole"] == whole["budget"]["steps_allowed"]
    assert info["steps"] <= b["steps_allowed"] < whole["steps"]
    assert b["lists"][0] < b["lists"][1] and b["passes_kept"] < 3
    said = [m for m in lines if "sampled down" in m]
    assert len(said) == 1 and "--profile full" in said[0] and "train.budget_minutes" in said[0]
    # a budget of 0.03 s is spent by the first step: the guard stops there (the plan keeps at least one batch a
    # loss, so it planned more) and says so; the steps' wall time is recorded either way
    assert b["steps_seconds"] > 0 and info["steps"] == (b["stopped_at_step"] or b["steps_allowed"])
    if b["steps_allowed"] > 1:
        assert b["stopped_at_step"] == 1
        # the trainer's own schedule was paced by the clock: its learning rate ran out with the time
        assert b["paced_from_step"] is not None
        assert any("time was spent after 1 of" in m and "paced by the clock" in m for m in lines)


def test_the_guard_stops_the_steps_that_run_past_their_share_of_the_budget():
    """``train.budget_minutes`` is a limit: once the steps have run their share, the training stops after the step
    under way (never before the first one, nor at the last, which ends it anyway); time spent evaluating between
    passes is not the steps'."""
    import time

    from transformers import TrainerControl, TrainerState

    from esdistill.budget import budget_guard

    guard = budget_guard(0.05)
    state, control = TrainerState(max_steps=10, global_step=1), TrainerControl()
    guard.on_train_begin(None, state, control)
    guard.on_step_end(None, state, control)
    assert not control.should_training_stop and guard.stopped_at is None
    time.sleep(0.03)
    guard.on_evaluate(None, state, control)  # 30 ms of evaluation: not the steps' time
    state.global_step = 2
    guard.on_step_end(None, state, control)
    assert not control.should_training_stop and guard.seconds_run < 0.03
    time.sleep(0.06)
    state.global_step = 4
    guard.on_step_end(None, state, control)
    assert control.should_training_stop and guard.stopped_at == 4 and guard.seconds_run > 0.05
    last = budget_guard(0.0)
    state, control = TrainerState(max_steps=3, global_step=3), TrainerControl()
    last.on_train_begin(None, state, control)
    last.on_step_end(None, state, control)
    assert not control.should_training_stop and last.stopped_at is None


def _linear_schedule(steps: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, get_linear_schedule_with_warmup(optimizer, num_warmup_steps=steps // 10,
                                                      num_training_steps=steps)


def test_the_learning_rate_runs_out_with_the_time_when_the_steps_are_slower_than_planned():
    """Steps slower than the plan priced: the linear decay follows the clock, so the learning rate is at zero when
    the time is spent (not cut off mid-decay); steps as fast as planned, or faster, keep the trainer's own
    schedule step for step."""
    import time

    from transformers import TrainerControl, TrainerState

    from esdistill.budget import budget_guard

    # fast: a budget the steps never reach — the same learning rates as the unpaced schedule
    optimizer, paced = _linear_schedule(20)
    plain_optimizer, plain = _linear_schedule(20)
    guard = budget_guard(3600.0)
    state, control = TrainerState(max_steps=20, global_step=0), TrainerControl()
    guard.on_train_begin(None, state, control, lr_scheduler=paced)
    for step in range(1, 12):
        optimizer.step()
        plain_optimizer.step()
        paced.step()
        plain.step()
        assert paced.get_last_lr() == plain.get_last_lr()
    assert guard.paced_from is None and guard.expected_steps(state) == 20  # the bar's total: every step

    # slow: 100 planned steps, the time spent after 10 of them — the schedule is past its peak and decays with the
    # clock; at the end of the time the rate is zero and the guard stops the steps
    optimizer, paced = _linear_schedule(100)
    guard = budget_guard(0.2)
    state, control = TrainerState(max_steps=100, global_step=0), TrainerControl()
    guard.on_train_begin(None, state, control, lr_scheduler=paced)
    rates = []
    for step in range(1, 101):
        time.sleep(0.02)
        optimizer.step()
        paced.step()
        rates.append(paced.get_last_lr()[0])
        state.global_step = step
        guard.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    assert guard.stopped_at is not None and guard.stopped_at < 20 and guard.paced_from is not None
    assert guard.expected_steps(state) == state.global_step  # the bar's total follows the clock down to the stop
    assert max(rates) > 0.5 and rates[-1] < 0.15  # warmed up, then decayed to about nothing with the time
    after_peak = rates[rates.index(max(rates)):]
    assert after_peak == sorted(after_peak, reverse=True)


def test_the_training_bar_counts_the_steps_the_clock_leaves_and_ends_where_the_training_did():
    """Under a budget the bar's total is the steps the time left holds (not the plan's, which has a margin), and
    the bar ends at the step the training stopped at."""
    from transformers import TrainerControl, TrainerState

    from esdistill.console import trainer_progress

    progress = EstimatingProgress(disable=True)
    bar = trainer_progress(progress, "train", estimate=60.0, steps=lambda state: 7)
    state, control = TrainerState(max_steps=10, global_step=0), TrainerControl()
    bar.on_train_begin(None, state, control)
    task = progress.tasks[0]
    assert task.total == 10
    state.global_step = 3
    bar.on_step_end(None, state, control)
    assert (task.completed, task.total) == (3, 7)
    state.global_step = 6
    bar.on_train_end(None, state, control)
    assert (task.completed, task.total) == (6, 6) and task.finished


# ------------------------------------------------------------------------------------- estimates before spending
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_progress_bar_estimates_its_task_from_its_first_batches():
    clock, said = Clock(), []
    progress = EstimatingProgress(get_time=clock, on_estimate=lambda d, s: said.append((d, s)), disable=True)
    task = progress.add_task("teacher scoring", total=100)
    progress.advance(task, 30)  # work found in a cache, skipped at once: not a measurement
    clock.t = 0.01
    progress.advance(task, 10)
    clock.t = 5.0
    progress.advance(task, 10)  # the first real batch (it paid for loading the model): the clock starts here
    clock.t = 6.0
    progress.advance(task, 10)
    assert said == []  # not yet 2 s of measured work
    clock.t = 7.0
    progress.advance(task, 10)  # 20 in 2 s: the 30 left take 3 s more
    assert said == [("teacher scoring", pytest.approx(10.0))]
    assert progress.tasks[0].description == "teacher scoring (≈ 10 s)"
    clock.t = 20.0
    progress.advance(task, 10)
    assert len(said) == 1  # said once, before it was spent, and kept
    planned = progress.add_task("train", total=50, estimate=600.0)  # an estimate made before (the training plan)
    assert said[-1] == ("train", 600.0) and progress.tasks[planned].description == "train (≈ 10.0 min)"


def test_the_report_keeps_estimate_and_actual_side_by_side():
    table = stage_table({"teacher": 130.4, "index": 2.0}, {"teacher": 120.0})
    assert "| stage | estimate (s) | wall time (s) |" in table
    assert "| teacher | 120.0 | 130.4 |" in table and "| index | — | 2.0 |" in table


def test_a_stage_run_again_is_estimated_again(tmp_path):
    """The stage table pairs each stage's last wall time with the estimate made in that same run of it."""
    from esdistill.pipeline import Project

    project = Project(build_config({"workdir": str(tmp_path), "data": {"name": "s", "beir": str(SCIFACT)}}))
    for seconds in (100.0, 7.0):
        with project.stage("teacher"):
            task = project.progress.add_task("teacher scoring", total=10, estimate=seconds)
            project.progress.advance(task, 10)
    assert project.stage_estimates == {"teacher": 7.0} and set(project.stage_seconds) == {"teacher"}
