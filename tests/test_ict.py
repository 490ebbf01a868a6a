"""The teacher from the corpus alone (``teacher.fit.source``): inverse-cloze pairs from the real cluster's BM25,
a listwise fit that never sees a query, labels for every training query, and the judged fit started from it."""

import uuid

import pandas as pd
import pytest

from esdistill.bundle import Bundle, export
from esdistill.candidates import msearch_bm25
from esdistill.config import CorpusFitConfig
from esdistill.data import Doc
from esdistill.ict import PREFIX, masked, sentences
from esdistill.pipeline import Project

from .conftest import tiny_config

DOCS = [Doc("d1", "Title one", "Short. This sentence has well over six words in it. Another sentence is here too "
            "with words."),
        Doc("d2", "", "Tiny. Also tiny."),
        Doc("d3", "T", "Cells divide when the signal arrives at the membrane. Nothing else happens after that point.")]


def test_sentences_are_stable_one_per_document_and_skip_test_queries():
    cfg = CorpusFitConfig(pairs=10)
    first = sentences(DOCS, cfg)
    assert first == sentences(list(reversed(DOCS)), cfg)  # the same corpus gives the same sentences
    assert set(first) == {f"{PREFIX}d1", f"{PREFIX}d3"}  # d2 has no sentence of 6-40 words
    assert all(len(t.split()) >= 6 for t in first.values())
    assert f"{PREFIX}d3" not in sentences(DOCS, cfg, avoid=[first[f"{PREFIX}d3"].upper()])  # a test query's text
    assert len(sentences(DOCS, CorpusFitConfig(pairs=1))) == 1
    assert sentences(DOCS, CorpusFitConfig(pairs=10, seed=7)).keys() == first.keys()


def test_masked_takes_the_sentence_out_and_keeps_the_rest():
    doc = DOCS[2]
    out = masked(doc, "Cells divide when the signal arrives at the membrane.")
    assert out == "T Nothing else happens after that point."
    assert masked(doc, "not in it") == doc.full_text


@pytest.fixture(scope="module")
def corpus_project(tmp_path_factory, es, es_url, tiny_models):
    name = f"i{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path_factory.mktemp("ict"), es_url, tiny_models, name,
                      teacher={"fit": {"source": "corpus", "corpus": {"pairs": 24, "negatives": 2, "batch_size": 8,
                                                                      "max_length": 48}}})
    project = Project(cfg, client=es)
    project.run()
    yield project
    es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_pairs_are_bm25_answers_to_sentences_never_their_own_document(corpus_project, es):
    project = corpus_project
    info = project._ict_pairs_cache().info()
    pairs = pd.read_parquet(project._ict_pairs_cache().path("pairs.parquet"))
    assert info["drawn"] == 24 and info["pairs"] + info["without_negatives"] == 24 and len(pairs) == info["pairs"]
    test_texts = set(project.dataset.test_queries.values())
    direct = msearch_bm25(es, project.cfg.bm25_index, dict(zip(pairs.qid, pairs["query"], strict=True)),
                          project.text_fields, 11)
    docs = project.docs(list(pairs.docid))
    for r in pairs.itertuples():
        assert r.qid == PREFIX + r.docid and r.query not in test_texts
        assert r.query in docs[r.docid].text and r.query not in r.positive  # the rest of the document
        hits = [d for d, _ in direct[r.qid] if d != r.docid][:10]
        assert 1 <= len(r.negatives) <= 2 and set(r.negatives) <= set(hits)  # BM25's neighbours, not itself


def test_corpus_teacher_labels_every_training_query_and_no_judged_fit_runs(corpus_project):
    project = corpus_project
    ict = project._ict_cache()
    assert ict.done and not project._fit_cache().done  # no cross-fit on judgments
    model = str(ict.path("model-full"))
    assert project._fit_info()["models"] == {"full": model} and project.teacher_model() == model
    scores = project.raw_scores_frame()
    assert set(scores.scorer) == {model}  # judged queries too: it never saw any query
    assert set(scores.qid) >= project.judged_qids
    assert project.keys.scorer() == ict.key and project.teacher_id() == f"fit:{ict.key}"
    assert project.teacher_fit()["cached"] is True
    # the labels are this model's logits
    from esdistill.models import load_cross_encoder
    import torch

    row = scores.iloc[0]
    ce = load_cross_encoder(model, max_length=project.cfg.teacher.max_length)
    logit = ce.predict([(project.train_queries[row.qid], project.docs([row.docid])[row.docid].full_text)],
                       activation_fn=torch.nn.Identity())
    assert abs(float(logit[0]) - float(row.teacher)) < 1e-4


def test_keys_move_with_what_they_read(corpus_project, tmp_path, tiny_models, es_url, es):
    name, fit = corpus_project.cfg.data.name, corpus_project.cfg.teacher.fit.model_dump()

    def project(**fit_over):
        return Project(tiny_config(tmp_path, es_url, tiny_models, name, teacher={"fit": {**fit, **fit_over}}),
                       client=es)

    longer = project(corpus={**fit["corpus"], "epochs": 2.0})
    assert longer._ict_pairs_cache().key == corpus_project._ict_pairs_cache().key  # same sentences and negatives
    assert longer._ict_cache().key != corpus_project._ict_cache().key
    assert longer.keys.scorer() != corpus_project.keys.scorer()  # a new scorer: new labels
    more = project(corpus={**fit["corpus"], "pairs": 30})
    assert more._ict_pairs_cache().key != corpus_project._ict_pairs_cache().key
    # the judgments-only fit's key ignores the corpus teacher's settings
    assert project(source="judgments")._fit_cache().key == Project(
        tiny_config(tmp_path, es_url, tiny_models, name), client=es)._fit_cache().key
    assert (project(source="judgments", corpus={**fit["corpus"], "epochs": 2.0})._fit_cache().key
            == project(source="judgments")._fit_cache().key)


def test_judged_fit_starts_from_the_corpus_teacher(tmp_path, es, es_url, tiny_models, corpus_project):
    name = corpus_project.cfg.data.name
    fit = corpus_project.cfg.teacher.fit.model_dump()
    cfg = tiny_config(tmp_path, es_url, tiny_models, name,
                      teacher={"fit": {**fit, "source": "corpus+judgments"}})
    cfg = cfg.model_copy(update={"workdir": corpus_project.cfg.workdir})  # the corpus teacher is there already
    project = Project(cfg, client=es)
    info = project.teacher_fit()
    assert project._ict_cache().key == corpus_project._ict_cache().key
    assert info["base_model"] == str(project._ict_cache().path("model-full"))
    assert set(info["models"]) == {"0", "1", "full"}  # cross-fitted on the judgments as usual
    plain = Project(tiny_config(tmp_path, es_url, tiny_models, name), client=es)
    assert plain._fit_cache().key != project._fit_cache().key
    assert project.keys.scorer() == project._fit_cache().key


def test_bundle_carries_the_pairs_and_the_fit_runs_away_from_the_cluster(tmp_path, corpus_project):
    info = export(corpus_project, tmp_path / "bundle")
    assert "ict-pairs" in info["stages"]
    away = Project(Bundle(tmp_path / "bundle").config(tmp_path / "away"), bundle=Bundle(tmp_path / "bundle"))
    assert away._ict_pairs_cache().key == corpus_project._ict_pairs_cache().key
    assert away.ict_pairs()["cached"] is True  # BM25's negatives came in the bundle: no cluster needed
    assert away._ict_cache().key == corpus_project._ict_cache().key
    assert away._teacher_cache().key == corpus_project._teacher_cache().key
