"""``esdistill monitor`` against the real test cluster: agreement measures, the query sources (a log file, an
index of logged queries with a time window), the results index, and the exit code below the threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from esdistill.monitor import agreement, monitor_queries


def test_agreement_measures():
    ten = [f"d{i}" for i in range(10)]
    same = agreement(ten, ten)
    assert same == {"ndcg@10": pytest.approx(1.0), "overlap@10": 1.0, "kendall_tau": pytest.approx(1.0)}
    disjoint = agreement(ten, [f"x{i}" for i in range(10)])
    assert disjoint["ndcg@10"] == 0.0 and disjoint["overlap@10"] == 0.0 and disjoint["kendall_tau"] < 0
    reversed_ = agreement(ten, ten[::-1])
    assert reversed_["overlap@10"] == 1.0 and reversed_["kendall_tau"] == pytest.approx(-1.0)
    assert 0.0 < reversed_["ndcg@10"] < 1.0
    swapped = agreement(ten, [ten[1], ten[0], *ten[2:]])  # the top two swapped: close to, below, 1
    assert reversed_["ndcg@10"] < swapped["ndcg@10"] < 1.0


def test_monitor_on_a_log_file_writes_results_and_exits_4_below_the_threshold(tiny_project, es, tmp_path):
    project, _ = tiny_project
    log = tmp_path / "recent.txt"
    log.write_text("\n".join(list(project.eval_queries().values())[:8]) + "\n")
    report = project.monitor(str(log))
    assert report["queries"] + report["without_pipeline_hits"] == 8
    assert len(report["per_query"]) == report["queries"]
    mean = report["mean"]
    assert 0.0 <= mean["ndcg@10"] <= 1.0 and 0.0 <= mean["overlap@10"] <= 1.0 and -1.0 <= mean["kendall_tau"] <= 1.0
    assert report["below"] is False  # no threshold configured
    docs = es.search(index="esdistill-results", query={"bool": {"filter": [
        {"term": {"doc_type": "monitor"}}, {"term": {"dataset": project.cfg.data.name}}]}}, size=10).body["hits"]
    assert docs["total"]["value"] >= 1
    summary = docs["hits"][0]["_source"]
    assert summary["agreement_ndcg_at_10"] == pytest.approx(mean["ndcg@10"]) and summary["queries"] == report["queries"]
    assert "NDCG@10" in open(report["markdown"]).read()

    # the student reranking the pipeline's own candidates, against the pipeline's order (issue 20 item 7); the
    # zero-shot base beside it when its index is in the cluster, else the report says why it is missing
    rerank = report["rerank_agreement"]
    assert rerank["student"]["queries"] == report["queries"]
    for m in ("ndcg@10", "overlap@10", "rbo"):
        assert 0.0 <= rerank["student"][m] <= 1.0
        lo, hi = rerank["student"][f"{m}_ci95"]
        assert lo <= rerank["student"][m] <= hi
    assert summary["rerank_ndcg_at_10"] == pytest.approx(rerank["student"]["ndcg@10"])
    md = open(report["markdown"]).read()
    assert "Agreement with the pipeline on its own candidates" in md
    if es.indices.exists(index=project.dense_index("zero_shot")):
        assert rerank["zero_shot"]["queries"] == report["queries"]
        assert summary["rerank_ndcg_at_10_zero_shot"] == pytest.approx(rerank["zero_shot"]["ndcg@10"])
    else:
        assert "zero_shot" not in rerank and "is not in the cluster" in rerank["zero_shot_missing"]
        assert "Zero-shot base not measured" in md

    # the CLI exits 4 below the threshold (for a scheduler), 0 at or above it
    assert mean["ndcg@10"] < 1.0, "the tiny student should not agree perfectly (else the exit-4 case is untested)"
    values = project.cfg.model_dump(mode="json", exclude={"cluster"}) | {"cluster": {"url": project.cfg.cluster.url}}
    from .test_clients import _toml

    cfg = tmp_path / "c.toml"
    cfg.write_text(_toml(values))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "esdistill", "monitor", "-c", str(cfg), "--queries", str(log)]
    below = subprocess.run([*base, "--min-ndcg", "1.0"], capture_output=True, text=True, env=env, timeout=600)
    assert below.returncode == 4, below.stderr[-2000:]
    assert "no longer agrees" in below.stderr
    fine = subprocess.run([*base, "--min-ndcg", "0.0"], capture_output=True, text=True, env=env, timeout=600)
    assert fine.returncode == 0, fine.stderr[-2000:]


def test_monitor_reads_recent_queries_from_an_index_of_logged_queries(tiny_project, es):
    project, _ = tiny_project
    index = f"querylog-{uuid.uuid4().hex[:8]}"
    now = datetime.now(timezone.utc)
    try:
        es.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"},
                                                                "request": {"properties": {"q": {"type": "text"}}}}})
        recent = ["obesity and life quality", "vitamin d deficiency", "Vitamin D deficiency"]  # one duplicate
        old = ["a query from last year"]
        for i, text in enumerate(recent):
            es.index(index=index, id=f"r{i}", document={"@timestamp": now.isoformat(), "request": {"q": text}})
        es.index(index=index, id="old", document={"@timestamp": (now - timedelta(days=400)).isoformat(),
                                                  "request": {"q": old[0]}})
        es.indices.refresh(index=index)
        project.cfg.monitor.field, project.cfg.monitor.since = "request.q", "7d"
        got = monitor_queries(project, index=index)
        assert sorted(t.lower() for t in got.values()) == ["obesity and life quality", "vitamin d deficiency"]
        project.cfg.monitor.since = None
        assert old[0] in monitor_queries(project, index=index).values()
    finally:
        project.cfg.monitor.field, project.cfg.monitor.since = "query", "7d"
        es.indices.delete(index=index, ignore_unavailable=True)


def test_monitor_without_queries_says_where_to_put_them(tiny_project):
    from esdistill.errors import InputError

    project, _ = tiny_project
    with pytest.raises(InputError, match="monitor needs recent queries") as e:
        monitor_queries(project)
    assert "--queries" in e.value.hint
