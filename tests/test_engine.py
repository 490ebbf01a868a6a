"""Teacher scoring and corpus embedding on Ray (``[engine] kind = "ray"``, 2 local workers): the same outputs as
the single-process path, the same part files, and the same resumption (a finished chunk is never redone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from esdistill.cache import StageCache
from esdistill.data import Doc
from esdistill.embed import embed_corpus
from esdistill.engine import LocalEngine, RayEngine
from esdistill.teacher import score_candidates

TOPICS = ["malaria vaccine trial", "statin therapy cholesterol", "tumour suppressor p53", "gut bacteria diet",
          "stem cell regeneration", "air pollution asthma", "sleep and memory", "insulin resistance"]


@pytest.fixture(scope="module")
def ray_engine():
    engine = RayEngine(workers=2)
    yield engine
    engine.close()


def _pairs():
    docs, rows, queries = {}, [], {}
    for qi, topic in enumerate(TOPICS):
        queries[f"q{qi}"] = topic
        for di in range(6):
            did = f"q{qi}d{di}"
            docs[did] = Doc(did, f"title {di}", f"study {di} on {topic} with cohort {di * 7}")
            rows.append((f"q{qi}", did, di + 1, float(10 - di)))
    return queries, docs, pd.DataFrame(rows, columns=["qid", "docid", "rank", "bm25"])


def _score(tmp_path, name, engine, tiny_models):
    queries, docs, cands = _pairs()
    cache = StageCache(tmp_path / name, "teacher", {"k": name})
    scorers = {q: tiny_models["ce"] for q in queries}
    info = score_candidates(cands, queries, lambda ids: {d: docs[d] for d in ids}, scorers, cache, 48, 8,
                            chunk_queries=3, engine=engine)
    return info, cache


def test_ray_scores_equal_local_and_resume_by_chunk(tmp_path, tiny_models, ray_engine):
    local, lc = _score(tmp_path, "local", LocalEngine(), tiny_models)
    remote, rc = _score(tmp_path, "ray", ray_engine, tiny_models)
    assert remote["engine"] == "ray" and local["engine"] == "local"
    a = pd.read_parquet(lc.path("scores.parquet")).sort_values(["qid", "docid"]).reset_index(drop=True)
    b = pd.read_parquet(rc.path("scores.parquet")).sort_values(["qid", "docid"]).reset_index(drop=True)
    assert len(a) == len(b) == 48 and (a.docid == b.docid).all()
    np.testing.assert_allclose(a.teacher, b.teacher, rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in lc.path("parts").iterdir()) == sorted(p.name for p in rc.path("parts").iterdir())
    # killed after some chunks: the finished ones are kept, only the missing one is scored again
    parts = sorted(rc.path("parts").iterdir())
    kept = {p.name: p.stat().st_mtime_ns for p in parts[1:]}
    parts[0].unlink()
    rc.path("done.json").unlink()
    again, _ = _score(tmp_path, "ray", ray_engine, tiny_models)
    assert again["scored_now"] == 18  # one chunk: 3 queries × 6 candidates
    assert {p.name: p.stat().st_mtime_ns for p in sorted(rc.path("parts").iterdir())[1:]} == kept


def test_bi_encoder_cosines_encode_each_document_once_across_chunks(tiny_models):
    """The bi-encoder teacher's cosines equal each pair's own encoding; a document met again in a later chunk
    (another query's candidate) comes from the process's vector cache, not a second encoding."""
    from esdistill.engine import run_job
    from esdistill.models import load_bi_encoder

    queries, docs, cands = _pairs()
    shared = docs["q0d0"].full_text  # one document in every query's list
    pairs = [(queries[q], shared if d.endswith("d5") else docs[d].full_text) for q, d in zip(cands.qid, cands.docid)]
    models: dict = {}
    got = np.concatenate([run_job(models, ("cosine", tiny_models["bi"], 48, 8, pairs[i:i + 18]))
                          for i in range(0, len(pairs), 18)])
    cache = models[("cosine", tiny_models["bi"], 48, "vectors")]
    assert len(cache) == len({d for _, d in pairs}) == 48 - len(TOPICS)  # each d5 is q0d0 again
    bi = load_bi_encoder(tiny_models["bi"], max_length=48)
    q = bi.encode([p[0] for p in pairs], normalize_embeddings=True)
    d = bi.encode([p[1] for p in pairs], normalize_embeddings=True)
    np.testing.assert_allclose(got, (q * d).sum(axis=1), atol=1e-5)


def _embed(tmp_path, name, engine, tiny_models, docs):
    cache = StageCache(tmp_path / name, "embed", {"k": name})
    return embed_corpus(tiny_models["bi"], 48, docs, len(docs), cache, 8, engine=engine, chunk_docs=10), cache


def test_ray_embedding_equals_local_in_corpus_order(tmp_path, tiny_models, ray_engine):
    _, docs, _ = _pairs()
    corpus = list(docs.values())
    local, lc = _embed(tmp_path, "local", LocalEngine(), tiny_models, corpus)
    remote, rc = _embed(tmp_path, "ray", ray_engine, tiny_models, corpus)
    assert local["docs"] == remote["docs"] == 48 and local["dims"] == remote["dims"] == 32
    assert lc.path("ids.txt").read_text() == rc.path("ids.txt").read_text() == "\n".join(d.id for d in corpus)
    np.testing.assert_allclose(np.load(lc.path("vectors.npy")).astype(np.float32),
                               np.load(rc.path("vectors.npy")).astype(np.float32), atol=2e-3)
    assert not rc.path("parts").exists(), "the parts are folded into vectors.npy when the stage finishes"


def test_ray_workers_load_carried_and_shipped_models(tmp_path, tiny_models, ray_engine):
    """A model registered in the driver (a bundle's carried copy, under the name the config uses) is loaded by the
    workers from there — they would otherwise take the name for a hub id. And with ``ship`` (a Ray cluster joined
    by address, whose workers may not see this disk) a model folder reaches the workers through Ray's object
    store: the driver's folder is moved away after :meth:`RayEngine.prepare`, and the scores still equal the
    local ones."""
    import shutil

    from esdistill.models import _REGISTERED, register_model

    local, lc = _score(tmp_path, "local", LocalEngine(), tiny_models)
    want = pd.read_parquet(lc.path("scores.parquet")).sort_values(["qid", "docid"]).reset_index(drop=True)

    def scores(name, models):
        _, cache = _score(tmp_path, name, ray_engine, models)
        got = pd.read_parquet(cache.path("scores.parquet")).sort_values(["qid", "docid"]).reset_index(drop=True)
        np.testing.assert_allclose(got.teacher, want.teacher, rtol=1e-4, atol=1e-5)

    register_model("carried-cross-encoder", tiny_models["ce"], "fingerprint-where-the-bundle-was-made")
    try:
        scores("carried", {**tiny_models, "ce": "carried-cross-encoder"})
    finally:
        _REGISTERED.pop("carried-cross-encoder", None)

    copy = tmp_path / "fitted-teacher"
    shutil.copytree(tiny_models["ce"], copy)
    ray_engine.ship = True
    try:
        ray_engine.prepare([str(copy)])
        copy.rename(tmp_path / "gone")  # no worker can read it from this disk now
        scores("shipped", {**tiny_models, "ce": str(copy)})
    finally:
        ray_engine.ship = False


def test_bi_encoder_teacher_progress_counts_texts_encoded(tmp_path, tiny_models):
    """A bi-encoder teacher's bar counts what it encodes — each query and each distinct document once — so the
    time said from its first chunks holds; a cross-encoder's counts pairs. Here every document is shared by
    every query: 8 queries x 6 shared documents are 48 pairs but 8 + 6 texts."""
    from rich.progress import Progress

    queries, docs, cands = _pairs()
    shared = cands.assign(docid="d" + cands.docid.str.split("d").str[-1])  # each query: the same 6 documents
    docs = {f"d{i}": Doc(f"d{i}", f"title {i}", f"study {i} with cohort {i * 7}") for i in range(6)}
    for kind, model, total in (("cosine", tiny_models["bi"], 8 + 6), ("score", tiny_models["ce"], 48)):
        progress = Progress(disable=True)
        cache = StageCache(tmp_path / kind, "teacher", {"k": kind})
        info = score_candidates(shared, queries, lambda ids: {d: docs[d] for d in ids},
                                {q: model for q in queries}, cache, 48, 8, chunk_queries=3, progress=progress,
                                kind=kind)
        (task,) = progress.tasks
        assert info["pairs"] == 48
        assert task.total == total and task.completed == total, (kind, task.total, task.completed)
