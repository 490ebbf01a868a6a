"""A sentence-transformers model served by OpenSearch's ml-commons: TorchScript zip, register, deploy, ``_predict``.

:func:`torchscript_zip` traces a local sentence-transformers folder into the zip ml-commons loads for a
``TORCH_SCRIPT`` ``TEXT_EMBEDDING`` model with ``framework_type`` ``sentence_transformers``: the traced module takes
one dict (``input_ids``, ``attention_mask``) and returns ``{"sentence_embedding": …}`` (the model's own pooling and
normalisation inside), and ``tokenizer.json`` beside it (ml-commons tokenizes with it, through DJL). The traced
module is checked against ``SentenceTransformer.encode`` before the zip is written, one unpadded text at a time, as
ml-commons runs it.

:func:`register` + :func:`deploy` put it into the cluster: by default in ``upload_chunk`` requests (any cluster, the
managed services included), or from a ``file://`` URL that the node reads itself (the file must be readable by the
node's process, and ``plugins.ml_commons.allow_registering_model_via_url`` must be on — the local node of
:mod:`esdistill.opensearch_node` has it on and :meth:`OpenSearchNode.share_file` puts a file where it can read
it). :func:`predict` asks ``_predict``; :func:`verify_predict` compares its vectors with sentence-transformers' and
refuses a model whose cosine falls below :data:`MIN_COSINE`, before anything is served.

Requests go through the client's ``transport.perform_request`` (any ``opensearch-py`` client), so the module needs
no ml-commons-specific client API. torch and sentence-transformers are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ClusterError, ModelError

#: Smallest cosine between ``_predict`` and ``SentenceTransformer.encode`` accepted for a served model.
MIN_COSINE = 0.9999
#: ml-commons settings that refuse a custom model while they are off (named in the refusal's message).
_REFUSING_SETTINGS = ("allow_registering_model_via_local_file", "allow_registering_model_via_url")
#: The traced module's name inside the zip.
MODEL_FILE = "model.pt"
#: Texts the traced module and the deployed model are checked on (different lengths: the trace must generalise).
SAMPLE = ["hello world", "What is the effect of vitamin D on bone density in older adults?",
          "the quick brown fox jumps over the lazy dog", "BRCA1 mutations"]


@dataclass(frozen=True)
class TorchScriptZip:
    """A zip ml-commons can register: its path, SHA-256 (``model_content_hash_value``), the vector size and the
    Hugging Face ``model_type`` of the transformer."""

    path: Path
    sha256: str
    dims: int
    model_type: str
    max_diff: float  #: largest difference between the traced module and sentence-transformers on :data:`SAMPLE`


def torchscript_zip(model_dir: str | Path, out_dir: Path, max_length: int | None = None,
                    sample: list[str] | None = None) -> TorchScriptZip:
    """Trace the sentence-transformers model at ``model_dir`` and write ``<out_dir>/<name>.zip`` (module +
    ``tokenizer.json``, truncating at ``max_length``, default the model's ``max_seq_length``)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from .encoder_export import _st_parts, _tokenizer_json

    sample = sample or SAMPLE
    st = SentenceTransformer(str(model_dir), device="cpu").eval()
    transformer, _ = _st_parts(st)
    max_length = max_length or st.max_seq_length or 512

    class Wrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.st = model

        def forward(self, input1: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = self.st({"input_ids": input1["input_ids"], "attention_mask": input1["attention_mask"]})
            return {"sentence_embedding": out["sentence_embedding"]}

    enc = st.tokenizer(sample[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's warnings about constants and Python booleans: the check below is what decides
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(Wrapped(st).eval(),
                                 ({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},),
                                 strict=False, check_trace=False)
        ref = st.encode(sample, convert_to_tensor=True, batch_size=1)
        got = []
        for text in sample:  # one unpadded text at a time, as ml-commons calls it
            e = st.tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            got.append(traced({"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]})
                       ["sentence_embedding"][0])
        got = torch.stack(got)
    max_diff = float((got - ref).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(got, ref, dim=1).min())
    if cos < MIN_COSINE:
        raise ModelError(f"the TorchScript trace of {model_dir} does not reproduce sentence-transformers "
                         f"(cosine {cos:.6f} < {MIN_COSINE}, max difference {max_diff:.2e})",
                         hint="only Transformer + Pooling (+ Normalize) models trace this way")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(str(model_dir).rstrip("/")).name or "model"
    path = out_dir / f"{name}-torchscript.zip"
    tmp = out_dir / f".{path.name}.tmp"
    traced_file = out_dir / f".{name}.{MODEL_FILE}"
    traced.save(str(traced_file))
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(traced_file, MODEL_FILE)
            zf.writestr("tokenizer.json", _tokenizer_json(st, max_length))
        tmp.replace(path)
    finally:
        traced_file.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TorchScriptZip(path, digest, int(ref.shape[1]), transformer.auto_model.config.model_type, max_diff)


# ------------------------------------------------------------------------------------------------- cluster
def _request(client, method: str, path: str, body: dict | bytes | None = None, what: str = "",
             headers: dict | None = None) -> dict:
    from opensearchpy import exceptions as os_exc

    try:
        return client.transport.perform_request(method, path, body=body, headers=headers)
    except os_exc.TransportError as e:
        status = e.status_code if isinstance(e.status_code, int) else "no answer"
        text = str(e.info)
        raise ClusterError(f"{what or path} failed ({status}): {text[:600]}", hint=setting_hint(text)) from None


#: (what ml-commons says, the setting that causes it, the value that lifts it, why) for refusals a setting lifts
_SETTING_CAUSES = (
    ("No eligible node found", "only_run_on_ml_node", "false",
     "the cluster has no node with the `ml` role and runs models only there"),
    ("only_run_on_ml_node", "only_run_on_ml_node", "false",
     "the cluster has no node with the `ml` role and runs models only there"),
    ("Memory Circuit Breaker", "native_memory_threshold", "100",
     "the nodes' memory use is above ml-commons' circuit breaker (also plugins.ml_commons.jvm_heap_memory_threshold)"),
    ("model_access_control", "model_access_control_enabled", "false",
     "model access control asks for a model group with backend roles"),
)


def setting_hint(text: str) -> str | None:
    """What to change when ml-commons refuses with ``text`` for a reason one of its settings decides: the setting
    (``plugins.ml_commons.*``) and the request that changes it; None for other refusals."""
    setting = next((s for s in _REFUSING_SETTINGS if s in text), None)
    if setting:
        return (f"the cluster refuses it while plugins.ml_commons.{setting} is off: turn it on (PUT "
                f'_cluster/settings {{"persistent": {{"plugins.ml_commons.{setting}": true}}}}), or ask the '
                "cluster's administrators")
    for said, name, value, why in _SETTING_CAUSES:
        if said.lower() in text.lower():
            return (f"{why}: set plugins.ml_commons.{name} to {value} (PUT _cluster/settings "
                    f'{{"persistent": {{"plugins.ml_commons.{name}": {value}}}}}), or ask the cluster\'s '
                    "administrators")
    return None


def require_ml(client) -> None:
    """A :class:`ClusterError` when the cluster has no ml-commons plugin."""
    plugins = {p["component"] for p in _request(client, "GET", "/_cat/plugins?format=json", what="listing plugins")}
    if "opensearch-ml" not in plugins:
        raise ClusterError("the cluster has no ml-commons plugin (opensearch-ml): it cannot serve models",
                           hint="install it (the local node of `esdistill cluster start --engine opensearch` has it)")


def wait_task(client, task_id: str, what: str, timeout: float = 300.0) -> dict:
    """Poll an ml-commons task until it is ``COMPLETED``; a :class:`ModelError` with the task's error when it
    fails, a :class:`ClusterError` when it outlasts ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        task = _request(client, "GET", f"/_plugins/_ml/tasks/{task_id}", what=f"{what}: reading task {task_id}")
        state = task.get("state")
        if state == "COMPLETED":
            return task
        if state in ("FAILED", "COMPLETED_WITH_ERROR", "CANCELLED"):
            error = str(task.get("error", task))
            raise ModelError(f"{what} {state.lower()}: {error}", hint=setting_hint(error))
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not finish within {timeout:.0f}s (task {task_id}, state {state})")
        time.sleep(1.0)


#: Largest piece of a model zip sent in one ``upload_chunk`` request (ml-commons refuses more than 10 MB).
CHUNK_BYTES = 10_000_000


def register(client, zp: TorchScriptZip, name: str, version: str = "1", via: str = "chunks",
             timeout: float = 300.0) -> str:
    """Register the zip as a ``TEXT_EMBEDDING`` model; returns the model id.

    ``via="chunks"`` (any cluster): ``_register_meta`` then the zip's bytes in ``upload_chunk`` requests of
    :data:`CHUNK_BYTES`. ``via="url"``: the node reads ``file://<zip>`` itself (the file must be readable by the
    node's process, and ``plugins.ml_commons.allow_registering_model_via_url`` on)."""
    meta = {"name": name, "version": version, "function_name": "TEXT_EMBEDDING", "model_format": "TORCH_SCRIPT",
            "model_content_hash_value": zp.sha256,
            "model_config": {"model_type": zp.model_type, "embedding_dimension": zp.dims,
                             "framework_type": "sentence_transformers"}}
    if via == "url":
        resp = _request(client, "POST", "/_plugins/_ml/models/_register", {**meta, "url": zp.path.resolve().as_uri()},
                        what=f"registering {name}")
        return wait_task(client, resp["task_id"], f"registering {name}", timeout)["model_id"]
    if via != "chunks":
        raise ValueError(f"via must be 'chunks' or 'url', not {via!r}")
    size = zp.path.stat().st_size
    chunks = max(1, -(-size // CHUNK_BYTES))
    resp = _request(client, "POST", "/_plugins/_ml/models/_register_meta",
                    {**meta, "model_content_size_in_bytes": size, "total_chunks": chunks},
                    what=f"registering {name}")
    model_id = resp["model_id"]
    try:
        with open(zp.path, "rb") as fh:
            for i in range(chunks):
                # the raw bytes, under the client's default content type (OpenSearch answers 406 to
                # application/octet-stream; the handler reads the body as it is), as opensearch-py-ml sends them
                _request(client, "POST", f"/_plugins/_ml/models/{model_id}/upload_chunk/{i}", fh.read(CHUNK_BYTES),
                         what=f"uploading chunk {i + 1}/{chunks} of {name}")
        deadline = time.monotonic() + timeout
        while (state := _request(client, "GET", f"/_plugins/_ml/models/{model_id}")
               .get("model_state")) != "REGISTERED":
            if state in ("REGISTER_FAILED", "DEPLOY_FAILED") or time.monotonic() > deadline:
                raise ModelError(f"model {model_id} ({name}) did not register after its {chunks} chunks: "
                                 f"state {state}")
            time.sleep(1.0)
    except Exception:  # no half-uploaded model left behind
        try:
            client.transport.perform_request("DELETE", f"/_plugins/_ml/models/{model_id}")
        except Exception:
            pass
        raise
    return model_id


def deploy(client, model_id: str, timeout: float = 300.0) -> None:
    """Deploy (load) the registered model on the cluster's nodes and wait until it is."""
    resp = _request(client, "POST", f"/_plugins/_ml/models/{model_id}/_deploy", what=f"deploying {model_id}")
    wait_task(client, resp["task_id"], f"deploying model {model_id}", timeout)


def predict(client, model_id: str, texts: list[str]):
    """``_predict`` of ``texts``: a float32 array, one row per text."""
    import numpy as np

    resp = _request(client, "POST", f"/_plugins/_ml/_predict/text_embedding/{model_id}",
                    {"text_docs": texts, "target_response": ["sentence_embedding"]}, what=f"_predict with {model_id}")
    rows = []
    for result in resp["inference_results"]:
        out = next(o for o in result["output"] if o.get("name") == "sentence_embedding")
        rows.append(out["data"])
    return np.asarray(rows, dtype=np.float32)


def verify_predict(client, model_id: str, model_dir: str | Path, texts: list[str] | None = None) -> float:
    """The smallest cosine between the cluster's ``_predict`` and ``SentenceTransformer.encode`` on ``texts``;
    a :class:`ModelError` when it is below :data:`MIN_COSINE` (the model must not be served)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = texts or SAMPLE
    got = predict(client, model_id, texts)
    ref = SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True)
    cos = float(np.min(np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))))
    if cos < MIN_COSINE:
        raise ModelError(f"the cluster's model {model_id} does not reproduce {model_dir}: cosine {cos:.6f} < "
                         f"{MIN_COSINE} on {len(texts)} texts",
                         hint="the cluster tokenizes with the zip's tokenizer.json; check the model's tokenizer and "
                              "max length, then upload again")
    return cos


# ------------------------------------------------------------------------------- serving in the cluster
def ingest_pipeline_body(model_id: str, field_map: dict[str, str]) -> dict:
    """An ingest pipeline that embeds documents with the deployed model: ``field_map`` text field -> vector field
    (neural-search's ``text_embedding`` processor)."""
    return {"description": f"esdistill: embed with ml-commons model {model_id}",
            "processors": [{"text_embedding": {"model_id": model_id, "field_map": field_map}}]}


def neural_clause(field: str, text: str, model_id: str, k: int) -> dict:
    """A ``neural`` query: ``text`` encoded by the cluster's model, then kNN on ``field``."""
    return {"neural": {field: {"query_text": text, "model_id": model_id, "k": k}}}


def normalization_pipeline_body(weights: list[float], normalization: str = "min_max",
                                combination: str = "arithmetic_mean") -> dict:
    """A search pipeline for ``hybrid`` queries: each sub-query's scores normalised, then combined with
    ``weights`` (one per sub-query, in the order of the ``hybrid`` query's ``queries``)."""
    return {"description": "esdistill: hybrid score normalization",
            "phase_results_processors": [{"normalization-processor": {
                "normalization": {"technique": normalization},
                "combination": {"technique": combination, "parameters": {"weights": weights}}}}]}


def hybrid_body(lexical: dict, neural: dict, size: int, weights: list[float], normalization: str = "min_max",
                combination: str = "arithmetic_mean") -> dict:
    """A ``hybrid`` search of a ``lexical`` and a ``neural`` query whose scores a temporary search pipeline
    (:func:`normalization_pipeline_body`, carried in the request: nothing is stored in the cluster) normalises and
    combines with ``weights`` (lexical, neural)."""
    pipeline = normalization_pipeline_body(weights, normalization, combination)
    pipeline.pop("description")
    return {"query": {"hybrid": {"queries": [lexical, neural]}}, "size": size, "_source": False,
            "search_pipeline": pipeline}


def models_named(client, name: str) -> list[dict]:
    """ml-commons' models registered under ``name`` (its own ids under ``model_id``; newest first)."""
    body = {"size": 100, "query": {"bool": {"filter": [{"term": {"name.keyword": name}}],
                                            "must_not": [{"exists": {"field": "chunk_number"}}]}},
            "sort": [{"created_time": {"order": "desc"}}]}
    resp = _request(client, "POST", "/_plugins/_ml/models/_search", body, what=f"looking up model {name!r}")
    return [{**h["_source"], "model_id": h["_id"]} for h in resp.get("hits", {}).get("hits", [])]


def remove_deployment(client, model_id: str) -> None:
    """Undeploy the model ``model_id`` (it stays registered)."""
    _request(client, "POST", f"/_plugins/_ml/models/{model_id}/_undeploy", what=f"undeploying {model_id}")


def remove(client, model_id: str) -> None:
    """Undeploy (where deployed) and delete the model ``model_id``."""
    from opensearchpy import exceptions as os_exc

    for method, path in (("POST", f"/_plugins/_ml/models/{model_id}/_undeploy"),
                         ("DELETE", f"/_plugins/_ml/models/{model_id}")):
        try:
            client.transport.perform_request(method, path)
        except os_exc.NotFoundError:
            pass
