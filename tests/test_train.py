"""``train``: a short distillation run with the real MiniLM moves the student toward its teacher."""

import pandas as pd
import pytest
import torch

from esdistill.agreement import agreement
from esdistill.cache import StageCache
from esdistill.config import TrainConfig
from esdistill.data import Doc
from esdistill.models import load_bi_encoder
from esdistill.train import (
    DevSlice, agreement_summary, base_spread, build_examples, dev_evaluator, split_dev, student_scores,
    teacher_agreement, train_student,
)


def synthetic(n_q=6, n_d=8):
    """Queries whose teacher prefers an arbitrary (not lexical) order the base model cannot know."""
    topics = ["malaria vaccine trial", "statin therapy cholesterol", "tumour suppressor p53", "gut bacteria diet",
              "stem cell regeneration", "air pollution asthma"]
    docs, rows, queries = {}, [], {}
    for qi in range(n_q):
        queries[f"q{qi}"] = topics[qi]
        for di in range(n_d):
            did = f"q{qi}d{di}"
            docs[did] = Doc(did, "", f"study {di} on {topics[qi]} with cohort {di * 7} and outcome {di % 3}")
            rows.append((f"q{qi}", did, di + 1, 0.0, float((di * 5) % n_d)))  # teacher order ≠ doc order
    return queries, docs, pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25", "teacher"])


def test_examples_use_judged_positive_and_teacher_negatives():
    queries, docs, scores = synthetic()
    cfg = TrainConfig(negatives=3)
    ex = build_examples(scores, ["q0"], {"q0": {"q0d2": 1}}, cfg)
    assert len(ex) == 1 and ex[0][1] == "q0d2" and len(ex[0][2]) == 3 and "q0d2" not in ex[0][2]
    ex = build_examples(scores, ["q1"], {}, cfg)
    top = scores[scores.qid == "q1"].sort_values("teacher").docid.iloc[-1]
    assert ex[0][1] == top  # no judgment: the teacher's top document is the positive


def test_split_dev_is_stable():
    q = [f"q{i}" for i in range(200)]
    tr, dev = split_dev(q, 0.1)
    assert not set(tr) & set(dev) and len(tr) + len(dev) == 200 and 5 < len(dev) < 40
    assert split_dev(list(reversed(q)), 0.1) == (tr, dev)


def test_student_scores_encode_a_shared_document_once_with_the_scores_of_each_pair(minilm_path):
    queries, docs, scores = synthetic(n_q=3, n_d=5)
    shared = scores.assign(docid=scores.docid.str.replace(r"^q\d", "q0", regex=True))  # every query: q0's documents
    model = load_bi_encoder(minilm_path, 48)
    encoded = []
    encode = model.encode
    model.encode = lambda texts, **kw: (encoded.extend(texts), encode(texts, **kw))[1]
    got = student_scores(model, shared, queries, docs)
    assert len(encoded) == 3 + 5  # three queries and q0's five documents, not 15 pairs
    for qid, g in shared.groupby("qid"):
        q = encode([queries[qid]], normalize_embeddings=True)
        d = encode([docs[x].full_text for x in g.docid], normalize_embeddings=True)
        assert list(got[qid]) == list(g.docid)
        assert got[qid] == pytest.approx(dict(zip(g.docid, (d @ q[0]).tolist(), strict=True)), abs=1e-5)


def test_the_dev_slice_encodes_its_documents_once_for_both_measurements(minilm_path):
    """The IR metrics against the judgments and the agreement with the teacher read the same candidates: one
    measurement encodes each document once (the queries once a metric), with the figures each gives alone."""
    queries, docs, scores = synthetic(n_q=4, n_d=6)
    qrels = {"q0": {"q0d3": 1}, "q1": {"q1d0": 1, "q1d5": 2}}
    dev_q = ["q0", "q1", "q2"]
    dev_scores = scores[scores.qid.isin(dev_q)]
    model = load_bi_encoder(minilm_path, 48)
    ir = dev_evaluator(dev_q, queries, qrels, scores, docs)
    alone_ir, alone_agree = ir(model), teacher_agreement(model, dev_scores, queries, docs)
    dev = DevSlice(ir, dev_scores, queries, docs)
    assert dev.encodings == 18 + 3 + 3  # 18 documents once, the 3 queries for each metric
    encoded = []
    encode = model.encode

    def counting(*args, **kw):  # the IR evaluator passes its texts by keyword (sentence-transformers 5.7: inputs)
        texts = args[0] if args else next(kw[k] for k in ("inputs", "sentences") if k in kw)
        encoded.extend([texts] if isinstance(texts, str) else texts)
        return encode(*args, **kw)

    model.encode = counting
    got_ir, got_agree = dev.measure(model)
    assert len(encoded) == dev.encodings and sorted(t for t in encoded if t.startswith("study")) == sorted(
        docs[d].full_text for d in dev_scores.docid)
    assert got_ir.keys() == alone_ir.keys() and got_agree.keys() == alone_agree.keys()
    for k, v in alone_ir.items():
        assert got_ir[k] == pytest.approx(v, abs=1e-6), k
    for k in ("ndcg@10", "overlap@10", "rbo", "spearman", "pair_accuracy"):
        assert got_agree[k] == pytest.approx(alone_agree[k], abs=1e-6), k
    # the label scale's spread of the base model reads the same measurement's cosines, not a third encoding
    model.encode = encode
    assert base_spread(model, dev_scores, queries, docs, 20.0, cosines=dev.cosines) == pytest.approx(
        base_spread(model, dev_scores, queries, docs, 20.0), abs=1e-5)
    # the evaluator the trainer runs between passes reports both under their names
    metrics = dev.evaluator()(model)
    assert metrics["agreement_ndcg@10"] == pytest.approx(alone_agree["ndcg@10"], abs=1e-6)
    assert metrics["dev_cosine_ndcg@10"] == pytest.approx(alone_ir["dev_cosine_ndcg@10"], abs=1e-6)
    # without judgments (a log-only student): the agreement alone
    assert DevSlice(None, dev_scores, queries, docs).measure(model)[0] == {}


@pytest.mark.parametrize("loss,precision", [("kl", "fp32"), ("kl", "bf16"), ("margin_mse", "auto")])
def test_short_training_moves_student_toward_teacher(tmp_path, minilm_path, loss, precision):
    """In float32 and in bf16 mixed precision alike (``train.precision``: autocast on a CPU too, the weights
    kept and saved in float32)."""
    queries, docs, scores = synthetic()
    cfg = TrainConfig(base_model=minilm_path, negatives=7, epochs=6, learning_rate=1e-4, batch_size=8,
                      max_length=48, dev_fraction=0.0, use_judged_positives=False, loss=loss, precision=precision)
    before = teacher_agreement(load_bi_encoder(minilm_path, 48), scores, queries, docs)
    cache = StageCache(tmp_path, "train", {"t": 1})
    info = train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids}, cache, log=lambda m: None)
    student = load_bi_encoder(info["model"], 48)
    after = teacher_agreement(student, scores, queries, docs)
    assert after["spearman"] > before["spearman"] + 0.1, (before, after)
    assert after["pair_accuracy"] > before["pair_accuracy"]
    if precision != "auto":
        assert info["precision"] == precision
    assert {p.dtype for p in student.parameters()} == {torch.float32}


def test_bf16_training_runs_under_the_trainer_s_autocast_and_the_plan_measures_it(tmp_path, minilm_path):
    """``train.precision = "bf16"`` on a CPU: the trainer's arguments ask for bf16 on the CPU (the trainer's
    CPU autocast), and the plan's speed measurement runs its batches under the same autocast."""
    from sentence_transformers import SentenceTransformerTrainer

    from esdistill.budget import measure_seconds_per_text
    from esdistill.training_args import training_args

    args = training_args(TrainConfig(precision="bf16"), tmp_path)
    assert args.bf16 and (args.use_cpu or torch.cuda.is_available())
    assert not training_args(TrainConfig(precision="fp32"), tmp_path).bf16
    model = load_bi_encoder(minilm_path, 32)
    trainer = SentenceTransformerTrainer(model=model, args=args)
    if not torch.cuda.is_available():
        assert trainer.use_cpu_amp and trainer.amp_dtype == torch.bfloat16
    seen, device = [], "cuda" if torch.cuda.is_available() else "cpu"
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled(device)))
    measure_seconds_per_text(model, ["a short text"] * 4, 2, batches=2, enough=0.0, bf16=True)
    measure_seconds_per_text(model, ["a short text"] * 4, 2, batches=2, enough=0.0)
    hook.remove()
    assert seen[:3] == [True] * 3 and seen[3:] == [False] * 3
    assert all(p.grad is None for p in model.parameters())


def test_agreement_summary_says_when_training_moved_the_student_away_from_its_teacher_and_why():
    teacher = {f"q{i}": {f"d{j}": float(12 - j) for j in range(12)} for i in range(20)}
    reversed_ = {q: {d: -s for d, s in docs.items()} for q, docs in teacher.items()}
    far, near = agreement(teacher, reversed_), agreement(teacher, teacher)

    rose = agreement_summary(far, near, TrainConfig())
    assert f"{far['ndcg@10']:.3f} → 1.000" in rose and "20 queries" in rose and "less" not in rose

    fell = agreement_summary(near, far, TrainConfig())
    assert f"1.000 → {far['ndcg@10']:.3f}" in fell and "train.judged_above_teacher = true" in fell
    kept = agreement_summary(near, far, TrainConfig(judged_above_teacher=False))
    assert "follows its teacher less" in kept and "judged_above_teacher" not in kept
    log_only = agreement_summary(near, far, TrainConfig(use_judgments=False))
    assert "judged_above_teacher" not in log_only
    assert agreement_summary(near, far, TrainConfig(), "train (log only)").startswith("train (log only): agreement")
    assert agreement_summary({}, near, TrainConfig()) is None  # no dev slice, or the control (no teacher)


def test_judged_positive_label_tops_its_list_when_the_teacher_disagrees():
    import numpy as np

    queries, docs, scores = synthetic()
    g = scores[scores.qid == "q0"]
    low = g.sort_values("teacher").docid.iloc[0]  # the teacher's LAST document is the judged one
    ex = build_examples(scores, ["q0"], {"q0": {low: 1}}, TrainConfig(negatives=3))
    labels = ex[0][3]
    assert labels[0] == max(labels[1:]) + np.std(g.teacher.to_numpy())
    tied = build_examples(scores, ["q0"], {"q0": {low: 1}}, TrainConfig(negatives=3, judged_margin=0.0))[0][3]
    assert tied[0] == max(tied[1:]) > float(g.teacher.min())  # margin 0: raised to the best drawn, not above it
    half = build_examples(scores, ["q0"], {"q0": {low: 1}}, TrainConfig(negatives=3, judged_margin=0.5))[0][3]
    assert half[0] == pytest.approx(max(half[1:]) + 0.5 * np.std(g.teacher.to_numpy()))
    kept = build_examples(scores, ["q0"], {"q0": {low: 1}}, TrainConfig(negatives=3, judged_above_teacher=False))
    assert kept[0][3][0] == float(g.teacher.min())  # switched off: the teacher's own score
    top = g.sort_values("teacher").docid.iloc[-1]  # agreement: the teacher's score is kept as it is
    assert build_examples(scores, ["q0"], {"q0": {top: 1}}, TrainConfig(negatives=3))[0][3][0] == float(g.teacher.max())


def test_suspect_negatives_are_counted_and_dropped_on_request():
    """Candidates the teacher scores at or above a judged positive (likely relevant, unjudged) are counted; with
    ``drop`` they never become that positive's negatives, and with nothing else left they are used after all."""
    queries, docs, scores = synthetic()
    g = scores[scores.qid == "q0"].sort_values("teacher")
    mid = g.docid.iloc[3]  # judged; four candidates score above it (the teacher's top is never a negative), three below
    above = set(g.docid.iloc[4:])
    kept_stats, drop_stats = {}, {}
    kept = build_examples(scores, ["q0"], {"q0": {mid: 1}}, TrainConfig(negatives=3, seed=1), stats=kept_stats)
    dropped = build_examples(scores, ["q0"], {"q0": {mid: 1}}, TrainConfig(negatives=3, seed=1,
                                                                           suspect_negatives="drop"), stats=drop_stats)
    assert kept_stats == {"suspect": 3, "dropped": 0} and drop_stats == {"suspect": 3, "dropped": 3}
    assert not set(dropped[0][2]) & above and len(dropped[0][2]) == 3
    assert any(set(build_examples(scores, ["q0"], {"q0": {mid: 1}}, TrainConfig(negatives=3, seed=s))[0][2]) & above
               for s in range(5)), "keep should sample suspects (else the drop above proves nothing)"
    top_judged = g.docid.iloc[-1]
    stats = {}
    build_examples(scores, ["q0"], {"q0": {top_judged: 1}}, TrainConfig(suspect_negatives="drop"), stats=stats)
    assert stats == {"suspect": 0, "dropped": 0}
    low = g.docid.iloc[0]  # everything scores above it: nothing clean is left, so the suspects stay
    stats = {}
    ex = build_examples(scores, ["q0"], {"q0": {low: 1}}, TrainConfig(negatives=3, suspect_negatives="drop"),
                        stats=stats)
    assert stats == {"suspect": 6, "dropped": 0} and len(ex[0][2]) == 3


def test_mnrl_batches_never_hold_two_rows_of_one_query(tmp_path, tiny_models):
    """A query with several judged positives makes several MNRL rows; in one batch each would be the other's
    negative."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from esdistill.config import TrainConfig
    from esdistill.models import load_bi_encoder
    from esdistill.train import training_args

    rows = {"anchor": [], "positive": [], "negative": []}
    for q in range(10):
        for p in range(3):
            rows["anchor"].append(f"query {q}")
            rows["positive"].append(f"relevant {q}-{p}")
            rows["negative"].append(f"negative {q}-{p}")
    data = Dataset.from_dict(rows)
    model = load_bi_encoder(tiny_models["bi"])
    args = training_args(TrainConfig(batch_size=8), tmp_path, mnrl=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model))
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) == 30
    for batch in batches:
        anchors = [data[i]["anchor"] for i in batch]
        assert len(anchors) == len(set(anchors))


def test_labels_are_standardized_per_query_whatever_the_teacher_s_scale():
    """A teacher on any scale (a cross-encoder's logits, a request's _score, an ensemble in any member order)
    gives the same labels: per-query z-scores."""
    import numpy as np

    from esdistill.train import standardize

    _, _, scores = synthetic()
    z = standardize(scores)
    again = standardize(scores.assign(teacher=scores.teacher * 37.0 - 5.0))
    assert np.allclose(z.teacher, again.teacher, atol=1e-5)
    per_q = z.groupby("qid").teacher
    assert np.allclose(per_q.mean(), 0, atol=1e-6) and np.allclose(per_q.std(ddof=0), 1, atol=1e-5)
    assert (z.teacher_unscaled == scores.teacher).all()
    flat = standardize(scores.assign(teacher=1.0))
    assert (flat.teacher == 0).all()  # a query whose teacher scores are all equal: no preference, no NaN


def test_lists_cover_the_teacher_s_head_and_change_every_epoch():
    from collections import Counter

    from esdistill.train import build_lists

    _, _, scores = synthetic(n_q=1, n_d=20)
    cfg = TrainConfig(list_size=5)
    order = list(scores.sort_values("teacher", ascending=False, kind="stable").docid)
    drawn = Counter()
    lists = [build_lists(scores, ["q0"], {}, cfg, epoch=e)[0] for e in range(200)]
    for qid, first, others, labels in lists:
        assert first == order[0] and len(others) == 4  # no judgment: the teacher's top leads its list
        assert labels == sorted(labels, reverse=True)  # labels follow the teacher
        drawn.update(others)
    assert len({tuple(x[2]) for x in lists}) > 20  # drawn anew every epoch
    assert drawn[order[1]] > drawn[order[-1]] > 0  # weighted toward the top, the tail still reachable
    judged = build_lists(scores, ["q0"], {"q0": {order[10]: 1, order[3]: 1}}, cfg, epoch=0)[0]
    assert judged[1] in (order[10], order[3]) and not {order[10], order[3]} & set(judged[2])
    firsts = {build_lists(scores, ["q0"], {"q0": {order[10]: 1, order[3]: 1}}, cfg, epoch=e)[0][1] for e in (0, 1)}
    assert firsts == {order[10], order[3]}  # several judged positives take the lead in turn
    raised = build_lists(scores, ["q0"], {"q0": {order[10]: 1}}, cfg, epoch=0)[0]
    assert raised[3][0] > max(raised[3][1:])  # the judged positive tops its list
    every = build_lists(scores, ["q0"], {}, TrainConfig(list_size="all"))[0]
    assert [every[1], *every[2]] == order


def test_masked_mnrl_never_uses_a_document_judged_relevant_to_the_query_as_its_negative(tiny_models):
    """Row 1's positive is judged relevant to row 0's query too: for row 0 it is masked, and the loss equals
    MNRL's over the other candidates."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from esdistill.train import masked_mnrl

    model = load_bi_encoder(tiny_models["bi"])
    rows = [("qa", "d1", "n1"), ("qb", "d2", "n2"), ("qc", "d3", "n3")]
    qrels = {"qa": {"d1": 1, "d2": 1}, "qb": {"d2": 1}, "qc": {"d3": 1}}
    text = {"qa": "malaria vaccine", "qb": "statin therapy", "qc": "p53 tumour", "d1": "vaccine trial",
            "d2": "statins lower cholesterol", "d3": "tumour suppressor", "n1": "weather", "n2": "music",
            "n3": "football"}
    feats = [model.tokenize([text[r[c]] for r in rows]) for c in range(3)]
    loss = masked_mnrl(model, 20.0, rows, qrels)
    got = loss(feats, torch.tensor([0, 1, 2]))
    assert loss.masked == 1
    with torch.no_grad():
        reps = [model(f)["sentence_embedding"] for f in feats]
        logits = loss.similarity_fct(reps[0], torch.cat(reps[1:])) * 20.0
        logits[0, 1] = float("-inf")
        expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
        plain = MultipleNegativesRankingLoss(model, scale=20.0)(feats, torch.tensor([0, 1, 2]))
    assert torch.isclose(got, expected, atol=1e-5) and not torch.isclose(got, plain, atol=1e-4)


def test_training_records_agreement_after_each_pass_and_can_ignore_judgments(tmp_path, tiny_models):
    """Lists drawn per pass, labels on the base model's scale, the dev agreement measured before training and
    after every pass; with use_judgments = false no judgment is read."""
    queries, docs, scores = synthetic(n_q=6, n_d=8)
    qrels = {q: {f"{q}d3": 1} for q in queries}
    cfg = TrainConfig(base_model=tiny_models["bi"], epochs=2, batch_size=4, max_length=32, dev_fraction=0.34,
                      list_size=4)
    info = train_student(cfg, scores, queries, qrels, lambda ids: {i: docs[i] for i in ids},
                         StageCache(tmp_path, "train", {"t": 1}), log=lambda m: None)
    assert info["passes"] == 2 and len(info["agreement_by_pass"]) == 2
    assert info["judged_pairs"] > 0 and info["label_scale"] > 0
    assert {"ndcg@10", "overlap@10", "rbo", "ndcg@10_ci95"} <= set(info["agreement_after"])
    log_only = train_student(cfg.model_copy(update={"use_judgments": False}), scores, queries, qrels,
                             lambda ids: {i: docs[i] for i in ids}, StageCache(tmp_path, "train", {"t": 2}),
                             log=lambda m: None)
    assert log_only["judged_pairs"] == 0 and log_only["use_judgments"] is False


def test_teacher_positives_are_its_top_with_negatives_below_twice_that_for_unjudged_queries_only():
    from esdistill.train import teacher_rows

    queries, docs, scores = synthetic(n_q=3, n_d=8)
    cfg = TrainConfig(teacher_positives=2, negative_depth=6)
    qrels = {"q0": {"q0d1": 1}, "q1": {"q1d4": 0}}  # q0 judged; q1's only judgment is not relevant
    rows, likely = teacher_rows(scores, list(queries), qrels, cfg)
    assert {q for q, *_ in rows} == set(likely) == {"q1", "q2"}
    for q in ("q1", "q2"):
        order = list(scores[scores.qid == q].sort_values("teacher", ascending=False, kind="stable").docid)
        mine = [r for r in rows if r[0] == q]
        assert [p for _, p, _ in mine] == order[:2] and likely[q] == set(order[:4])
        assert all(n in order[4:6] for *_, n in mine)  # ranks 2N+1 .. negative_depth
    drawn = {tuple(teacher_rows(scores, list(queries), qrels, cfg, epoch=e)[0]) for e in range(6)}
    assert len(drawn) > 1  # negatives drawn anew each pass
    # without MNRL on judged pairs (judged_loss = false) a judged query gets the teacher's rows too
    rows, likely = teacher_rows(scores, list(queries), qrels, cfg.model_copy(update={"judged_loss": False}))
    assert {q for q, *_ in rows} == set(likely) == {"q0", "q1", "q2"}


def test_the_log_only_student_trains_mnrl_on_the_teacher_s_top_and_reads_no_judgment(tmp_path, tiny_models):
    """teacher_positives = auto (the default): the log-only student's MNRL rows are the teacher's rank 1."""
    queries, docs, scores = synthetic(n_q=6, n_d=8)
    qrels = {q: {f"{q}d3": 1} for q in queries}
    cfg = TrainConfig(base_model=tiny_models["bi"], epochs=1, batch_size=4, max_length=32, dev_fraction=0.34,
                      list_size=4, use_judgments=False)
    info = train_student(cfg, scores, queries, qrels, lambda ids: {i: docs[i] for i in ids},
                         StageCache(tmp_path, "train", {"t": 3}), log=lambda m: None)
    assert info["judged_pairs"] == 0 and info["teacher_pairs"] == info["train_queries"] == 4
    judged = train_student(cfg.model_copy(update={"use_judgments": True}), scores, queries, qrels,
                           lambda ids: {i: docs[i] for i in ids}, StageCache(tmp_path, "train", {"t": 4}),
                           log=lambda m: None)
    assert judged["teacher_pairs"] == 0 and judged["judged_pairs"] == 4  # every query is judged: no teacher row


def test_teacher_positives_auto_is_one_for_the_log_only_student_and_keyed_as_that_number():
    from esdistill.stages.keys import train_settings

    assert TrainConfig().teacher_positive_count == 0 and TrainConfig(teacher_positives=2).teacher_positive_count == 2
    log = TrainConfig(use_judgments=False)
    assert log.teacher_positive_count == 1
    assert TrainConfig(use_judgments=False, teacher_positives=0).teacher_positive_count == 0
    # keyed as the number it means: auto's log-only student is the one trained with 1, and the default student's
    # key is the one of before the setting (0 is left out of it)
    assert train_settings(log) == train_settings(TrainConfig(use_judgments=False, teacher_positives=1))
    assert "teacher_positives" not in train_settings(TrainConfig())
    assert train_settings(TrainConfig()) == train_settings(TrainConfig(teacher_positives=0))
    assert train_settings(TrainConfig(use_judgments=False, teacher_positives=0)) != train_settings(log)


def test_rotation_recovers_an_orthogonal_map_and_keeps_cosines():
    import numpy as np

    from esdistill.embedding_distill import rotation

    rng = np.random.default_rng(0)
    student = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    teacher = student @ q.T  # the same geometry in other coordinates
    r = rotation(teacher, student)
    assert np.allclose(teacher @ r, student, atol=1e-8)
    wide = rotation(teacher[:, :8], student)  # a smaller teacher into a larger student: rows stay orthonormal
    assert wide.shape == (8, 16) and np.allclose(wide @ wide.T, np.eye(8), atol=1e-8)


def test_student_copies_the_teacher_member_before_the_ranking_losses(tmp_path, minilm_path, tiny_models):
    """train.embedding_passes: the student moves toward the member's (rotated) embeddings of its training texts;
    the record says how far, and a resumed run reads it back instead of copying again."""
    queries, docs, scores = synthetic(n_q=6, n_d=8)
    cfg = TrainConfig(base_model=minilm_path, epochs=1, batch_size=8, max_length=32, dev_fraction=0.0,
                      use_judged_positives=False, embedding_passes=4)
    cache = StageCache(tmp_path, "train", {"t": 1})
    info = train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids}, cache,
                         log=lambda m: None, member=tiny_models["bi"])
    copied = info["copied_member"]
    assert copied["queries"] == 6 and copied["documents"] == 48 and copied["passes"] == 4
    assert copied["distance_after"] < 0.8 * copied["distance_before"], copied
    with pytest.raises(ValueError, match="bi-encoder member"):
        train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids},
                      StageCache(tmp_path, "train", {"t": 2}), log=lambda m: None)


def test_student_copies_the_teacher_member_inside_the_ranking_batches(tmp_path, minilm_path, tiny_models):
    """train.embedding_copy = "mixed": the copy's rows join the ranking losses' batches (one trainer, one
    optimiser) and still move the student toward the member's rotated embeddings; the log says so with the copy's
    measured training time (no budget here: the estimate still counts it), and the record keeps its rows and
    batches."""
    queries, docs, scores = synthetic(n_q=6, n_d=8)
    cfg = TrainConfig(base_model=minilm_path, epochs=1, batch_size=8, max_length=32, dev_fraction=0.0,
                      use_judged_positives=False, embedding_passes=4, embedding_copy="mixed")
    lines: list[str] = []
    info = train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids},
                         StageCache(tmp_path, "train", {"t": 3}), log=lines.append, member=tiny_models["bi"])
    copied = info["copied_member"]
    assert copied["mixed"] and copied["rows"] == 4 * (6 + 48) and copied["steps"] == -(-copied["rows"] // 8)
    assert info["steps"] > copied["steps"]  # the ranking batches trained beside the copy's
    assert copied["distance_after"] < 0.8 * copied["distance_before"], copied
    assert any("in the ranking losses' batches, ≈ " in line and "of training" in line for line in lines), lines

