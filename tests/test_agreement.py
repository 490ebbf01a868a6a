"""``agreement``: rank agreement of a tested ranking with a reference one."""

import math

from esdistill.agreement import agreement, bootstrap_ci, ndcg_at, overlap_at, rbo


def test_identical_orders_agree_fully_and_reversed_ones_do_not():
    ref = {f"d{i}": 30.0 - i for i in range(30)}
    assert ndcg_at(ref, ref) == 1.0 and overlap_at(ref, ref) == 1.0 and math.isclose(rbo(ref, ref), 1.0)
    rev = {d: -s for d, s in ref.items()}
    assert ndcg_at(ref, rev) == 0.0 and overlap_at(ref, rev) == 0.0 and rbo(ref, rev) < 0.2
    swapped = dict(ref, d0=ref["d1"], d1=ref["d0"])  # the top two swapped: high, but below identical
    assert 0.9 < ndcg_at(ref, swapped) < 1.0 and overlap_at(ref, swapped) == 1.0 and 0.8 < rbo(ref, swapped) < 1.0


def test_rbo_matches_a_hand_computed_value():
    # a = [x, y], b = [y, x]: overlap at depth 1 is 0, at depth 2 is 2 -> (1-p)/p * (0 + 1 * p^2) + 1 * p^2
    p = 0.9
    got = rbo({"x": 2, "y": 1}, {"x": 1, "y": 2}, p=p)
    assert math.isclose(got, (1 - p) / p * (p ** 2) + p ** 2)


def test_agreement_averages_queries_with_intervals():
    ref = {"q1": {"a": 3, "b": 2, "c": 1}, "q2": {"a": 3, "b": 2, "c": 1}, "q3": {"a": 1}}
    tested = {"q1": {"a": 3, "b": 2, "c": 1}, "q2": {"a": 1, "b": 2, "c": 3}}
    out = agreement(ref, tested, per_query=True)
    assert out["queries"] == 2  # q3 has one document, and no tested ranking
    assert math.isclose(out["overlap@10"], 1.0)  # only 3 documents: every one is in both top 10s
    assert out["per_query"]["q1"]["ndcg@10"] == 1.0 > out["per_query"]["q2"]["ndcg@10"]
    lo, hi = out["ndcg@10_ci95"]
    assert lo <= out["ndcg@10"] <= hi
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
