"""Document vectors kept on disk across stages (esdistill/vectors.py): what the teacher's bi-encoder member encodes
is read back by a later process — its scoring again, or the pipeline's evaluation — instead of encoded twice, with
the same scores; a store is per model, length and precision; a damaged chunk or an oversized store costs
re-encoding, never a wrong vector."""

from __future__ import annotations

import numpy as np

from esdistill.data import Doc
from esdistill.ensemble import DocumentMemo
from esdistill.engine import LocalEngine, run_job
from esdistill.models import load_bi_encoder
from esdistill.encoding import open_store
from esdistill.vectors import DocumentVectors, text_digest

TOPICS = ["malaria vaccine trial", "statin therapy cholesterol", "tumour suppressor p53", "gut bacteria diet"]


def _pairs():
    docs = [Doc(f"d{i}", f"title {i}", f"study {i} on {t} with cohort {i * 7}") for i, t in enumerate(TOPICS * 3)]
    return [(t, d.full_text) for t in TOPICS for d in docs]  # every query against every document


class Counter:
    """Texts a model's transformer module runs on (a forward hook on the real model: nothing replaced)."""

    def __init__(self, model):
        self.texts = 0
        model[0].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.texts += args[0]["input_ids"].shape[0]


def test_store_round_trip_per_model_length_and_damaged_chunks(tmp_path):
    store = DocumentVectors(tmp_path / "s")
    vecs = np.eye(4, dtype=np.float32)
    store.update(zip([text_digest(t) for t in "abcd"], vecs, strict=True))
    store.update([(text_digest("a"), vecs[1])])  # known: neither replaced nor written again
    again = DocumentVectors(tmp_path / "s")
    assert again.loaded == 4 and len(list((tmp_path / "s").glob("*.npz"))) == 1
    np.testing.assert_array_equal(again[text_digest("a")], vecs[0])
    # a chunk cut short is skipped: its documents count as not kept (encoded again), the others are read
    again.update([(text_digest("e"), vecs[2])])
    newest = sorted((tmp_path / "s").glob("*.npz"))[-1]
    newest.write_bytes(newest.read_bytes()[:20])
    third = DocumentVectors(tmp_path / "s")
    assert text_digest("e") not in third and third.loaded == 4
    # a store over its limit is neither loaded nor extended (the caller's memory cache still works)
    big = DocumentVectors(tmp_path / "s", limit=3)
    assert big.loaded == 0 and not big.persist
    big.update([(text_digest("f"), vecs[3])])
    assert len(list((tmp_path / "s").glob("*.npz"))) == 2


def test_stores_are_separate_per_length(tmp_path, tiny_models):
    a = open_store(tmp_path, tiny_models["bi"], 48)
    b = open_store(tmp_path, tiny_models["bi"], 32)
    assert a.folder != b.folder and a.folder.parent == b.folder.parent == tmp_path
    assert a.folder.name.endswith("-48-fp32") or a.folder.name.endswith("-48-bf16")


def test_teacher_cosines_read_the_work_dirs_vectors_in_a_later_process(tmp_path, tiny_models):
    pairs = _pairs()
    first = LocalEngine(tmp_path / "vectors")
    job = ("cosine", tiny_models["bi"], 48, 8, pairs)
    (_, got), = list(first.map([("t", job)]))
    n_docs = len({d for _, d in pairs})
    (folder,) = (tmp_path / "vectors").iterdir()
    assert DocumentVectors(folder).loaded == n_docs
    # a new engine (another process): the model runs on the queries alone
    models: dict = {}
    model = load_bi_encoder(tiny_models["bi"], max_length=48)
    models[("cosine", tiny_models["bi"], 48)] = model
    counter = Counter(model)
    again = run_job(models, job, tmp_path / "vectors")
    assert counter.texts == len(TOPICS)
    np.testing.assert_allclose(again, got, atol=1e-6)
    live = (model.encode([q for q, _ in pairs], normalize_embeddings=True)
            * model.encode([d for _, d in pairs], normalize_embeddings=True)).sum(axis=1)
    np.testing.assert_allclose(got, live, atol=1e-5)


def test_pipeline_memo_encodes_only_documents_the_store_lacks(tmp_path, tiny_models):
    pairs = _pairs()
    docs = list(dict.fromkeys(d for _, d in pairs))
    run_job({}, ("cosine", tiny_models["bi"], 48, 8, pairs[: len(docs) // 2]), tmp_path)  # the teacher: half
    model = load_bi_encoder(tiny_models["bi"], max_length=48)
    memo = DocumentMemo(model, open_store(tmp_path, tiny_models["bi"], model.max_seq_length))
    missing = memo.missing(docs)
    assert 0 < len(missing) < len(docs)
    counter = Counter(model)
    memo.prefill(docs, batch_size=8)
    assert counter.texts == len(missing) and not memo.missing(docs)
    np.testing.assert_allclose(memo.encode_document(docs), model.encode(docs, normalize_embeddings=True),
                               atol=1e-5)
