"""Metrics equal a hand computation; RRF equals ranx's; the report shows share of gain."""

import math

import pytest

from esdistill.evaluate import markdown, metrics, summarize
from esdistill.search import rrf


def test_metrics_equal_hand_computation():
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"x": 1}}
    run = {"q1": {"b": 3.0, "a": 2.0, "c": 1.0}, "q2": {"y": 2.0, "z": 1.0}}
    m = metrics(qrels, run)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 0.0) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@100"] == pytest.approx((1.0 + 0.0) / 2)


def test_query_without_hits_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert metrics(qrels, {"q1": {"a": 1.0}})["ndcg@10"] == pytest.approx(0.5)


def test_rrf_matches_ranx_fusion():
    from ranx import Run, fuse

    r1 = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    r2 = {"q": {"c": 9.0, "d": 8.0, "a": 7.0}}
    ours = rrf([["a", "b", "c"], ["c", "d", "a"]], k=60)
    theirs = fuse([Run(r1), Run(r2)], method="rrf", params={"k": 60}).to_dict()["q"]
    assert [d for d, _ in ours] == sorted(theirs, key=lambda d: (-theirs[d], d))
    for d, s in ours:
        assert s == pytest.approx(theirs[d])


def test_minmax_matches_ranx_weighted_sum_of_min_max_scores():
    from ranx import Run, fuse

    from esdistill.search import minmax

    r1 = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "e": 0.5}}
    r2 = {"q": {"c": 9.0, "d": 8.0, "a": 6.0}}
    ours = minmax([list(r1["q"].items()), list(r2["q"].items())], [0.3, 0.7])
    theirs = fuse([Run(r1), Run(r2)], norm="min-max", method="wsum", params={"weights": [0.3, 0.7]}).to_dict()["q"]
    assert [d for d, _ in ours] == sorted(theirs, key=lambda d: (-theirs[d], d))
    for d, s in ours:
        assert s == pytest.approx(theirs[d])
    assert dict(ours)["c"] == pytest.approx(0.3 * (1 - 0.5) / 2.5 + 0.7)  # in both: each normalised, weighted
    assert minmax([[("x", 2.0)], []], [0.5, 0.5]) == [("x", 0.5)]  # one hit: it is that ranking's best


def test_summary_share_of_gain_and_table():
    qrels = {f"q{i}": {"a": 1} for i in range(4)}
    def res(rank_of_a):
        run = {q: {d: -i for i, d in enumerate(["x"] * 0 + [f"z{j}" for j in range(rank_of_a)] + ["a"])} for q in qrels}
        return {"run": run, "wall_ms": [1.0, 2.0, 3.0, 4.0], "took_ms": [1, 1, 1, 1], "extra_ms": {}}
    s = summarize(qrels, {"bm25": res(3), "pipeline": res(0), "student": res(1)})
    sys = s["systems"]
    assert sys["pipeline"]["ndcg@10"] == pytest.approx(1.0)
    expected = (sys["student"]["ndcg@10"] - sys["bm25"]["ndcg@10"]) / (1.0 - sys["bm25"]["ndcg@10"])
    assert sys["student"]["share_of_gain"] == pytest.approx(expected)
    table = markdown(s, "t")
    assert "| student (kNN) |" in table and f"{expected * 100:.0f}%" in table


def test_the_pipeline_members_alone_beside_the_student():
    """An ensemble pipeline's members, each ranking its head alone, are scored like systems; the report names the
    best model member next to the student when the hybrid fuses the student with BM25 as the pipeline does."""
    qrels = {f"q{i}": {"a": 1} for i in range(4)}
    def res(rank_of_a):
        return {q: {d: -i for i, d in enumerate([f"z{j}" for j in range(rank_of_a)] + ["a"])} for q in qrels}
    def system(rank_of_a, **extra):
        return {"run": res(rank_of_a), "wall_ms": [1.0] * 4, "took_ms": [1] * 4, "extra_ms": {}, **extra}
    members = {"bi_encoder:m": res(1), "cross_encoder:c": res(2), "bm25": res(3)}
    s = summarize(qrels, {"bm25": system(3), "pipeline": system(0, members=members), "student": system(1),
                          "hybrid": system(0)})
    got = s["pipeline_members"]
    assert list(got) == list(members)
    assert got["bm25"]["ndcg@10"] == pytest.approx(s["systems"]["bm25"]["ndcg@10"])
    assert got["bi_encoder:m"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert got["bi_encoder:m"]["p_vs_pipeline"] < 0.05
    table = markdown(s)
    assert "bi_encoder:m 0.631, cross_encoder:c 0.500, bm25 0.431" in table
    assert "fuses bi_encoder:m (0.631) with it" in table
    # no BM25 member (or no hybrid): the pipeline is not fused like the hybrid, so no such sentence
    del members["bm25"]
    s = summarize(qrels, {"pipeline": system(0, members=members), "student": system(1), "hybrid": system(0)})
    assert "members alone" in markdown(s) and "The hybrid fuses" not in markdown(s)
    assert "members alone" not in markdown(summarize(qrels, {"pipeline": system(0), "student": system(1)}))


def test_share_of_gain_is_undefined_when_the_pipeline_loses():
    qrels = {f"q{i}": {"a": 1} for i in range(3)}
    def res(rank_of_a):
        run = {q: {d: -i for i, d in enumerate([f"z{j}" for j in range(rank_of_a)] + ["a"])} for q in qrels}
        return {"run": run, "wall_ms": [1.0, 2.0, 3.0], "took_ms": [1, 1, 1], "extra_ms": {}}
    s = summarize(qrels, {"bm25": res(0), "pipeline": res(4), "student": res(1)})
    assert all(math.isnan(x["share_of_gain"]) for x in s["systems"].values())
    assert "undefined" in markdown(s)


def test_report_writes_undefined_numbers_as_null(tmp_path):
    """A p-value of two identical runs and an undefined share of gain are NaN in Python: the report must still
    be JSON that strict parsers read (null)."""
    import json

    from esdistill.evaluate import write_report

    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    same = {"run": {"q1": {"a": 1.0}, "q2": {"c": 1.0}}, "wall_ms": [1.0, 2.0], "took_ms": [1.0, 1.0], "extra_ms": {}}
    summary = summarize(qrels, {"bm25": same, "pipeline": same})
    _, js = write_report(summary, tmp_path, "t", {"nan": float("nan")})

    def refuse(token):
        raise ValueError(token)

    data = json.loads(js.read_text(), parse_constant=refuse)
    assert data["nan"] is None and data["systems"]["pipeline"]["share_of_gain"] is None


def test_committed_bench_results_are_strict_json():
    import json
    from pathlib import Path

    def refuse(token):
        raise ValueError(token)

    files = sorted((Path(__file__).resolve().parent.parent / "bench" / "results").glob("*.json"))
    assert files
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)


def test_metrics_without_ranx_equal_ranx():
    """The offline stages run where ranx's dependencies are missing: their metrics must be ranx's."""
    import random

    from esdistill.evaluate import metrics_numpy

    rng = random.Random(3)
    qrels = {f"q{i}": {f"d{rng.randrange(150)}": rng.choice([0, 1, 2]) for _ in range(rng.randrange(1, 6))}
             for i in range(40)}
    run = {q: {f"d{j}": rng.random() for j in rng.sample(range(150), 120)} for q in qrels if q != "q7"}
    for per_query in (False, True):
        ours, theirs = metrics_numpy(qrels, run, per_query), metrics(qrels, run, per_query)
        assert ours.keys() == theirs.keys()
        for m in ours:
            assert ours[m] == pytest.approx(theirs[m])
