"""eland export: the real MiniLM traced by eland (offline, local folder), verified against sentence-transformers,
and the version gates. No Elasticsearch needed: uploading needs an ML node, which the local test build lacks."""

from __future__ import annotations

import json

import pytest

from esdistill.eland_export import (
    MODEL_ID_MAX,
    check_eland_cluster_version,
    check_max_length,
    check_tokenizer,
    check_torch_version,
    model_id_for,
    trace_student,
    verify_traced,
)
from esdistill.errors import ClusterError, ModelError

TEXTS = [
    "What causes type 2 diabetes?",
    "Vitamin D supplementation reduces the risk of fractures in elderly women.",
    "BRCA1 mutations — and café-au-lait spots: naïve résumé of Ünïcödé text, 42% of 3.5 mg/kg!",
    "x",
    # Longer than 128 word pieces: exercises truncation at max_length on both sides.
    " ".join(["Mitochondrial dysfunction in neurons leads to oxidative stress and apoptosis."] * 20),
]


@pytest.fixture(scope="module")
def export(tmp_path_factory, minilm_path):
    return trace_student(minilm_path, tmp_path_factory.mktemp("eland"), max_length=128, name="SciFact Student/quick")


def test_trace_writes_the_three_files(export):
    for path in (export.model_path, export.config_path, export.vocab_path):
        assert path.is_file() and path.stat().st_size > 0, path
    assert export.model_id == "scifact-student-quick"
    assert (export.dims, export.max_length, export.tokenizer_type, export.normalized) == (384, 128, "bert", True)
    body = json.loads(export.config_path.read_text())
    tokenization = body["inference_config"]["text_embedding"]["tokenization"]["bert"]
    assert tokenization["max_sequence_length"] == 128 and tokenization["do_lower_case"] is True
    assert body["inference_config"]["text_embedding"]["embedding_size"] == 384
    assert body["model_type"] == "pytorch" and body["input"] == {"field_names": ["text_field"]}
    assert "/" not in body["description"]  # no local path leaks into the cluster
    assert len(json.loads(export.vocab_path.read_text())["vocabulary"]) == 30522


def test_traced_model_matches_the_student(export, minilm_path):
    assert verify_traced(export, minilm_path, TEXTS) > 0.9999


def test_trace_refuses_to_write_into_the_model_folder(minilm_path):
    from pathlib import Path

    with pytest.raises(ModelError, match="model folder itself"):
        trace_student(minilm_path, Path(minilm_path))


def test_model_id_for():
    assert model_id_for("SciFact Student/quick") == "scifact-student-quick"
    assert model_id_for("__run_1__") == "run_1"
    long_a, long_b = "a" * 80 + "x", "a" * 80 + "y"
    assert len(model_id_for(long_a)) == MODEL_ID_MAX and model_id_for(long_a) != model_id_for(long_b)
    assert all(c.isalnum() or c in "-_" for c in model_id_for("Ünï  côdé!!/run:7"))
    with pytest.raises(ModelError):
        model_id_for("/// !!")


def test_cluster_version_gate():
    from esdistill.config import ES_VERSION

    check_eland_cluster_version(ES_VERSION)
    check_eland_cluster_version("9.2.3-SNAPSHOT")
    with pytest.raises(ClusterError) as err:
        check_eland_cluster_version("8.15.0")
    import eland

    assert "8.15.0" in str(err.value) and eland.__version__ in str(err.value)
    with pytest.raises(ClusterError, match="cannot read a version"):
        check_eland_cluster_version("latest")
    check_eland_cluster_version("8.11.0", serverless=True)


def test_torch_gate_passes_installed_torch():
    import torch

    assert check_torch_version() == torch.__version__


def test_torch_gate_refuses_other_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "2.8.0+cpu")
    with pytest.raises(ModelError, match=r"torch 2\.8\.0\+cpu does not satisfy eland .*torch==2\.7\.1"):
        check_torch_version()


def test_tokenizer_gate(minilm_path, tmp_path):
    assert check_tokenizer(minilm_path) == "BertTokenizer"
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "CanineTokenizer"}')
    with pytest.raises(ModelError, match="CanineTokenizer"):
        check_tokenizer(str(tmp_path))


def test_max_length_gate(minilm_path):
    assert check_max_length(minilm_path, 256) == 256
    with pytest.raises(ModelError, match="limit of 512"):
        check_max_length(minilm_path, 100_000)


# ---------------------------------------------------------------- against the real (ML-less) local cluster
def test_upload_is_refused_clearly_without_ml(es, tiny_models, tmp_path):
    from esdistill.backends import backend_for
    from esdistill.eland_export import trace_student

    export = trace_student(tiny_models["bi"], tmp_path / "tiny-export", 32, name="tiny")
    with pytest.raises(ClusterError, match="has no machine learning"):
        backend_for(es).upload_model(export)


def test_embed_pipeline_is_what_the_cluster_gets(es):
    from elasticsearch import BadRequestError

    from esdistill.cluster_embed import embed_pipeline

    body = embed_pipeline("my-student", ["title", "text"])
    assert [p for p in body["processors"] if "inference" in p][0]["inference"]["model_id"] == "my-student"
    nodes = es.nodes.info(metric="ingest").body["nodes"].values()
    processors = {p["type"] for n in nodes for p in n.get("ingest", {}).get("processors", [])}
    if {"inference", "set", "remove"} <= processors:  # a full cluster: created and read back
        es.ingest.put_pipeline(id="esdistill-test-embed", **body)
        got = es.ingest.get_pipeline(id="esdistill-test-embed").body["esdistill-test-embed"]
        assert got["processors"] == body["processors"]
        es.ingest.delete_pipeline(id="esdistill-test-embed")
    else:  # the minimal test build: refused, and for exactly this reason
        with pytest.raises(BadRequestError, match=r"No processor type exists with name \[(set|inference)\]"):
            es.ingest.put_pipeline(id="esdistill-test-embed", **body)


def test_the_traced_student_passes_every_ml_node_check(export):
    from esdistill.ml_ops import check_model, rules_for

    for version in ("9.2.0", "9.4.0", "9.4.5", "9.5.1"):
        assert check_model(export.model_path, version)["checked"]
    assert rules_for("9.4.2")["scope"] == "all" and rules_for("9.3.0")["allowlist"] is None
    assert check_model(export.model_path, "8.18.0")["checked"] is False  # no check before 8.19 / 9.1


def test_a_model_the_ml_node_would_refuse_is_refused_before_upload(tmp_path):
    """An operation outside ml-cpp's allowlist (aten::sort) is refused from 9.4 on and named; a forbidden one
    (aten::save inside forward) on every version that checks."""
    import torch

    from esdistill.ml_ops import check_model

    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x).values * 2

    path = tmp_path / "sorts.pt"
    torch.jit.trace(Sorts(), torch.rand(4)).save(str(path))
    assert check_model(path, "9.3.0")["checked"]  # 9.3 only refuses a forbidden list
    with pytest.raises(ModelError, match=r"9\.4\.5's ML node would refuse this model \(not on its allowlist: aten::sort"):
        check_model(path, "9.4.5")

    class Saves(torch.nn.Module):
        def forward(self, x):
            torch.save(x, "/tmp/x.pt")
            return x

    scripted = torch.jit.script(Saves())
    scripted.save(str(tmp_path / "saves.pt"))
    with pytest.raises(ModelError, match="forbidden: aten::save"):
        check_model(tmp_path / "saves.pt", "9.2.0")
