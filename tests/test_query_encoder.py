"""The served query encoder (esdistill/query_encoder.py): ONNX exports that match PyTorch, the auto choice,
intra-op threads, and concurrent queries encoded in batches with the vectors each would get alone."""

import threading

import numpy as np
import pytest


@pytest.mark.parametrize("backend,min_cos", [("onnx", 0.9999), ("onnx-int8", 0.95)])
def test_onnx_query_encoder_matches_pytorch(tmp_path, tiny_models, backend, min_cos):
    from esdistill.models import embedding_info, load_bi_encoder
    from esdistill.query_encoder import ExportedEncoder, load_query_encoder

    texts = ["vitamin d and bone density", "smoking raises lung cancer risk", "a"]
    ref = load_bi_encoder(tiny_models["bi"]).encode(texts, normalize_embeddings=True)
    model = load_query_encoder(tiny_models["bi"], backend, tmp_path / "onnx", max_length=32, threads=1)
    assert isinstance(model, ExportedEncoder) and model.file == ("model_int8.onnx" if backend == "onnx-int8"
                                                                 else "model.onnx")
    batch = model.encode(texts, normalize_embeddings=True)  # one padded batch
    alone = np.stack([model.encode(t) for t in texts])  # one query at a time, as an application encodes
    assert embedding_info(model)[0] == embedding_info(load_bi_encoder(tiny_models["bi"]))[0] == batch.shape[1]
    # a padded batch: the same vectors in fp32; int8 quantises a batch's activations together, so close only
    assert (np.allclose(batch, alone, atol=1e-5) if backend == "onnx" else (batch * alone).sum(1).min() > 0.99)
    cos = (ref * alone).sum(1)
    assert cos.min() >= min_cos, cos
    assert model.max_seq_length == 32 and model.manifest["max_length"] == 32
    assert model.session.get_session_options().intra_op_num_threads == 1  # the threads asked for
    mtime = (tmp_path / "onnx" / "model.onnx").stat().st_mtime_ns  # exported once, reused by the next load
    again = load_query_encoder(tiny_models["bi"], backend, tmp_path / "onnx", max_length=32).encode(texts)
    assert (tmp_path / "onnx" / "model.onnx").stat().st_mtime_ns == mtime
    assert np.allclose(again, batch, atol=1e-6)


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


def test_encoder_threads_and_the_cores_this_process_may_use():
    import os

    from esdistill.query_encoder import encoder_threads, usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
    assert encoder_threads() == 1 and encoder_threads(3) == 3


def test_only_pytorch_batches_concurrent_queries():
    from esdistill.config import EvaluateConfig
    from esdistill.query_encoder import batches, served_encoder_label

    assert batches(EvaluateConfig(query_encoder="torch")) and not batches(EvaluateConfig(query_encoder="torch",
                                                                                          encode_batch=1))
    assert not batches(EvaluateConfig(query_encoder="onnx-int8", encode_batch=32))
    assert "int8" in served_encoder_label(EvaluateConfig()) and "PyTorch" in served_encoder_label(
        EvaluateConfig(query_encoder="torch"))


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
