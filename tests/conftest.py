"""Shared fixtures: a REAL local Elasticsearch (started here if none runs on the test port), tiny random-weight
models for mechanics tests, the real MiniLM, and a small deterministic SciFact slice."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "datasets" / "scifact.tar.xz"
TEST_PORT = int(os.environ.get("ESDISTILL_TEST_ES_PORT", "9250"))
#: the local OpenSearch node's HTTP port (its transport port is this + 100), never the Elasticsearch fixture's
TEST_OS_PORT = int(os.environ.get("ESDISTILL_TEST_OS_PORT", "9400"))


@pytest.fixture(scope="session")
def local_settings():
    from esdistill.config import LocalClusterSettings

    return LocalClusterSettings(port=TEST_PORT, heap="768m")


@pytest.fixture(scope="session")
def es(local_settings):
    """A real Elasticsearch on loopback; started for the session (and stopped after) unless already running."""
    from esdistill.cluster import LocalCluster, connect
    from esdistill.config import ClusterSettings

    lc = LocalCluster(local_settings)
    started = False
    if not lc.status().running:
        lc.start()
        started = True
    client = connect(ClusterSettings(url=local_settings.url))
    yield client
    client.close()
    if started and not os.environ.get("ESDISTILL_TEST_KEEP_CLUSTER"):
        lc.stop()


@pytest.fixture(scope="session")
def os_node():
    """A real local OpenSearch (esdistill/opensearch_node.py: k-NN, ml-commons, neural-search) on loopback;
    started for the session (and stopped after, unless ESDISTILL_TEST_KEEP_CLUSTER) unless already running."""
    from esdistill.config import LocalOpenSearchSettings
    from esdistill.opensearch_node import OpenSearchNode

    node = OpenSearchNode(LocalOpenSearchSettings(port=TEST_OS_PORT))
    started = False
    if not node.status().running:
        node.start(timeout=900)  # 2 shared cores under heavy load once needed more than 300 s
        started = True
    yield node
    if started and not os.environ.get("ESDISTILL_TEST_KEEP_CLUSTER"):
        node.stop()


@pytest.fixture(scope="session")
def osc(os_node):
    """An opensearch-py client of the test OpenSearch node."""
    from opensearchpy import OpenSearch

    client = OpenSearch(os_node.url, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def es_url(es, local_settings):
    return local_settings.url


@pytest.fixture
def index_name(es):
    """A fresh index name; the index (and any version of it) is deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    es.indices.delete(index=f"{name}*", ignore_unavailable=True, allow_no_indices=True)


@pytest.fixture(scope="session")
def minilm_path():
    from esdistill.models import resolve

    return resolve("minilm")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, minilm_path):
    """Random-weight 2-layer BERTs (bi-encoder and cross-encoder) with MiniLM's tokenizer: fast mechanics tests."""
    import torch
    from sentence_transformers import SentenceTransformer
    from esdistill.models import st_modules
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    dims = {"vocab_size": tok.vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 512}
    cfg = BertConfig(**dims)
    body = root / "body"
    BertModel(cfg).save_pretrained(body)
    tok.save_pretrained(body)
    bi = root / "bi"
    Transformer, Pooling, Normalize = st_modules("Transformer", "Pooling", "Normalize")
    SentenceTransformer(modules=[Transformer(str(body), max_seq_length=64), Pooling(32), Normalize()]).save(str(bi))
    ce = root / "ce"
    BertForSequenceClassification(BertConfig(**dims, num_labels=1)).save_pretrained(ce)
    tok.save_pretrained(ce)
    return {"bi": str(bi), "ce": str(ce)}


def tiny_config(tmp_path: Path, es_url: str, tiny_models: dict, name: str, **over):
    """A RunConfig over a small SciFact slice with tiny models; ``over`` deep-merges into it."""
    from esdistill.config import _deep_merge, build_config

    values = {
        "workdir": str(tmp_path / "work"),
        "data": {"name": name, "beir": str(SCIFACT), "max_train_queries": 16, "max_test_queries": 10,
                 "max_corpus_docs": 120},
        "cluster": {"url": es_url},
        "candidates": {"k": 8},
        "teacher": {"max_length": 48, "batch_size": 32,
                    "fit": {"base_model": tiny_models["ce"], "folds": 2, "negatives": 2, "negative_depth": 8,
                            "epochs": 1, "max_length": 48, "batch_size": 16}},
        "train": {"base_model": tiny_models["bi"], "negatives": 2, "epochs": 1, "max_length": 48, "batch_size": 8,
                  "dev_fraction": 0.2},
        "deploy": {"batch_size": 64},
        "evaluate": {"rerank_depth": 8, "k": 20, "num_candidates": 50},
    }
    return build_config(_deep_merge(values, over), profile="quick")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, es, es_url, tiny_models):
    """The whole loop (index → evaluate) run once on a small slice with tiny models; tests inspect it."""
    from esdistill.pipeline import Project

    name = f"t{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path_factory.mktemp("proj"), es_url, tiny_models, name)
    project = Project(cfg, client=es)
    report = project.run()
    yield project, report
    es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
