"""The full ``run`` on a tiny slice finishes, writes the report, and a rerun is all cache hits."""

import json
from pathlib import Path


def test_run_writes_report_with_all_systems(tiny_project):
    project, report = tiny_project
    md = Path(report["markdown"]).read_text()
    data = json.loads(Path(report["json"]).read_text())
    for label in ("BM25", "pipeline (BM25 → teacher)", "student (kNN)", "hybrid (student + BM25, RRF)"):
        assert f"| {label} |" in md
    systems = data["systems"]
    assert set(systems) == {"bm25", "pipeline", "student", "hybrid"}
    n = len(project.dataset.test_qrels)
    for s in systems.values():
        assert 0.0 <= s["ndcg@10"] <= 1.0 and s["latency_ms"]["p50"] > 0
        assert len(s["per_query"]["ndcg@10"]) == n
    assert data["queries"] == n
    assert set(data["stage_seconds"]) >= {"index", "candidates", "teacher", "train", "deploy", "evaluate"}
    # truncation to the student's max length is counted in the report (tiny slice: max_length 48 tokens)
    dep = data["deploy"]
    assert dep["docs"] == len(project.dataset.corpus) and dep["truncated_docs_total"] > 0
    assert f"{dep['truncated_docs_total']} of {dep['docs']} documents are longer" in md


def test_pipeline_keeps_bm25_recall_and_reorders_head(tiny_project):
    project, report = tiny_project
    data = json.loads(Path(report["json"]).read_text())
    bm25, pipe = data["systems"]["bm25"], data["systems"]["pipeline"]
    # the pipeline reranks BM25's top documents only: the set retrieved at depth k is BM25's
    assert pipe["recall@100"] == bm25["recall@100"]


def test_rerun_is_all_cache_hits(tiny_project):
    project, _ = tiny_project
    assert project.index()["cached"] is True
    assert project.candidates()["cached"] is True
    assert project.teacher_fit()["cached"] is True
    assert project.teacher()["cached"] is True
    assert project.train()["cached"] is True
    assert project.deploy()["embedded_now"] == 0


def test_evaluate_writes_results_for_kibana(tiny_project, es):
    from esdistill.results import RESULTS_INDEX

    project, report = tiny_project
    key = project._eval_cache().key
    es.indices.refresh(index=RESULTS_INDEX)
    n_q = len(project.dataset.test_qrels)
    got = es.count(index=RESULTS_INDEX, query={"term": {"evaluate_key": key}}).body["count"]
    assert got == 4 * n_q + 4  # one doc per (system, query) and one per system
