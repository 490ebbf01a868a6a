"""The student as a portable query encoder: ONNX (fp32 and int8), ``tokenizer.json`` and a manifest, for
applications in any language that encode their queries themselves (the free license cannot run the model in the
cluster).

:func:`export_query_encoder` writes into one folder::

    model.onnx          the whole query encoder as one graph: token ids in, the L2-normalised sentence vector out
                        (transformer, pooling and normalisation included — a client does no maths of its own)
    model_int8.onnx     the same graph with int8 weights (ONNX Runtime dynamic quantization): smaller, faster on CPUs
    tokenizer.json      the student's Hugging Face fast tokenizer, truncating at the query length, no padding
    manifest.json       what a client needs and checks: see :data:`MANIFEST_FORMAT` and :func:`manifest_for`

The manifest names the deploy the encoder belongs to (``deploy_key``). The versioned index behind the alias
carries the same key in its mapping's ``_meta.esdistill.key`` (Elasticsearch aliases have no ``_meta`` of their
own), so a client reads the alias's mapping and refuses to query with an encoder of another deploy — vectors of
another model would return plausible-looking, wrong hits. Both graphs are checked against sentence-transformers
before the manifest is written; the measured agreement is in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .errors import ModelError

MANIFEST_FORMAT = "esdistill.query-encoder/1"
FILES = ("model.onnx", "model_int8.onnx", "tokenizer.json")
#: Minimum cosine between an exported graph's vectors and sentence-transformers' for the same queries.
MIN_COSINE = {"model.onnx": 0.9999, "model_int8.onnx": 0.95}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an export folder, or None when there is none (or it is not one of ours)."""
    p = Path(folder) / "manifest.json"
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return m if m.get("format") == MANIFEST_FORMAT else None


def is_complete(folder: Path, deploy_key: str) -> bool:
    """True when ``folder`` holds this deploy's export with every file as the manifest hashed it."""
    m = read_manifest(folder)
    if not m or m.get("deploy_key") != deploy_key:
        return False
    return all((Path(folder) / f).exists() and sha256(Path(folder) / f) == h for f, h in m["files"].items())


def update_manifest(folder: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A complete export's manifest brought up to ``manifest`` (what :func:`manifest_for` makes now): the graphs
    depend only on the deploy, but the kNN defaults, the BM25 half of the hybrid and its ``rrf_k`` follow the
    config's ``[evaluate]`` — an export kept by deploy key must not serve stale ones. Returns the manifest and the
    names of the fields that changed (rewritten in place, atomically; none: the file is left alone)."""
    m = read_manifest(folder)
    changed = sorted(k for k, v in manifest.items() if m.get(k) != v)
    if changed:
        m = {**m, **manifest}
        tmp = Path(folder) / "manifest.json.tmp"
        tmp.write_text(json.dumps(m, indent=2) + "\n")
        tmp.replace(Path(folder) / "manifest.json")
    return m, changed


def _st_parts(model) -> tuple[Any, Any]:
    """The sentence-transformers Transformer and Pooling modules of ``model``; refuses other architectures."""
    transformer = model[0]
    pooling = next((m for m in model if type(m).__name__ == "Pooling"), None)
    if not hasattr(transformer, "auto_model") or pooling is None:
        raise ModelError("the student is not a Transformer + Pooling sentence-transformers model",
                         hint="only such students can be exported as a portable query encoder")
    return transformer, pooling


def _pooling_mode(pooling) -> str:
    """``mean``, ``cls``, … (an attribute since sentence-transformers 5.7, a method before)."""
    mode = getattr(pooling, "pooling_mode", None)
    return str(mode) if isinstance(mode, str) else pooling.get_pooling_mode_str()


def _encoder_module(model, input_names: list[str]):
    import torch

    class QueryEncoder(torch.nn.Module):
        """Token ids in, the L2-normalised sentence vector out (exactly ``model.encode(..., normalize=True)``)."""

        def __init__(self):
            super().__init__()
            self.st = model

        def forward(self, *tensors):
            out = self.st(dict(zip(input_names, tensors, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2, dim=1)

    return QueryEncoder().eval()


def _tokenizer_json(model, max_length: int) -> str:
    fast = getattr(model.tokenizer, "backend_tokenizer", None)
    if fast is None:
        raise ModelError("the student's tokenizer has no fast (Rust) version, so no tokenizer.json",
                         hint="train the student from a base model with a fast tokenizer")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(fast.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok.to_str(pretty=True)


def onnx_feed(encodings, input_names: list[str]) -> dict:
    """The graph's inputs for ``tokenizers`` encodings of equal length (one, or a padded batch): int64 arrays of
    the ids, attention mask and token types, as many of them as the graph takes."""
    import numpy as np

    arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
              "token_type_ids": [e.type_ids for e in encodings]}
    return {n: np.asarray(arrays[n], dtype=np.int64) for n in input_names}


def _onnx_vectors(path: Path, tokenizer_json: str, texts: list[str], input_names: list[str]):
    """What a client computes: tokenizer.json + ONNX Runtime, one query at a time (as applications encode)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for text in texts:
        out.append(sess.run(["sentence_embedding"], onnx_feed([tok.encode(text)], input_names))[0][0])
    return np.asarray(out)


def export_query_encoder(model, out: Path, manifest: dict[str, Any], max_length: int, sample: list[str]) -> dict:
    """Write the query encoder of ``model`` (a loaded sentence-transformers student) into ``out`` and return the
    manifest: ``manifest`` (where to send the vectors: see :func:`manifest_for`) completed with the encoder's
    own facts, the files' hashes, and the min cosine of each graph against sentence-transformers on ``sample``
    (refused below :data:`MIN_COSINE`)."""
    import numpy as np
    import torch

    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ModelError(f"exporting the query encoder needs ONNX Runtime ({exc.name} is missing)",
                         hint="pip install 'esdistill[onnx]'") from None
    transformer, pooling = _st_parts(model)
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                   if n in model.tokenizer.model_input_names]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("manifest.json", *FILES):  # a half-written export never looks complete
        (out / f).unlink(missing_ok=True)
    model.max_seq_length = max_length
    tok_json = _tokenizer_json(model, max_length)
    (out / "tokenizer.json").write_text(tok_json)

    module = _encoder_module(model.to("cpu"), input_names)
    example = model.tokenizer(["an example query to trace"], return_tensors="pt")
    args = tuple(example[n] for n in input_names)
    dynamic = {n: {0: "batch", 1: "tokens"} for n in input_names} | {"sentence_embedding": {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, str(out / "model.onnx"), input_names=input_names,
                              output_names=["sentence_embedding"], dynamic_axes=dynamic, opset_version=17,
                              dynamo=False)
        root = logging.getLogger()  # the quantizer advises pre-processing on the root logger, every time
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            # per-channel weights keep the vectors close (min cosine 0.989 vs 0.936 per-tensor on the SciFact
            # student, 200 queries); reduce_range avoids int8 saturation on CPUs without VNNI
            quantize_dynamic(str(out / "model.onnx"), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, reduce_range=True)
        finally:
            root.setLevel(level)
    except Exception as exc:  # noqa: BLE001 - the exporter's own message, with what was being exported
        raise ModelError(f"ONNX export of the student failed: {type(exc).__name__}: {exc}") from exc

    lower = bool(getattr(transformer, "do_lower_case", False))
    prefix = ""
    if getattr(model, "default_prompt_name", None):
        prefix = model.prompts.get(model.default_prompt_name, "")
    reference = model.encode(sample, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    client_texts = [prefix + (t.lower() if lower else t) for t in sample]
    agreement = {}
    for f in ("model.onnx", "model_int8.onnx"):
        got = _onnx_vectors(out / f, tok_json, client_texts, input_names)
        cos = float(np.min(np.sum(got * reference, axis=1) / np.linalg.norm(got, axis=1)))
        if cos < MIN_COSINE[f]:
            raise ModelError(f"the exported {f} disagrees with the student: min cosine {cos:.6f} on "
                             f"{len(sample)} sample queries (expected >= {MIN_COSINE[f]})",
                             hint="report this with the student's base model: its graph does not export faithfully")
        agreement[f] = round(cos, 6)

    full = {
        "format": MANIFEST_FORMAT,
        **manifest,
        "dims": int(reference.shape[1]),
        "max_length": max_length,
        "lowercase": lower,
        "prefix": prefix,
        "pooling": _pooling_mode(pooling),
        "normalized": True,
        "inputs": input_names,
        "output": "sentence_embedding",
        "min_cosine_vs_sentence_transformers": agreement,
        "files": {f: sha256(out / f) for f in FILES},
    }
    (out / "manifest.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


#: Where a client puts the query's vector in ``knn_request`` (the whole JSON value, a list of floats).
VECTOR_PLACEHOLDER = "{{vector}}"


def manifest_for(*, deploy_key: str, alias: str, index: str, vector_field: str, similarity: str, model: str,
                 knn: dict[str, int], bm25_index: str, bm25_query: dict[str, Any], rrf_k: int,
                 engine: str = "elasticsearch", knn_request: dict[str, Any] | None = None,
                 fusion: str = "minmax", weight: float = 0.5) -> dict[str, Any]:
    """Where and how a client sends the vectors: the engine (``elasticsearch`` or ``opensearch``: which client
    library speaks to it), the alias and the versioned index behind it, the vector field and its similarity, the kNN
    defaults, the kNN search body as esdistill itself sends it (``knn_request``, the engine's own form, with
    :data:`VECTOR_PLACEHOLDER` where the query's vector goes), and the BM25 half of the hybrid (``bm25_query`` with
    the placeholder ``{{query}}`` where the query text goes; the client fuses the two rankings as ``fusion`` says:
    ``minmax`` with the student's ``weight``, or RRF with ``rrf_k``; :class:`esdistill.search.Hybrid`)."""
    return {"deploy_key": deploy_key, "engine": engine, "alias": alias, "index": index,
            "vector_field": vector_field, "similarity": similarity, "model": model, "knn": knn,
            "knn_request": knn_request,
            "hybrid": {"bm25_index": bm25_index, "bm25_query": bm25_query, "fusion": fusion, "weight": weight,
                       "rrf_k": rrf_k}}
