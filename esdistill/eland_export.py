"""Export the student for Elasticsearch's own inference: a TorchScript ``text_embedding`` model traced by eland.

:func:`trace_student` runs eland's ``TransformerModel`` on a local sentence-transformers folder (no hub, no
network) and writes the three files an upload needs into ``out_dir``:

* ``traced_pytorch_model.pt`` — the frozen TorchScript model (eland's ``TraceableModel.save``);
* ``vocabulary.json`` — the tokenizer vocabulary (eland's ``TransformerModel.save``);
* ``trained_model_config.json`` — the body of ``PUT _ml/trained_models/<model_id>`` (eland returns it as an
  object and does not write it; it is written here under a name that cannot clobber a model's ``config.json``).

:func:`verify_traced` runs the traced model the way Elasticsearch's ``pytorch_inference`` process does and
compares it with ``SentenceTransformer.encode``. The version gates (:func:`check_eland_cluster_version`,
:func:`check_torch_version`, :func:`check_tokenizer`, :func:`check_max_length`) raise an
:class:`~esdistill.errors.EsdistillError` that says what does not match and what to do, before eland fails
somewhere deep. Uploading the files (``eland.ml.pytorch.PyTorchModel``) needs a cluster with an ML node, which
the local test build has not; that is not part of this module.

eland, torch and transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ES_VERSION
from .errors import ClusterError, ModelError

#: Files written by :func:`trace_student`. The first two names are eland's own.
MODEL_FILE = "traced_pytorch_model.pt"
VOCAB_FILE = "vocabulary.json"
CONFIG_FILE = "trained_model_config.json"

#: Elasticsearch trained model ids: lowercase alphanumerics, ``-`` and ``_``, starting and ending alphanumeric.
MODEL_ID_MAX = 64
#: eland's own ceiling for a believable ``model_max_length`` (larger values are "no limit" placeholders).
_REASONABLE_MAX_LENGTH = 8192
#: Models whose learned position table is offset by ``pad_token_id + 1`` (514 positions serve 512 tokens).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer"}
#: Used only if eland's package metadata cannot be read: the torch its 9.2 ``[pytorch]`` extra pins.
_FALLBACK_TORCH_SPEC = "==2.7.1"


@dataclass(frozen=True)
class ElandExport:
    """A traced student on disk, ready for ``PUT _ml/trained_models`` (config, definition, vocabulary).

    ``tokenizer_type`` is Elasticsearch's tokenization name (``bert``, ``mpnet``, ``roberta``, ...);
    ``max_length`` is the ``max_sequence_length`` Elasticsearch truncates inputs to; ``normalized`` says whether
    the traced model outputs unit vectors (it does exactly when the student ends in a ``Normalize`` module).
    """

    model_path: Path
    config_path: Path
    vocab_path: Path
    model_id: str
    dims: int
    max_length: int
    tokenizer_type: str
    normalized: bool = False
    #: the sentence-transformers folder it was traced from (engines that trace it their own way read it: OpenSearch)
    source: Path | None = None


# ------------------------------------------------------------------------------------------------- names
def model_id_for(name: str) -> str:
    """An Elasticsearch trained model id for a run name: lowercase, only ``[a-z0-9_-]``, at most 64 characters.

    Runs of other characters become one ``-``; leading and trailing ``-``/``_`` are dropped (Elasticsearch wants
    an alphanumeric first and last character). A name longer than 64 keeps its start and ends in 8 hex digits of
    its hash, so two long names that share a prefix still get different ids. Raises :class:`ModelError` when
    nothing usable is left.
    """
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", str(name).lower()).strip("-_")
    if not cleaned:
        raise ModelError(f"cannot make an Elasticsearch model id from {name!r}",
                         hint="use a run name with at least one letter or digit")
    if len(cleaned) > MODEL_ID_MAX:
        digest = hashlib.sha256(str(name).encode()).hexdigest()[:8]
        cleaned = f"{cleaned[:MODEL_ID_MAX - 9].rstrip('-_')}-{digest}"
    return cleaned


# ------------------------------------------------------------------------------------------ version gates
def _major_minor(version: str, what: str, error: type) -> tuple[int, int]:
    match = re.match(r"^\s*v?(\d+)\.(\d+)", str(version))
    if not match:
        raise error(f"cannot read a version from {what} {version!r}", hint="expected MAJOR.MINOR.PATCH, e.g. 9.2.0")
    return int(match.group(1)), int(match.group(2))


def check_eland_cluster_version(cluster_version: str, *, serverless: bool = False) -> None:
    """Refuse a cluster whose major.minor differs from eland's (eland's models are built for their own release).

    eland's CLI itself refuses clusters before 8.0 (no NLP models) and eland 9 refuses 8.x clusters; this gate is
    stricter, as Elastic's compatibility rule is that eland's major.minor matches the cluster's. Serverless
    projects report no meaningful version and are always compatible (``serverless=True`` skips the check, as
    eland does). Raises :class:`ClusterError` naming both versions.
    """
    if serverless:
        return
    import eland

    eland_mm = _major_minor(eland.__version__, "eland", ModelError)
    cluster_mm = _major_minor(cluster_version, "the cluster version", ClusterError)
    if eland_mm != cluster_mm:
        raise ClusterError(
            f"eland {eland.__version__} ({eland_mm[0]}.{eland_mm[1]}) does not match the Elasticsearch cluster "
            f"{cluster_version} ({cluster_mm[0]}.{cluster_mm[1]}): eland's major.minor must equal the cluster's",
            hint=f"install eland=={cluster_mm[0]}.{cluster_mm[1]}.* with its [pytorch] extra, "
                 f"or target a {eland_mm[0]}.{eland_mm[1]} cluster",
        )


def _eland_torch_spec() -> str:
    """The torch requirement of eland's ``[pytorch]`` extra, from its installed package metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("eland") or []
    except metadata.PackageNotFoundError:
        return _FALLBACK_TORCH_SPEC
    for line in requires:
        req = Requirement(line)
        if req.name.lower() == "torch" and (req.marker is None or req.marker.evaluate({"extra": "pytorch"})):
            return str(req.specifier) or _FALLBACK_TORCH_SPEC
    return _FALLBACK_TORCH_SPEC


def check_torch_version() -> str:
    """The installed torch version, if it satisfies eland's ``[pytorch]`` pin; else :class:`ModelError`.

    eland checks no torch version at run time: it pins torch in its package metadata (``torch==2.7.1`` for eland
    9.2), the libtorch that Elasticsearch's ``pytorch_inference`` of the same release loads TorchScript with. This
    mirrors that pin, read from eland's installed metadata (a local build tag such as ``+cpu`` is ignored). A
    model traced by another torch may fail to load on the ML node, or load and compute differently.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        import torch
    except ImportError as exc:
        raise ModelError("torch is not installed; tracing for Elasticsearch needs it",
                         hint="install eland with its [pytorch] extra") from exc
    spec = _eland_torch_spec()
    try:
        ok = Version(torch.__version__) in SpecifierSet(spec)
    except InvalidVersion:
        ok = False
    if not ok:
        import eland

        raise ModelError(
            f"torch {torch.__version__} does not satisfy eland {eland.__version__}'s requirement torch{spec}",
            hint=f"install torch{spec} (eland[pytorch] pins it) so Elasticsearch can load the traced model",
        )
    return torch.__version__


def _load_slow_tokenizer(model_dir: str):
    """The tokenizer exactly as eland loads it: ``AutoTokenizer.from_pretrained(folder, use_fast=False)``."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    except Exception as exc:  # noqa: BLE001 - rewritten for the user with the cause kept
        raise ModelError(
            f"cannot load the tokenizer of {model_dir}: {type(exc).__name__}: {str(exc)[:300]}",
            hint="the folder needs its tokenizer files (vocab.txt / tokenizer_config.json) at its root",
        ) from exc


def check_tokenizer(model_dir: str) -> str:
    """The tokenizer class name, if eland supports it (``SUPPORTED_TOKENIZERS``); else :class:`ModelError`.

    Elasticsearch re-implements tokenization in Java for a fixed set of tokenizer families; eland refuses any
    other (with a ``TypeError``), and a model with an unsupported tokenizer cannot be served by the cluster.
    """
    from eland.ml.pytorch.transformers import SUPPORTED_TOKENIZERS

    tokenizer = _load_slow_tokenizer(model_dir)
    if not isinstance(tokenizer, SUPPORTED_TOKENIZERS):
        names = ", ".join(sorted(t.__name__ for t in SUPPORTED_TOKENIZERS))
        raise ModelError(f"tokenizer {type(tokenizer).__name__} of {model_dir} is not one Elasticsearch supports",
                         hint=f"train the student from a base model with one of: {names}")
    return type(tokenizer).__name__


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def model_length_limit(model_dir: str) -> int:
    """The most tokens the model can take: its position table (``max_position_embeddings``, less the offset
    RoBERTa-like models reserve) and, when it is believable (<= 8192), the tokenizer's ``model_max_length``."""
    folder = Path(model_dir)
    config = _read_json(folder / "config.json")
    limits = []
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        if config.get("model_type") in _OFFSET_POSITIONS:
            positions -= int(config.get("pad_token_id") or 1) + 1
        limits.append(positions)
    tok_max = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, (int, float)) and 0 < tok_max <= _REASONABLE_MAX_LENGTH:
        limits.append(int(tok_max))
    if not limits:
        raise ModelError(f"cannot tell the maximum input length of {model_dir}: no max_position_embeddings in its "
                         "config.json and no model_max_length in its tokenizer_config.json",
                         hint="pass max_length explicitly")
    return min(limits)


def check_max_length(model_dir: str, max_length: int) -> int:
    """``max_length``, if it fits the model (see :func:`model_length_limit`); else :class:`ModelError` naming the
    limit. Elasticsearch truncates inputs to this many tokens (``[CLS]``/``[SEP]`` included)."""
    if not isinstance(max_length, int) or max_length < 3:
        raise ModelError(f"max_length must be an integer of at least 3 tokens, got {max_length!r}")
    limit = model_length_limit(model_dir)
    if max_length > limit:
        raise ModelError(f"max_length {max_length} exceeds the model's limit of {limit} tokens ({model_dir})",
                         hint=f"use a max_length of at most {limit}")
    return max_length


# --------------------------------------------------------------------------------------------------- trace
def _st_settings(model_dir: Path) -> tuple[int | None, bool]:
    """(max_seq_length, normalized) from a sentence-transformers folder's own files, without loading it."""
    max_seq = _read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text(encoding="utf-8")) if modules_file.is_file() else []
    normalized = any(str(m.get("type", "")).rsplit(".", 1)[-1] == "Normalize" for m in modules)
    return (int(max_seq) if isinstance(max_seq, int) else None), normalized


def trace_student(model_dir: str, out_dir: Path, max_length: int | None = None, *, name: str | None = None,
                  cluster_version: str = ES_VERSION) -> ElandExport:
    """Trace the sentence-transformers student in ``model_dir`` with eland and write it to ``out_dir``.

    Works offline: eland's ``TransformerModel`` accepts a local folder as ``model_id`` (it loads the tokenizer,
    the transformer and — for its wrapper — the whole ``SentenceTransformer`` from that path), so the traced model
    holds the student's full module stack: transformer, pooling and, if present, ``Normalize``.

    ``max_length`` becomes the ``max_sequence_length`` Elasticsearch truncates to; by default the student's own
    ``max_seq_length``, so the cluster embeds exactly what :class:`SentenceTransformer.encode` does client-side.
    The model id is :func:`model_id_for` of ``name`` (default: the folder's name). ``cluster_version`` is the
    target cluster (default :data:`~esdistill.config.ES_VERSION`): it is gated against eland's version and
    lets eland write ``embedding_size`` into the config. Every gate runs before eland does; eland's own failures
    are rewritten as :class:`ModelError`.
    """
    from .models import resolve

    target = resolve(model_dir)
    folder = Path(target)
    if not folder.is_dir():
        raise ModelError(f"model {model_dir!r} is not a local folder; the eland export traces a saved student",
                         hint="train the student first, or pass the folder it was saved to")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json at its root; eland loads the transformer from there",
                         hint="save the student with sentence-transformers (model.save(folder))")
    out_dir = Path(out_dir)
    if out_dir.resolve() == folder.resolve():
        raise ModelError(f"the export folder {out_dir} is the model folder itself",
                         hint="write the export to a folder of its own")

    check_torch_version()
    check_eland_cluster_version(cluster_version)
    check_tokenizer(target)
    st_max, normalized = _st_settings(folder)
    max_length = check_max_length(target, max_length or st_max or model_length_limit(target))
    model_id = model_id_for(name or folder.name)

    from eland.common import parse_es_version
    from eland.ml.pytorch.transformers import TransformerModel

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        tm = TransformerModel(model_id=target, task_type="text_embedding", es_version=parse_es_version(cluster_version),
                              max_model_input_size=max_length)
        model_path, config, vocab_path = tm.save(str(out_dir))
    except Exception as exc:  # noqa: BLE001 - eland and torch fail deep; the user gets one line and the cause
        raise ModelError(f"eland could not trace {target}: {type(exc).__name__}: {str(exc)[:300]}",
                         hint="check that the folder is a complete sentence-transformers model") from exc

    config.description = f"esdistill student {model_id} (text_embedding, {folder.name})"
    body = config.to_dict()
    config_path = out_dir / CONFIG_FILE
    config_path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    inference = body["inference_config"]["text_embedding"]
    tokenizer_type, tokenization = next(iter(inference["tokenization"].items()))
    return ElandExport(
        model_path=Path(model_path), config_path=config_path, vocab_path=Path(vocab_path), model_id=model_id,
        dims=int(inference["embedding_size"]), max_length=int(tokenization["max_sequence_length"]),
        tokenizer_type=tokenizer_type, normalized=normalized, source=folder,
    )


# -------------------------------------------------------------------------------------------------- verify
def _traced_arity(module) -> int:
    """How many tensors the traced forward takes (2, 3 or 4, per eland's tokenizer families); ``self`` excluded."""
    return len(list(module.graph.inputs())) - 1


def _es_inputs(encoding: dict, arity: int) -> tuple:
    """One inference's inputs as ``pytorch_inference`` builds them: each a ``[1, n]`` int64 tensor, in eland's order
    (input_ids, attention_mask, token_type_ids, position_ids), cut to the traced model's arity."""
    import torch

    ids = torch.tensor([encoding["input_ids"]], dtype=torch.long)
    mask = torch.tensor([encoding["attention_mask"]], dtype=torch.long)
    types = torch.tensor([encoding.get("token_type_ids") or [0] * ids.shape[1]], dtype=torch.long)
    positions = torch.arange(ids.shape[1], dtype=torch.long).unsqueeze(0)
    return (ids, mask, types, positions)[:arity]


def verify_traced(export: ElandExport, model_dir: str, texts: list[str]) -> float:
    """The minimum cosine similarity, over ``texts``, between the traced model and the student itself.

    The traced model is loaded with ``torch.jit.load`` and run as Elasticsearch's ``pytorch_inference`` runs it:
    one forward per text, every input a ``[1, n]`` int64 tensor — ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (zeros), ``position_ids`` (0..n-1), fewer for the 2- and 3-input families — tokenized by
    the model's slow tokenizer (eland's) with truncation at ``export.max_length``. Each text runs twice: alone, and
    padded to the longest text (attention mask 0 on the padding), as the cluster pads a multi-text request.

    The reference is ``SentenceTransformer(model_dir).encode(texts, normalize_embeddings=False)`` at the same
    ``max_seq_length``: the student's own output, Normalize module included when it has one. The traced model
    runs the student's whole module stack, so it normalizes exactly when the student does (``export.normalized``):
    for such a student both sides are unit vectors, and a traced vector whose norm is off by more than 1e-3 raises
    :class:`ModelError` (a ``dot_product`` index would refuse it). A dimension mismatch raises too.
    """
    import numpy as np
    import torch

    from .models import load_bi_encoder

    texts = [t for t in texts if isinstance(t, str)]
    if not texts:
        raise ModelError("verify_traced needs at least one text")
    try:
        traced = torch.jit.load(str(export.model_path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the traced model {export.model_path}: {type(exc).__name__}: {str(exc)[:300]}",
                         hint="trace it again with trace_student") from exc
    traced.eval()
    arity = _traced_arity(traced)
    tokenizer = _load_slow_tokenizer(model_dir)
    encodings = [tokenizer(t, truncation=True, max_length=export.max_length) for t in texts]
    longest = max(len(e["input_ids"]) for e in encodings)

    outputs: list[np.ndarray] = []  # [alone..., padded...]
    with torch.inference_mode():
        for pad in (False, True):
            for enc in encodings:
                enc = dict(enc)
                if pad:
                    extra = longest - len(enc["input_ids"])
                    enc["input_ids"] = list(enc["input_ids"]) + [tokenizer.pad_token_id or 0] * extra
                    enc["attention_mask"] = list(enc["attention_mask"]) + [0] * extra
                    if enc.get("token_type_ids"):
                        enc["token_type_ids"] = list(enc["token_type_ids"]) + [0] * extra
                out = traced(*_es_inputs(enc, arity))
                out = out[0] if isinstance(out, (tuple, list)) else out
                outputs.append(out.reshape(-1).float().numpy())
    got = np.stack(outputs).astype(np.float64)

    student = load_bi_encoder(model_dir, max_length=export.max_length, device="cpu")
    want = student.encode(texts, normalize_embeddings=False, convert_to_numpy=True, show_progress_bar=False,
                          batch_size=len(texts))
    want = np.concatenate([want, want]).astype(np.float64)
    if got.shape[1] != want.shape[1] or got.shape[1] != export.dims:
        raise ModelError(f"the traced model outputs {got.shape[1]} dims, the student {want.shape[1]}, "
                         f"the export says {export.dims}", hint="trace the student again")
    norms = np.linalg.norm(got, axis=1)
    if export.normalized and np.abs(norms - 1.0).max() > 1e-3:
        raise ModelError(f"the student outputs unit vectors but the traced model does not (norms "
                         f"{norms.min():.4f}..{norms.max():.4f})", hint="trace the student again with this module")
    cos = (got * want).sum(axis=1) / np.maximum(norms * np.linalg.norm(want, axis=1), 1e-12)
    return float(cos.min())


# -------------------------------------------------------------------------------------------------- upload
def upload_with_eland(backend, export: ElandExport, start: bool = False, replace: bool = False) -> dict:
    """Upload a traced export with eland (config, chunked definition, vocabulary) to an Elasticsearch cluster
    (``backend``: an :class:`~esdistill.backends.ElasticsearchBackend`); optionally start it.

    The cluster's version is gated against eland's first, and ML must be available. An existing model with the
    same id is refused unless ``replace``.
    """
    from eland.ml.pytorch import PyTorchModel

    from .ml_ops import check_model

    client = backend.client
    version = min(backend.node_versions(), default=ES_VERSION)
    check_eland_cluster_version(version)
    ops = check_model(export.model_path, version)  # refused here, naming the operations, not at deployment
    backend.require_ml()
    model = PyTorchModel(client, export.model_id)
    existing = client.options(ignore_status=404).ml.get_trained_models(model_id=export.model_id).body
    if existing.get("count"):
        if not replace:
            raise ClusterError(f"a trained model {export.model_id!r} already exists",
                               hint="pass --replace, or deploy under another name")
        client.options(ignore_status=[404, 409]).ml.stop_trained_model_deployment(model_id=export.model_id, force=True)
        model.delete()
    model.import_model(model_path=str(export.model_path), config_path=str(export.config_path),
                       vocab_path=str(export.vocab_path))
    if start:
        model.start()
    return {"model_id": export.model_id, "started": start, "cluster_version": version, "ops_check": ops}
