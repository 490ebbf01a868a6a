"""The user's own Elasticsearch search as the teacher (``teacher.request``), against the real test cluster: a
request whose ``rescore`` reorders BM25's hits gives the candidates and the labels, exactly as a direct search
with the same body does, and is the pipeline at evaluation; bad requests are refused with the cluster's reason."""

from __future__ import annotations

import json
import uuid

import pytest

from esdistill.errors import ClusterError, InputError
from esdistill.request_teacher import RequestSearch, fill, load_request

from .conftest import tiny_config

#: BM25, then its top 20 rescored by a title match (weighted far above the body): a different order than BM25's
RESCORE = {
    "query": {"multi_match": {"query": "{{query}}", "fields": ["title", "text"]}},
    "rescore": {"window_size": 20, "query": {"rescore_query": {"match": {"title": "{{query}}"}},
                                             "query_weight": 0.1, "rescore_query_weight": 10.0}},
}


@pytest.fixture(scope="module")
def request_project(tmp_path_factory, es, es_url, tiny_models):
    from esdistill.pipeline import Project

    root = tmp_path_factory.mktemp("request")
    path = root / "my_search.json"
    path.write_text(json.dumps(RESCORE, indent=2))
    name = f"r{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(root, es_url, tiny_models, name, teacher={"request": str(path)})
    project = Project(cfg, client=es)
    report = project.run()
    yield project, report
    es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def _direct(es, index, text, k):
    body = fill(RESCORE, text) | {"size": k, "_source": False}
    return [(h["_id"], h["_score"]) for h in es.search(index=index, body=body).body["hits"]["hits"]]


def test_candidates_and_labels_are_the_request_s_hits_and_scores(request_project, es):
    project, _ = request_project
    index, k = project.cfg.bm25_index, project.cfg.candidates.k
    frame = project.candidates_frame()
    scores = project.raw_scores_frame()
    reordered = 0
    for qid, text in list(project.train_queries.items())[:8]:
        want = _direct(es, index, text, k)
        got = frame[frame.qid == qid].sort_values("rank")
        assert list(got.docid) == [d for d, _ in want]
        assert got.request.tolist() == pytest.approx([s for _, s in want], rel=1e-6)
        labelled = scores[(scores.qid == qid) & (scores.source == "bm25")].set_index("docid").teacher
        assert [float(labelled[d]) for d, _ in want] == pytest.approx([s for _, s in want], rel=1e-5)
        bm25 = es.search(index=index, query={"multi_match": {"query": text, "fields": ["title", "text"]}},
                         size=k, source=False).body["hits"]["hits"]
        reordered += [h["_id"] for h in bm25] != [d for d, _ in want]
    assert reordered, "the rescore should reorder BM25's hits for some query (else this test proves nothing)"
    assert project.bm25_weight() == 0.0 and project._fit_info() is None
    assert not (project.workdir / "teacher-fit").exists(), "a search request teacher fits nothing"


def test_the_request_s_labels_are_measured_against_plain_bm25(request_project, es):
    """The report compares the user's search with esdistill's plain BM25 on the same judged queries (a search
    no better than BM25 has nothing to distil), not with itself."""
    from esdistill.candidates import bm25_query
    from esdistill.evaluate import metrics

    project, _ = request_project
    quality = project.teacher()["label_quality"]
    qrels, have = project.dataset.train_qrels, set(project.candidates_frame().qid)
    judged = {q: qrels[q] for q in project.train_queries if q in qrels and q in have}
    run = {}
    for q in judged:
        hits = es.search(index=project.cfg.bm25_index, query=bm25_query(project.train_queries[q], ["title", "text"]),
                         size=project.cfg.candidates.k, source=False).body["hits"]["hits"]
        run[q] = {h["_id"]: h["_score"] for h in hits}
    assert quality["queries"] == len(judged) > 0
    assert quality["bm25_ndcg@10"] == pytest.approx(metrics(judged, run)["ndcg@10"], abs=1e-9)
    reqrun = {q: dict(zip(g.docid, g.request)) for q, g in project.candidates_frame().groupby("qid") if q in judged}
    assert quality["teacher_ndcg@10"] == pytest.approx(metrics(judged, reqrun)["ndcg@10"], abs=1e-9)


def test_the_request_is_the_pipeline_at_evaluation(request_project, es):
    project, report = request_project
    assert "pipeline" in report["summary"]["systems"]
    pipeline = project.systems()["pipeline"]()
    for text in list(project.eval_queries().values())[:5]:
        want = _direct(es, project.cfg.bm25_index, text, project.cfg.evaluate.k)
        got = pipeline.search(text).hits
        assert [d for d, _ in got] == [d for d, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6)
    req = pipeline.request("obesity")
    assert req["path"] == f"/{project.cfg.bm25_index}/_search"
    assert req["body"]["rescore"]["query"]["rescore_query"] == {"match": {"title": "obesity"}}


def test_the_request_as_an_ensemble_member_scores_bm25_s_candidates(request_project, es, tiny_models):
    """``ensemble = ["request", "bi_encoder:…", "bm25"]``: the candidates stay BM25's; the member ``request`` is
    the user's search over each query's candidates — the score a direct search gives a document it rescored —
    and the pipeline at evaluation fuses the same three."""
    from esdistill.pipeline import Project

    project, _ = request_project
    members = ["request", f"bi_encoder:{tiny_models['bi']}", "bm25"]
    cfg = project.cfg.model_copy(update={"teacher": project.cfg.teacher.model_copy(update={"ensemble": members})})
    ens = Project(cfg, client=project.client)
    ens.candidates()
    frame = ens.candidates_frame()
    assert "request" not in frame and frame.bm25.notna().all()  # BM25's hits, not the request's
    ens.teacher()
    raw = ens.raw_scores_frame()
    assert raw["m:request"].notna().all()
    window = RESCORE["rescore"]["window_size"]
    compared = 0
    for qid in sorted(raw.qid.unique())[:8]:
        mine = raw[raw.qid == qid].set_index("docid")["m:request"]
        # a document the plain request rescored (its first pass's top window) is rescored among fewer too
        for d, score in _direct(es, project.cfg.bm25_index, ens.train_queries[qid], window):
            if d in mine.index:
                assert float(mine[d]) == pytest.approx(score, rel=1e-5)
                compared += 1
        others = set(mine.index) - {d for d, _ in _direct(es, project.cfg.bm25_index, ens.train_queries[qid], 200)}
        assert all(float(mine[d]) == pytest.approx(float(mine.min())) for d in others)  # not matched: the lowest
    assert compared > 20
    weights = ens.ensemble_weights(None)
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-9
    pipeline = ens.systems()["pipeline"]()
    text = next(iter(ens.eval_queries().values()))
    assert len(pipeline.search(text).hits) == cfg.evaluate.k
    assert ens._member_cache(ens.members()[0], True).key != ens._member_cache(ens.members()[1], True).key


def test_changing_the_request_changes_candidates_not_the_index(request_project, tmp_path):
    from esdistill.pipeline import Project

    project, _ = request_project
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"query": {"match": {"title": "{{query}}"}}}))
    cfg = project.cfg.model_copy(update={"teacher": project.cfg.teacher.model_copy(update={"request": other})})
    p2 = Project(cfg, client=project.client)
    assert p2.index_key == project.index_key
    assert p2._candidates_cache().key != project._candidates_cache().key
    assert p2.keys.scorer() != project.keys.scorer()


def test_a_request_the_cluster_refuses_names_the_file_and_the_reason(es, tmp_path, request_project):
    project, _ = request_project
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"query": {"match": {"text": {"qury": "{{query}}"}}}}))
    rs = RequestSearch(es, project.cfg.bm25_index, load_request(bad), source=str(bad))
    with pytest.raises(ClusterError) as e:
        rs.run({"q1": "obesity"}, 5)
    assert str(bad) in e.value.message and "qury" in e.value.message


def test_stored_templates_are_refused_clearly_without_mustache(es, request_project):
    project, _ = request_project
    rs = RequestSearch(es, project.cfg.bm25_index, template_id="my-template")
    with pytest.raises(ClusterError) as e:
        rs.run({"q1": "obesity"}, 5)
    assert "mustache" in e.value.hint


def test_a_stored_template_is_keyed_on_its_source_and_a_missing_one_is_an_error(es, request_project):
    """A template teacher's key holds the template's source as ``GET _scripts/<id>`` answers it, so an edit of the
    template reaches candidates, labels, student and the pipeline's evaluation. The test build stores no template
    (it has no mustache: ``PUT _scripts`` is refused), so what is checked against it is its answer for a template
    it does not hold — an error naming ``GET _scripts``, before any stage — and the carried description (a
    bundle's) is what the key is made of."""
    from esdistill.config import fingerprint

    project, _ = request_project
    with pytest.raises(Exception) as refused:  # noqa: B017 - the build refuses every stored mustache template
        es.put_script(id="esdistill-tpl", script={"lang": "mustache", "source": {"query": {"match_all": {}}}})
    assert "mustache" in str(refused.value)
    rs = RequestSearch(es, project.cfg.bm25_index, template_id="esdistill-tpl")
    with pytest.raises(ClusterError, match=r"'esdistill-tpl' is not stored in the cluster \(GET _scripts/esdistill-tpl\)"):
        rs.fingerprint()
    one = {"lang": "mustache", "source": '{"query": {"match": {"text": "{{query}}"}}}'}
    edited = {**one, "source": '{"query": {"match": {"title": "{{query}}"}}}'}
    keys = {RequestSearch(es, project.cfg.bm25_index, template_id="tpl",
                          described={"template:tpl": fingerprint(s)}).fingerprint() for s in (one, edited, one)}
    assert len(keys) == 2


def test_what_a_request_names_by_id_is_keyed_or_warned_about(es, request_project):
    """A request body naming a learning-to-rank model, an inference endpoint and a stored script by id: their
    content is not in the body. The test build describes none of them (no ML or inference APIs: 400 "no handler";
    no stored script), so each is named in a warning saying its changes cannot be seen, and the key stays the
    body's. A body that names nothing keeps exactly the key it had before (and asks the cluster nothing)."""
    from esdistill.config import fingerprint
    from esdistill.errors import EsdistillWarning
    from esdistill.request_teacher import named_resources

    project, _ = request_project
    plain = RequestSearch(es, project.cfg.bm25_index, RESCORE)
    assert plain.described() == {} and plain.fingerprint() == fingerprint({"body": RESCORE, "template": None})
    body = {"retriever": {"text_similarity_reranker": {
                "retriever": {"standard": {"query": {"script_score": {
                    "query": {"match": {"text": "{{query}}"}}, "script": {"id": "my-boost"}}}}},
                "field": "text", "inference_id": "my-reranker", "inference_text": "{{query}}"}},
            "rescore": {"window_size": 20, "learning_to_rank": {"model_id": "my-ltr",
                                                               "params": {"query_text": "{{query}}"}}}}
    assert set(named_resources(body)) == {"script:my-boost", "inference:my-reranker", "model:my-ltr"}
    rs = RequestSearch(es, project.cfg.bm25_index, body, source="my_search.json")
    with pytest.warns(EsdistillWarning) as caught:
        key = rs.fingerprint()
    said = " ".join(str(w.message) for w in caught)
    for rid in ("my-boost", "my-reranker", "my-ltr"):
        assert f"{rid!r}" in said
    assert "cannot be part of the cache keys" in said and "no handler" in said
    assert key == fingerprint({"body": body, "template": None})
    rs.fingerprint()  # asked once: no second round of requests or warnings


@pytest.mark.parametrize("text, match", [
    ('{"query": {"match": {"text": "fixed words"}}}', "no \"{{query}}\""),
    ('{"query": {"match": {"text": "{{query}}"}},\n "size": 10,,}', r"bad\.json:2:\d+: not valid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"query": {"match": {"text": "{{query}}"}}, "sort": [{"date": "desc"}]}', '"sort"'),
    ('{"query": {"match": {"text": "{{query}}"}}, "from": 10}', '"from": 10'),
])
def test_bad_request_files_are_refused_with_the_file(tmp_path, text, match):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(InputError, match=match):
        load_request(bad)


def test_config_refuses_a_request_with_a_cross_encoder(tmp_path):
    from esdistill.config import build_config
    from esdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="set one of them"):
        build_config({"workdir": str(tmp_path), "data": {"name": "x", "beir": str(tmp_path)},
                      "teacher": {"request": str(tmp_path / "r.json"), "model": "some/model"}})
