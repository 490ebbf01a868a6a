"""Teacher ensembles (``teacher.ensemble``): members' scores, the weights chosen on held-out judged queries, the
labels, and the pipeline at evaluation fusing the same members — on the real test cluster."""

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from esdistill.config import build_config
from esdistill.ensemble import Member, choose_weights, fuse_many, heldout_quality, parse, simplex
from esdistill.errors import ConfigError
from esdistill.pipeline import Project
from esdistill.teacher import fuse

from .conftest import tiny_config


def test_members_parse_and_bad_ones_are_named():
    assert parse("fit") == Member("fit", "fit") and parse("bm25").column == "bm25"
    assert parse("bi_encoder:minilm") == Member("bi_encoder:minilm", "bi_encoder", "minilm")
    assert parse("cross_encoder:some/model").column == "m:cross_encoder:some/model"
    assert parse("request") == Member("request", "request") and parse("request").column == "m:request"
    for bad in ("bm42", "cross_encoder", "fit:x"):
        with pytest.raises(ValueError, match="unknown teacher ensemble member"):
            parse(bad)


@pytest.mark.parametrize("teacher, message", [
    ({"ensemble": ["fit", "nope"]}, "unknown teacher ensemble member 'nope'"),
    ({"ensemble": ["fit"]}, "at least two members"),
    ({"ensemble": ["bm25", "fit", "fit"]}, "named twice"),
    ({"ensemble": ["bm25", "bm25 "]}, "unknown"),
    ({"ensemble": ["fit", "bm25"], "bm25_weight": 0.3}, "BM25 is a member"),
    ({"ensemble": ["fit", "bm25"], "model": "x"}, "excludes teacher.model"),
    ({"ensemble": ["request", "bm25"]}, "set teacher.request"),
    ({"ensemble": ["fit", "bm25"], "request": "my.json"}, "not a member"),
    ({"ensemble": ["request", "bm25"], "request_template": "tpl"}, "cannot be the member request"),
    ({"ensemble": ["fit", "bm25"], "ensemble_weights": [1.0]}, "one weight >= 0 per member"),
    ({"ensemble": ["fit", "corpus"], "fit": {"source": "corpus"}}, "the same teacher"),
    ({"ensemble_weights": [1.0, 0.0]}, "ensemble_weights without an ensemble"),
])
def test_bad_ensembles_are_refused_with_the_key(teacher, message):
    with pytest.raises(ConfigError, match=message):  # full: a profile without an ensemble of its own
        build_config({"data": {"name": "x", "beir": "d"}, "teacher": teacher}, profile="full")


def test_weights_alone_fix_the_quick_profiles_ensemble():
    cfg = build_config({"data": {"name": "x", "beir": "d"}, "teacher": {"ensemble_weights": [0.7, 0.3]}},
                       profile="quick")
    assert cfg.teacher.ensemble == ["bi_encoder:bge-small", "bm25"] and cfg.teacher.ensemble_weights == [0.7, 0.3]


def test_simplex_and_fusion():
    grid = simplex(3)
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in grid) and (0.2, 0.3, 0.5) in grid
    t, b = np.array([3.0, 1.0, 2.0, -1.0]), np.array([10.0, np.nan, 4.0, 7.0])
    # two members are today's BM25 blend: (1-w) z(teacher) + w z(bm25)
    assert np.allclose(fuse_many([t, b], [0.7, 0.3], 2.0), fuse(t, b, 0.3, 2.0))
    assert np.allclose(fuse_many([t, b], [1.0, 0.0]), (t - t.mean()) / t.std())


def test_weights_follow_the_member_that_knows():
    # member "good" ranks the relevant document first in every query, "noise" at random: the chosen weights lean
    # on "good" and rank every query right, also where they were chosen on the other half
    rng = np.random.default_rng(0)
    rows, qrels = [], {}
    for q in range(40):
        for d in range(10):
            rows.append((f"q{q}", f"d{d}", d + 1, float(10 - d), 5.0 if d == 7 else rng.normal(), rng.normal(), "bm25"))
        qrels[f"q{q}"] = {"d7": 1}
    frame = pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "m:good", "m:noise", "source"])
    members = [Member("good", "cross_encoder", "g"), Member("noise", "cross_encoder", "n"), Member("bm25", "bm25")]
    chosen = choose_weights(frame, members, qrels)
    w = chosen["weights"]
    assert chosen["ndcg@10"] == 1.0 and chosen["queries"] == 40 and w[0] > w[1] and abs(sum(w) - 1) < 1e-9
    assert chosen["alone"]["good"] == 1.0 and chosen["alone"]["bm25"] < 0.5
    assert heldout_quality(frame, members, qrels)["ndcg@10"] > 0.95
    assert choose_weights(frame, members, qrels, depth=5)["alone"]["good"] == 0.0  # d7 is below BM25's top 5


@pytest.fixture(scope="module")
def ensemble_project(tmp_path_factory, es, es_url, tiny_models):
    name = f"e{uuid.uuid4().hex[:8]}"
    members = ["fit", "corpus", f"bi_encoder:{tiny_models['bi']}", "bm25"]
    cfg = tiny_config(tmp_path_factory.mktemp("ens"), es_url, tiny_models, name,
                      teacher={"ensemble": members,
                               "fit": {"corpus": {"pairs": 24, "negatives": 2, "batch_size": 8, "max_length": 48}}},
                      evaluate={"systems": ["bm25", "pipeline", "student"]})
    project = Project(cfg, client=es)
    report = project.run()
    yield project, report
    es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_every_member_scores_every_pair_and_labels_are_their_weighted_fusion(ensemble_project):
    project, _ = ensemble_project
    assert project._fit_cache().done and project._ict_cache().done  # both fitted teachers, no more
    raw = project.raw_scores_frame()
    members = project.members()
    for m in members:
        assert raw[m.column].notna().all() or m.kind == "bm25"
    # the fit member: each judged query scored by its held-out fold model
    assert (raw["m:fit"] == raw["teacher"]).all()
    # the bi-encoder member: the cosine of query and document
    from esdistill.models import load_bi_encoder

    bi = load_bi_encoder(members[2].model, max_length=project.cfg.teacher.max_length)
    row = raw.iloc[0]
    q, d = bi.encode([project.train_queries[row.qid], project.docs([row.docid])[row.docid].full_text],
                     normalize_embeddings=True)
    assert abs(float(q @ d) - float(row[members[2].column])) < 1e-4
    weights = project.ensemble_weights(None)
    assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-9
    labels = project.scores_frame()
    qid = labels.qid.iloc[0]
    g, lg = raw[raw.qid == qid], labels[labels.qid == qid]
    expect = fuse_many([g[m.column].to_numpy() for m in members], weights, project._label_scale())
    assert np.allclose(lg.teacher.to_numpy(), expect, atol=1e-4)
    info = project._teacher_cache().info()
    assert project.teacher()["cached"] is True and info["stage"] == "teacher"


def test_members_share_the_scores_of_the_same_teacher_alone(ensemble_project, tmp_path, es_url, tiny_models, es):
    project, _ = ensemble_project
    fit = project.cfg.teacher.fit.model_dump()
    alone = Project(tiny_config(tmp_path, es_url, tiny_models, project.cfg.data.name, teacher={"fit": fit}), client=es)
    # the fit member's scores are the single fitted teacher's: same key, one scoring
    assert project._member_cache(parse("fit"), True).key == alone._teacher_cache(True).key
    fixed = Project(tiny_config(tmp_path, es_url, tiny_models, project.cfg.data.name,
                                teacher={"ensemble": project.cfg.teacher.ensemble, "fit": fit,
                                         "ensemble_weights": [0.5, 0.2, 0.1, 0.2]}), client=es)
    assert fixed.keys.scorer() != project.keys.scorer()
    assert fixed.ensemble_weights(3) == [0.5, 0.2, 0.1, 0.2]


def test_pipeline_reranks_with_the_same_members_and_weights(ensemble_project):
    import torch

    from esdistill.models import load_cross_encoder

    project, report = ensemble_project
    assert "pipeline" in json.loads(Path(report["json"]).read_text())["systems"]
    pipe = project.systems()["pipeline"]()
    weights = project.ensemble_weights(project.pipeline_depth())
    assert pipe.reranker.weights == weights
    assert "teacher ensemble" in pipe.request("x")["then"]
    # at evaluation the fit member is the full model (the fold models label training queries only)
    full = load_cross_encoder(project._fit_info()["models"]["full"], max_length=project.cfg.teacher.max_length)
    raw = project.raw_scores_frame()
    bm25 = raw[raw.source == "bm25"]
    checked = 0
    for qid in sorted(project.judged_qids)[:3]:
        g = bm25[(bm25.qid == qid) & (bm25["rank"] <= project.pipeline_depth())].sort_values("rank")
        if len(g) < 2:
            continue
        text, docs = project.train_queries[qid], project.docs(list(g.docid))
        fit = full.predict([(text, docs[d].full_text) for d in g.docid], activation_fn=torch.nn.Identity())
        cols = [fit] + [g[m.column].to_numpy() for m in project.members()[1:]]
        fused = fuse_many(cols, weights)
        expect = list(g.docid.to_numpy()[np.argsort(-fused, kind="stable")])
        got = [d for d, _ in pipe.search(text).hits[: len(g)]]
        assert got == expect
        checked += 1
    assert checked


def test_the_pipeline_ranked_with_documents_encoded_once_is_the_live_pipeline(ensemble_project):
    """``evaluate.pipeline_latency_queries``: every test query ranked with the bi-encoder member's document vectors
    kept across queries gives the live pipeline's ranking; the live pipeline is timed on a stable sample only."""
    import copy

    from esdistill import evaluate as eval_mod

    project, _ = ensemble_project
    pipe = project.systems()["pipeline"]()
    fast = copy.copy(pipe)
    fast.reranker = pipe.reranker.memoized()
    queries = project.eval_queries()
    timed = eval_mod.latency_sample(queries, 3)
    assert len(timed) == 3 and timed == eval_mod.latency_sample(list(reversed(list(queries))), 3)
    live = eval_mod.run_system(pipe, queries)
    sampled = eval_mod.run_system_sampled(pipe, fast, queries, timed)
    for qid in queries:
        got, want = sampled["run"][qid], live["run"][qid]
        assert list(got)[:10] == list(want)[:10], qid
        assert max(abs(got[d] - want[d]) for d in want) < 1e-4
    assert sampled["check"]["timed"] == 3 and not sampled["check"]["top10_differ"]
    # each reranked document was encoded once, over all the queries
    memo = next(model for member, model in fast.reranker.scorers if member.kind == "bi_encoder")
    heads = {d.id for text in queries.values() for d in pipe.retrieve(text)[0]}
    assert len(memo.vectors) == len(heads)
    # latencies only where the live pipeline ran, aligned to the sorted queries
    measured = [q for q, ms in zip(sorted(queries), sampled["wall_ms"], strict=True) if ms == ms]
    assert measured == timed
    summary = eval_mod.summarize({q: project.dataset.test_qrels[q] for q in queries},
                                 {"pipeline": sampled, "bm25": live | {"run": live["run"]}})
    assert summary["systems"]["pipeline"]["latency_ms"]["timed"] == 3
    assert summary["systems"]["pipeline"]["ndcg@10"] == pytest.approx(
        eval_mod.summarize({q: project.dataset.test_qrels[q] for q in queries},
                           {"pipeline": live})["systems"]["pipeline"]["ndcg@10"], abs=1e-6)
    assert "Latency timed on a stable sample" in eval_mod.markdown(summary)


def test_the_evaluate_stage_times_the_pipeline_on_its_sample(ensemble_project):
    project, _ = ensemble_project
    queries = project.eval_queries()
    cfg = project.cfg.model_copy(update={"evaluate": project.cfg.evaluate.model_copy(
        update={"pipeline_latency_queries": 2})})
    other = Project(cfg, client=project.client)
    assert other._system_cache("pipeline").key != project._system_cache("pipeline").key
    assert other._train_cache().key == project._train_cache().key  # nothing of training is redone
    written = other.evaluate()
    report = json.loads(Path(written["json"]).read_text())
    assert report["systems"]["pipeline"]["latency_ms"]["timed"] == 2
    assert f"timed live on 2 of {len(queries)} queries" in report["measured"]["pipeline"]
    assert report["systems"]["bm25"]["latency_ms"]["timed"] == len(queries)
    # the members' own rankings of the same heads, beside the student: BM25's are its scores, the bi-encoder's its
    # cosine, and the pipeline is their fusion
    members = json.loads(other._system_cache("pipeline").path("run.json").read_text())["members"]
    assert list(members) == project.cfg.teacher.ensemble == list(report["pipeline_members"])
    bm25 = json.loads(other._system_cache("bm25").path("run.json").read_text())["run"]
    compared = 0
    for qid, scores in members["bm25"].items():
        assert set(scores) == set(members["fit"][qid]) == set(members[project.members()[2].spec][qid])
        for doc, score in scores.items():
            if doc in bm25.get(qid, {}):
                assert score == pytest.approx(bm25[qid][doc], rel=1e-5)
                compared += 1
    assert compared
    from esdistill.models import load_bi_encoder

    spec = project.members()[2].spec
    qid = next(q for q, s in members[spec].items() if s)
    doc = next(iter(members[spec][qid]))
    bi = load_bi_encoder(project.members()[2].model, max_length=project.cfg.teacher.max_length)
    q, d = bi.encode_query([queries[qid]], normalize_embeddings=True)[0], bi.encode_document(
        [project.docs([doc])[doc].full_text], normalize_embeddings=True)[0]
    assert members[spec][qid][doc] == pytest.approx(float(q @ d), abs=1e-4)
    markdown = Path(written["markdown"]).read_text()
    assert "The pipeline's members alone" in markdown and "The hybrid fuses" not in markdown  # no hybrid here


def test_a_reranker_without_a_bi_encoder_keeps_nothing():
    from esdistill.ensemble import EnsembleReranker

    assert EnsembleReranker([(parse("fit"), object()), (parse("bm25"), None)], [0.5, 0.5]).memoized() is None
