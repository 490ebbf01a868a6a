"""``teacher`` stage: cross-fitting, cache hits, resume from chunks, raw logits."""

import pandas as pd
import pytest

from esdistill.teacher import FULL, assign_scorers, fold_of


def test_second_teacher_run_scores_nothing(tiny_project):
    project, _ = tiny_project
    info = project.teacher()
    assert info["cached"] is True
    cache = project._teacher_cache()
    # an interrupted run (no done.json, all chunk files present) resumes and scores nothing new
    (cache.dir / "done.json").unlink()
    info = project.teacher()
    assert info["scored_now"] == 0 and info["pairs"] == len(pd.read_parquet(cache.path("scores.parquet")))


def test_every_candidate_and_judged_positive_is_scored(tiny_project):
    project, _ = tiny_project
    scores = project.raw_scores_frame()
    cands = project.candidates_frame()
    have = set(zip(scores.qid, scores.docid, strict=True))
    assert set(zip(cands.qid, cands.docid, strict=True)) <= have
    for q, docs in project.dataset.train_qrels.items():
        assert all((q, d) in have for d, g in docs.items() if g > 0)
    assert scores.teacher.notna().all()
    # raw logits (not sigmoid probabilities): recompute a few pairs directly with their scorer
    import torch

    from esdistill.models import load_cross_encoder

    row = scores.iloc[:3]
    model = load_cross_encoder(row.scorer.iloc[0], max_length=project.cfg.teacher.max_length)
    texts = project.docs(list(row.docid))
    pairs = [(project.dataset.train_queries[q], texts[d].full_text) for q, d in zip(row.qid, row.docid, strict=True)]
    logits = model.predict(pairs, activation_fn=torch.nn.Identity())
    same = row[row.scorer == row.scorer.iloc[0]]
    assert abs(float(logits[0]) - float(same.teacher.iloc[0])) < 1e-4
    assert abs(float(torch.sigmoid(torch.tensor(logits[0]))) - float(same.teacher.iloc[0])) > 1e-3


def test_cross_fit_no_query_is_labelled_by_a_model_fit_on_it(tiny_project):
    project, _ = tiny_project
    info = project._fit_cache().info()
    folds, models = info["folds"], info["models"]
    k = project.cfg.teacher.fit.folds
    assert set(models) == {*map(str, range(k)), FULL}
    scores = project.raw_scores_frame()
    for qid, scorer in scores.groupby("qid").scorer.first().items():
        if qid in folds:
            assert fold_of(qid, k) == folds[qid]
            assert scorer == models[str(folds[qid])]  # the held-out fold's model, never FULL
        else:
            assert scorer == models[FULL]


def test_assign_scorers_with_a_ready_reranker():
    assert assign_scorers(["a", "b"], None, "my/reranker") == {"a": "my/reranker", "b": "my/reranker"}


def test_label_quality_compares_teacher_order_with_bm25():
    from esdistill.teacher import label_quality

    rows = [("q1", "a", 1, 3.0, 0.1, "bm25"), ("q1", "b", 2, 2.0, 0.9, "bm25"), ("q1", "c", 3, 1.0, 0.5, "bm25"),
            ("q2", "y", 1, 3.0, 0.0, "bm25"), ("q2", "x", 2, 2.0, 1.0, "bm25")]
    scores = pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "teacher", "source"])
    q = label_quality(scores, {"q1": {"b": 1}, "q2": {"x": 1}})
    import math

    # the teacher puts the relevant doc first in both queries; BM25 second in both
    assert q["teacher_ndcg@10"] == pytest.approx(1.0)
    assert q["bm25_ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert q["queries"] == 2
    assert label_quality(scores, {}) is None


def _frame(rows):
    return pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "teacher", "source"])


def test_fuse_weight_zero_keeps_logits_and_one_is_bm25_order():
    import numpy as np

    from esdistill.teacher import fuse

    t, b = np.array([5.0, -1.0, 2.0]), np.array([1.0, 3.0, np.nan])
    assert fuse(t, b, 0.0).tolist() == t.tolist()
    # weight 1: BM25's order, and the document BM25 did not return gets the query's lowest BM25 score
    f1 = fuse(t, b, 1.0)
    assert f1[1] > f1[0] == f1[2]
    half = fuse(t, b, 0.5, scale=2.0)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    assert half == pytest.approx(2.0 * (0.5 * z(t) + 0.5 * z(np.array([1.0, 3.0, 1.0]))))


def test_auto_weight_follows_whichever_ranks_the_judged_docs_better():
    from esdistill.teacher import choose_bm25_weight, fuse_frame

    # the teacher is right in both queries, BM25 wrong: weight 0
    good_teacher = _frame([("q1", "a", 1, 3.0, 0.1, "bm25"), ("q1", "b", 2, 2.0, 0.9, "bm25"),
                           ("q1", "c", 3, 1.0, 0.5, "bm25"), ("q2", "y", 1, 3.0, 0.0, "bm25"),
                           ("q2", "x", 2, 2.0, 1.0, "bm25")])
    qrels = {"q1": {"b": 1}, "q2": {"x": 1}}
    assert choose_bm25_weight(good_teacher, qrels)["weight"] == 0.0
    # a collapsed teacher (BM25 right): the weight moves to BM25
    bad_teacher = good_teacher.assign(bm25=[1.0, 3.0, 2.0, 1.0, 3.0], teacher=[0.5, 0.0, 0.2, 0.3, 0.0])
    chosen = choose_bm25_weight(bad_teacher, qrels)
    assert chosen["weight"] > 0.5 and chosen["ndcg@10"][1.0] == pytest.approx(1.0)
    fused = fuse_frame(bad_teacher, 1.0)
    assert fused.teacher_raw.tolist() == bad_teacher.teacher.tolist()
    for _, g in fused.groupby("qid"):  # the fused label orders each query as BM25 does
        assert g.sort_values("teacher").docid.tolist() == g.sort_values("bm25").docid.tolist()
    assert choose_bm25_weight(good_teacher, {})["weight"] is None


def test_listwise_rows_group_each_positive_with_its_negatives():
    from esdistill.teacher import listwise_rows

    frame = pd.DataFrame({"query": ["q", "q", "q", "r", "r"], "document": ["P", "n1", "n2", "R", "m1"],
                          "label": [1.0, 0.0, 0.0, 1.0, 0.0]})
    rows = listwise_rows(frame, 2)
    assert rows.to_dict("records") == [
        {"query": "q", "positive": "P", "negative_0": "n1", "negative_1": "n2"},
        {"query": "r", "positive": "R", "negative_0": "m1", "negative_1": "m1"},  # padded by repeating
    ]


def test_unjudged_queries_do_not_refit_the_teacher(tmp_path, es_url, tiny_models):
    """A query log or pseudo-queries change the candidates (more queries to label) but not the teacher fit,
    which reads only the judged queries' candidates."""
    from esdistill.pipeline import Project

    from .conftest import tiny_config

    log = tmp_path / "log.txt"
    log.write_text("a logged query about cancer\n")
    plain = Project(tiny_config(tmp_path / "a", es_url, tiny_models, "keys"))
    more = Project(tiny_config(tmp_path / "b", es_url, tiny_models, "keys",
                               data={"query_log": str(log), "pseudo_queries": 3}))
    assert more._candidates_cache().key != plain._candidates_cache().key
    assert more._fit_cache().key == plain._fit_cache().key
    refit = Project(tiny_config(tmp_path / "c", es_url, tiny_models, "keys", teacher={"fit": {"epochs": 2}}))
    assert refit._fit_cache().key != plain._fit_cache().key


def test_listwise_fit_never_batches_two_rows_of_one_query(tmp_path, tiny_models):
    """Several judged positives of one query make several rows: in one batch, each would be the other's in-batch
    negative. The fit's batches keep them apart."""
    from esdistill.config import TeacherFitConfig
    from esdistill.teacher import fit_trainer

    rows = []
    for q in range(12):
        for p in range(3):  # three relevant documents per query
            rows.append((f"q{q}", f"p{q}-{p}", 1.0))
            rows += [(f"q{q}", f"n{q}-{p}-{n}", 0.0) for n in range(2)]
    frame = pd.DataFrame(rows, columns=["qid", "docid", "label"])
    frame["query"] = "query " + frame.qid
    frame["document"] = "document " + frame.docid
    cfg = TeacherFitConfig(base_model=tiny_models["ce"], negatives=2, batch_size=8, max_length=32)
    trainer = fit_trainer(frame, cfg, tmp_path)
    data = trainer.train_dataset
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) == len(data) == 36
    for batch in batches:
        queries = [data[i]["query"] for i in batch]
        assert len(queries) == len(set(queries))


def test_listwise_fit_masks_other_queries_judged_documents(tmp_path, tiny_models):
    """Query A's judged-relevant document d is also query B's positive: in a batch holding both rows, d must
    never be A's in-batch negative (it was, before the mask: another query's positive is the loss's negative).
    Every in-batch negative drawn for a row is checked against that row's judgments; the loss counts the masking."""
    import torch

    from esdistill.config import TeacherFitConfig
    from esdistill.teacher import fit_trainer

    qrels = {f"q{q}": {f"p{q}": 1} for q in range(6)}
    for q in range(6):  # each query also judges the next query's positive relevant (capped away from its rows)
        qrels[f"q{q}"][f"p{(q + 1) % 6}"] = 1
    rows = []
    for q in range(6):
        rows.append((f"q{q}", f"p{q}", 1.0))
        rows += [(f"q{q}", f"n{q}-{n}", 0.0) for n in range(2)]
    frame = pd.DataFrame(rows, columns=["qid", "docid", "label"])
    frame["query"] = "query " + frame.qid
    frame["document"] = "document " + frame.docid
    relevant_to = {f"query q{q}": {f"document {d}" for d in qrels[f"q{q}"]} for q in range(6)}
    cfg = TeacherFitConfig(base_model=tiny_models["ce"], negatives=2, batch_size=6, max_length=32)
    anchors = list(frame[frame.label > 0]["query"])
    columns = [list(frame[frame.label > 0].document)] + [
        [frame[(frame.qid == f"q{q}") & (frame.label == 0)].document.iloc[i] for q in range(6)] for i in range(2)]

    def false_negatives(loss) -> int:
        torch.manual_seed(0)
        drawn = list(loss.get_in_batch_negatives(anchors, columns))
        return sum(col[a] in relevant_to[anchors[a]] for col in drawn for a in range(len(anchors)))

    every = cfg.model_copy(update={"in_batch_negatives": 100})  # more than the batch holds: all of them
    masked_trainer = fit_trainer(frame, every, tmp_path / "b", qrels=qrels)
    unmasked_trainer = fit_trainer(frame, every, tmp_path / "c")
    assert false_negatives(unmasked_trainer.loss) == 6  # every query meets its other judged document
    assert false_negatives(masked_trainer.loss) == 0
    assert masked_trainer.loss.masked == 6
    drawn = list(masked_trainer.loss.get_in_batch_negatives(anchors, columns))
    assert len(drawn) == len(columns) * len(anchors) - len(columns)  # the width is kept (clean ones repeated)
    sampled = fit_trainer(frame, cfg.model_copy(update={"in_batch_negatives": 3}), tmp_path / "d", qrels=qrels)
    for _ in range(20):
        assert false_negatives(sampled.loss) == 0


def testjudged_candidates_scale_linearly():
    """20,000 judged queries x 10 candidates: a set rebuilt per judgment made this take minutes (hours at real
    sizes); built once it takes well under a second. The bound is loose: it only catches the quadratic form."""
    import time

    from esdistill.teacher import judged_candidates

    n = 20_000
    scores = pd.DataFrame({"qid": [f"q{i // 10}" for i in range(n * 10)], "docid": [f"d{i}" for i in range(n * 10)],
                           "rank": [i % 10 + 1 for i in range(n * 10)], "source": "bm25"})
    qrels = {f"q{i}": {f"d{i * 10}": 1} for i in range(n)}
    t0 = time.perf_counter()
    judged, sub = judged_candidates(scores, qrels)
    assert len(judged) == n and len(sub) == n * 10
    assert time.perf_counter() - t0 < 20


def test_auto_weight_is_chosen_at_the_depth_it_is_applied():
    """z-scores over a query's top 2 are not those over its top 4: the weight is chosen on the lists the
    pipeline fuses at evaluation."""
    from esdistill.teacher import choose_bm25_weight

    # the teacher ranks the relevant doc first within the top 2, but a low-ranked outlier distorts its z-scores
    # over the top 4
    rows = [("q1", "a", 1, 4.0, 0.0, "bm25"), ("q1", "b", 2, 3.9, 1.0, "bm25"), ("q1", "c", 3, 1.0, 9.0, "bm25"),
            ("q1", "d", 4, 0.5, 9.5, "bm25")]
    scores = _frame(rows)
    qrels = {"q1": {"b": 1}}
    at2 = choose_bm25_weight(scores, qrels, depth=2)
    at4 = choose_bm25_weight(scores, qrels)
    assert at2["depth"] == 2 and at2["ndcg@10"][at2["weight"]] == pytest.approx(1.0)
    assert at2["ndcg@10"] != at4["ndcg@10"]


def test_heldout_fusion_quality_chooses_the_weight_on_the_other_half():
    from esdistill.teacher import heldout_fusion_quality

    rows, qrels = [], {}
    for q in range(12):
        rows += [(f"q{q}", "a", 1, 3.0, 0.0, "bm25"), (f"q{q}", "b", 2, 2.0, 1.0, "bm25")]
        qrels[f"q{q}"] = {"b": 1}  # the teacher is right everywhere: both halves choose weight 0
    out = heldout_fusion_quality(_frame(rows), qrels)
    assert out["weights"] == [0.0, 0.0] and out["teacher_ndcg@10"] == pytest.approx(1.0) and out["queries"] == 12


def test_a_fold_killed_while_saving_is_fitted_again(tmp_path, es, es_url, tiny_models):
    """config.json is written before the weights: a folder holding it alone is not a finished fold model."""
    import uuid

    from esdistill.models import load_cross_encoder
    from esdistill.pipeline import Project
    from esdistill.teacher import COMPLETE

    from .conftest import tiny_config

    name = f"f{uuid.uuid4().hex[:8]}"
    project = Project(tiny_config(tmp_path, es_url, tiny_models, name), client=es)
    try:
        cache = project._fit_cache()
        (cache.path("model-0")).mkdir()
        (cache.path("model-0") / "config.json").write_text("{}")
        info = project.teacher_fit()
        assert (cache.path("model-0") / COMPLETE).exists()
        load_cross_encoder(info["models"]["0"])  # a complete model, weights included
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_capped_positives_are_never_used_as_negatives():
    """NFCorpus judges ~42 documents a query: with a cap, the relevant documents left out of training must not
    turn into its negatives."""
    from esdistill.config import TrainConfig
    from esdistill.data import Doc
    from esdistill.teacher import fit_pairs
    from esdistill.train import build_examples

    qrels = {"q": {f"p{i}": 1 for i in range(5)}}
    cands = pd.DataFrame({"qid": "q", "docid": [f"p{i}" for i in range(5)] + [f"n{i}" for i in range(5)],
                          "rank": range(1, 11)})
    docs = lambda ids: {i: Doc(i, "", i) for i in ids}  # noqa: E731
    rows = fit_pairs(["q"], {"q": "query"}, qrels, cands, docs, negatives=4, negative_depth=10, seed=0,
                     max_positives=2)
    assert (rows.label == 1).sum() == 2
    assert not rows[rows.label == 0].docid.str.startswith("p").any()
    scores = cands.assign(teacher=[10.0 - r for r in cands["rank"]])
    examples = build_examples(scores, ["q"], qrels, TrainConfig(negatives=3), max_positives=2)
    assert len(examples) == 2
    assert all(not n.startswith("p") for _, _, negs, _ in examples for n in negs)
