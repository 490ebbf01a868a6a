"""The served query encoder (esdistill/query_encoder.py): ONNX exports that match PyTorch, the auto choice,
intra-op threads, and concurrent queries encoded in batches with the vectors each would get alone."""

import threading

import numpy as np
import pytest


@pytest.mark.parametrize("backend,min_cos", [("onnx", 0.9999), ("onnx-int8", 0.95)])
def test_onnx_query_encoder_matches_pytorch(tmp_path, tiny_models, backend, min_cos):
    from esdistill.models import embedding_info, load_bi_encoder
    from esdistill.query_encoder import load_query_encoder

    texts = ["vitamin d and bone density", "smoking raises lung cancer risk", "a"]
    ref = load_bi_encoder(tiny_models["bi"]).encode(texts, normalize_embeddings=True)
    model = load_query_encoder(tiny_models["bi"], backend, tmp_path / "onnx", threads=1)
    got = model.encode(texts, normalize_embeddings=True)
    assert embedding_info(model) == embedding_info(load_bi_encoder(tiny_models["bi"]))
    cos = (ref * got).sum(1)
    assert cos.min() >= min_cos, cos
    assert (tmp_path / "onnx" / "onnx" / "model.onnx").exists()  # exported once, reused by the next load
    # the session runs with the threads asked for
    assert model[0].auto_model.model.get_session_options().intra_op_num_threads == 1
    again = load_query_encoder(tiny_models["bi"], backend, tmp_path / "onnx").encode(texts, normalize_embeddings=True)
    assert np.allclose(again, got, atol=1e-6)


def test_auto_serves_onnx_int8_on_a_cpu_with_the_extra_and_unknown_names_are_refused(tiny_models):
    import torch

    from esdistill.errors import ModelError
    from esdistill.query_encoder import load_query_encoder, onnx_installed, resolve_query_encoder

    assert onnx_installed()  # the test extra brings it
    assert resolve_query_encoder("auto") == ("torch" if torch.cuda.is_available() else "onnx-int8")
    for name in ("torch", "onnx", "onnx-int8"):
        assert resolve_query_encoder(name) == name
    with pytest.raises(ModelError, match="unknown query encoder"):
        load_query_encoder(tiny_models["bi"], "tensorrt")


def test_encoder_threads_follow_this_process_cpu_affinity():
    import os

    from esdistill.query_encoder import encoder_threads

    assert encoder_threads() == len(os.sched_getaffinity(0))
    assert encoder_threads(3) == 3


def test_concurrent_queries_are_encoded_in_batches_with_the_vectors_each_gets_alone(tiny_models):
    from esdistill.models import load_bi_encoder
    from esdistill.query_encoder import BatchingEncoder

    model = load_bi_encoder(tiny_models["bi"])
    texts = [f"query {i} about {'vitamin d ' * (i % 5)}bone density" for i in range(96)]
    alone = {t: model.encode(t, normalize_embeddings=True) for t in texts}
    enc = BatchingEncoder(model, max_batch=16)
    got: dict[str, np.ndarray] = {}
    lock = threading.Lock()

    def worker(w: int) -> None:
        for t in texts[w::8]:
            v = enc.encode(t, normalize_embeddings=True, show_progress_bar=False)
            with lock:
                got[t] = v

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(got) == set(texts)
    for t in texts:
        assert got[t].shape == alone[t].shape
        assert np.allclose(got[t], alone[t], atol=1e-5), t  # padding in a batch leaves masked mean pooling alone
    assert enc.stats["queries"] == 96
    assert enc.stats["batches"] < 96 and 1 < enc.stats["largest"] <= 16, enc.stats
    # a list is answered in order; a query that breaks the model fails its caller, and the encoder goes on
    assert np.allclose(enc.encode(texts[:3]), np.stack([alone[t] for t in texts[:3]]), atol=1e-5)
    with pytest.raises(Exception):
        enc.encode([None])
    assert np.allclose(enc.encode(texts[0]), alone[texts[0]], atol=1e-5)
    enc.close()
    from esdistill.errors import ModelError

    with pytest.raises(ModelError, match="closed"):
        enc.encode(texts[0])
