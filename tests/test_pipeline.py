"""The full ``run`` on a tiny slice finishes, writes the report, and a rerun is all cache hits."""

import json
from pathlib import Path


def test_run_writes_report_with_all_systems(tiny_project):
    project, report = tiny_project
    md = Path(report["markdown"]).read_text()
    data = json.loads(Path(report["json"]).read_text())
    for label in ("BM25", "pipeline (BM25 → teacher)", "student (kNN)", "hybrid (student + BM25)"):
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
    plot = Path(report["markdown"]).parent / "plot.png"  # quality against latency, shown in the report
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](plot.png)" in md


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
    import re

    hit = es.search(index=RESULTS_INDEX, query={"term": {"evaluate_key": key}}, size=1).body["hits"]["hits"][0]
    # run ids sort by time, so the dashboard's "newest first" is alphabetical order
    assert re.fullmatch(r"\d{8}T\d{6}-" + key[:8], hit["_source"]["run_id"])


def test_bench_systems_fusion_and_unjudged_queries(tmp_path, es, es_url, tiny_models, capsys):
    """Every bench system on one tiny run: zero-shot base, judgments-only control, a teacher fused with BM25
    (weight 1: the pipeline must rank exactly as BM25), a listwise teacher fit, a query log and pseudo-queries
    that the full teacher model labels."""
    import uuid

    from esdistill.pipeline import Project
    from esdistill.teacher import FULL

    from .conftest import tiny_config

    log = tmp_path / "log.txt"
    log.write_text("vitamin d deficiency and bone\nsmoking raises the risk of cancer\n")
    name = f"t{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path, es_url, tiny_models, name,
                      data={"query_log": str(log), "pseudo_queries": 5},
                      teacher={"bm25_weight": 1.0, "fit": {"loss": "listwise", "in_batch_negatives": 2}},
                      evaluate={"systems": ["bm25", "zero_shot", "pipeline", "student", "judgments", "hybrid"]})
    project = Project(cfg, client=es)
    try:
        report = project.run()
        printed = " ".join(capsys.readouterr().err.split())
        record = project._train_cache().info()
        before, after = record["agreement_before"]["ndcg@10"], record["agreement_after"]["ndcg@10"]
        assert "agreement with the teacher on the dev slice's candidates" in printed  # item 7 on the console
        assert f"{before:.3f} → {after:.3f}" in printed
        ds = project.dataset
        assert len(project.train_queries) == len(ds.train_queries) + 2 + 5
        scores = project.scores_frame()
        unjudged = [q for q in project.train_queries if q.startswith(("log-", "pq-"))]
        assert set(unjudged) <= set(scores.qid)
        full = project._fit_cache().info()["models"][FULL]
        assert (scores[scores.qid.isin(unjudged)].scorer == full).all()
        # labels follow BM25's order with weight 1; raw logits are kept beside them
        for _, g in scores[scores.source == "bm25"].groupby("qid"):
            by_rank = g.sort_values("rank").teacher.tolist()
            assert all(a >= b - 1e-5 for a, b in zip(by_rank, by_rank[1:], strict=False))
        assert "teacher_raw" in scores
        systems = json.loads(Path(report["json"]).read_text())["systems"]
        assert set(systems) == {"bm25", "zero_shot", "pipeline", "student", "judgments", "hybrid"}
        assert systems["pipeline"]["per_query"]["ndcg@10"] == systems["bm25"]["per_query"]["ndcg@10"]
        control = project._control_cache().info()
        assert control["train_queries"] + control["dev_queries"] <= len(ds.train_qrels)  # judged queries only
        assert control["judged_pairs"] > 0
        aliases = {a for a in es.indices.get_alias(name=f"esdistill-{name}-*").body.values() for a in a["aliases"]}
        # evaluate measures each system's versioned index; only `deploy` (run() deploys the student) moves aliases
        assert f"esdistill-{name}-student" in aliases
        assert not {f"esdistill-{name}-student-zero-shot", f"esdistill-{name}-student-judgments"} & aliases
        for which in ("zero_shot", "judgments"):
            assert es.count(index=project.dense_index(which)).body["count"] == len(ds.corpus)
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_test_side_settings_rebuild_nothing_of_training(tiny_project, tmp_path):
    """Editing a test judgment re-evaluates only: the BM25 index, candidates, the teacher fit, its scores, the
    student and the control keep their keys."""
    import shutil

    from esdistill.data import resolve_beir
    from esdistill.pipeline import Project

    project, _ = tiny_project
    beir = tmp_path / "beir"
    shutil.copytree(resolve_beir(project.cfg.data.beir, tmp_path / "x"), beir)
    qrels = (beir / "qrels" / "test.tsv").read_text().splitlines()
    judged = set(project.dataset.test_qrels)
    i = next(i for i, line in enumerate(qrels) if line.split("\t")[0] in judged)
    qrels[i] = qrels[i].rsplit("\t", 1)[0] + "\t2"  # a relevant document becomes highly relevant
    (beir / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    cfg = project.cfg.model_copy(update={"data": project.cfg.data.model_copy(update={"beir": beir})})
    other = Project(cfg, client=project.client)
    assert other.dataset.test_qrels != project.dataset.test_qrels
    assert other.index_key == project.index_key
    for cache in ("_candidates_cache", "_fit_cache", "_teacher_cache", "_train_cache", "_control_cache"):
        assert getattr(other, cache)().key == getattr(project, cache)().key, cache
    assert other._eval_cache().key != project._eval_cache().key  # the report is made again


def test_keys_follow_what_each_stage_reads(tiny_project, tmp_path):
    """The control reads teacher.depth's pairs; the zero-shot index embeds with the effective max length and the
    text fields; the sweep's vectors with deploy.max_length. A query log touches none of the judged stages."""
    from esdistill.config import _deep_merge, build_config
    from esdistill.pipeline import Project

    project, _ = tiny_project
    base = json.loads(project.cfg.model_dump_json())

    def variant(**over):
        return Project(build_config(_deep_merge(base, over), profile="quick"), client=project.client)

    assert variant(teacher={"depth": 4})._control_cache().key != project._control_cache().key
    assert variant(train={"max_length": 40})._deploy_key("zero_shot") != project._deploy_key("zero_shot")
    assert (variant(deploy={"max_length": 40}).keys.sweep_vectors()["max_length"] !=
            project.keys.sweep_vectors()["max_length"])
    log = tmp_path / "log.txt"
    log.write_text("a logged query about smoking\n")
    logged = variant(data={"query_log": str(log)})
    assert logged._candidates_cache().key != project._candidates_cache().key
    assert logged._teacher_cache().key == project._teacher_cache().key  # the judged pairs are not scored again
    assert logged._control_cache().key == project._control_cache().key  # the control does not train again
    assert logged._teacher_cache(judged=False) is not None


def test_evaluate_never_moves_the_alias(tiny_project, es):
    """An operator rolled the student alias back (here: onto another index): evaluating must not point it at
    the configured deploy again."""
    from esdistill.deploy import point_alias

    project, _ = tiny_project
    alias = project.cfg.dense_alias
    live = set(es.indices.get_alias(name=alias).body)
    es.indices.create(index=f"{alias}-rolledback")
    try:
        point_alias(es, alias, f"{alias}-rolledback")
        project.evaluate()
        assert set(es.indices.get_alias(name=alias).body) == {f"{alias}-rolledback"}
    finally:
        point_alias(es, alias, next(iter(live)))
        es.indices.delete(index=f"{alias}-rolledback")


def test_a_dropped_project_is_freed(tiny_project):
    """Per-instance caches: nothing at class level keeps a project (and its frames) alive."""
    import gc
    import weakref

    from esdistill.pipeline import Project

    project, _ = tiny_project
    other = Project(project.cfg, client=project.client)
    other.bm25_weight()
    other.pipeline_weight()
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None


def test_report_is_strict_json(tiny_project):
    project, report = tiny_project

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    json.loads(Path(report["json"]).read_text(), parse_constant=refuse)


def test_show_request_prints_what_an_application_can_send_as_it_is(tiny_project, es, capsys):
    """The printed request — path, body with the real vector, nothing elided — sent as printed, answers exactly
    what the system answers."""
    from esdistill.cli import print_request

    project, _ = tiny_project
    systems = project.systems(served=True)
    text = next(iter(project.eval_queries().values()))
    for name in ("bm25", "student", "hybrid"):
        engine = systems[name]()
        print_request(engine.request(text))
        printed = capsys.readouterr().out
        method, path = printed.splitlines()[0].split(" ", 1)
        payload = printed.split("\n", 1)[1].split("# curl", 1)[0]
        assert "<vector>" not in payload and f"$ESDISTILL_ES_URL{path}" in printed
        if path == "/_msearch":
            lines = [json.loads(x) for x in payload.splitlines() if x.strip()]
            resp = es.msearch(searches=lines).body["responses"]
            got = [[(h["_id"], h["_score"]) for h in r["hits"]["hits"]] for r in resp]
            from esdistill.search import minmax

            ev = project.cfg.evaluate
            assert ev.hybrid_fusion == "minmax" and "min-max" in engine.request(text)["then"]
            got = [d for d, _ in minmax(got, [1 - ev.hybrid_weight, ev.hybrid_weight], size=ev.k)]
        else:
            body = json.loads(payload)
            import requests

            url = es.transport.node_pool.get().base_url  # what an application does: plain HTTP, JSON as printed
            resp = requests.request(method, url + path, json=body, timeout=30).json()
            got = [h["_id"] for h in resp["hits"]["hits"]]
        assert got == [d for d, _ in engine.search(text).hits], name


def test_evaluate_rebuilds_a_bm25_index_another_project_replaced(tiny_project, es):
    """Two projects of one name on one cluster share the BM25 index: evaluating after the other one rebuilt it
    with its corpus must not search that corpus."""
    from esdistill.indexing import create_index, index_meta, load_mapping

    project, _ = tiny_project
    index = project.cfg.bm25_index
    es.indices.delete(index=index)
    create_index(es, index, load_mapping("bm25_index.json"), {"key": "another-projects-corpus", "docs": 0})
    project.evaluate()
    assert index_meta(es, index)["key"] == project.index_key
    assert es.count(index=index).body["count"] == len(project.dataset.corpus)


def test_the_student_is_measured_against_the_pipeline_on_its_own_candidates(tiny_project):
    """The report's agreement: the deployed student reranking each test query's pipeline head (via kNN limited to
    those ids), against the pipeline's order — the same numbers as encoding those documents here."""
    from esdistill.agreement import agreement
    from esdistill.models import load_bi_encoder

    project, report = tiny_project
    data = json.loads(Path(report["json"]).read_text())
    got = data["agreement_with_pipeline"]["student"]
    n = len(project.dataset.test_qrels)
    assert got["queries"] == n and 0.0 <= got["ndcg@10"] <= 1.0 and got["ndcg@10_ci95"][0] <= got["ndcg@10"]
    assert "Agreement with the pipeline on its own candidates" in Path(report["markdown"]).read_text()
    run = json.loads((project._system_cache("pipeline").path("run.json")).read_text())["run"]
    depth = project.cfg.evaluate.rerank_depth
    heads = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:depth]) for q, r in run.items()}
    model = load_bi_encoder(project.student_path(), max_length=project.cfg.train.max_length)
    docs = project.docs(sorted({d for h in heads.values() for d in h}))
    queries = project.eval_queries()
    local = {}
    for q, head in heads.items():
        qv = model.encode([queries[q]], normalize_embeddings=True)[0]
        dv = model.encode([docs[d].full_text for d in head], normalize_embeddings=True)
        local[q] = dict(zip(head, (dv @ qv).tolist(), strict=True))
    mine = agreement(heads, local)
    assert abs(mine["ndcg@10"] - got["ndcg@10"]) < 0.02 and abs(mine["rbo"] - got["rbo"]) < 0.02


def test_the_log_only_student_reads_no_judgment(tmp_path, es, es_url, tiny_models):
    """System log_only: a student distilled from the same teacher with the judgments out of reach — its key and
    its model are the same whatever the training judgments say; it is evaluated beside the others, and its
    agreement with the pipeline is measured."""
    import uuid

    from esdistill.pipeline import Project

    from .conftest import tiny_config

    name = f"t{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path, es_url, tiny_models, name,
                      teacher={"ensemble": [f"bi_encoder:{tiny_models['bi']}", "bm25"]},
                      evaluate={"systems": ["bm25", "pipeline", "student", "log_only"]})
    project = Project(cfg, client=es)
    try:
        report = project.run()
        data = json.loads(Path(report["json"]).read_text())
        assert set(data["systems"]) == {"bm25", "pipeline", "student", "log_only"}
        assert data["agreement_with_pipeline"]["log_only"]["queries"] == data["queries"]
        info = project._log_only_cache().info()
        assert info["judged_pairs"] == 0 and info["use_judgments"] is False
        assert project.log_weights() == [0.5, 0.5]
        # other training judgments: the student's key moves, the log-only student's does not
        other = Project(cfg, client=es)
        qrels = other.dataset.train_qrels
        first = sorted(qrels)[0]
        qrels[first] = {d: 0 for d in qrels[first]}
        assert other.keys.log_only() == project.keys.log_only()
        labels = project.scores_frame(log_only=True)
        assert (labels.source == "bm25").all()  # no judged positive that BM25 missed
        assert other.keys.train() != project.keys.train()
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
