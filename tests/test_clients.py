"""The student as a portable query encoder (``esdistill export --onnx``) and the application clients that use it:
examples/node (onnxruntime-node, tokenizers, @elastic/elasticsearch) and examples/java (ONNX Runtime, DJL's
Hugging Face tokenizers, the Elasticsearch Java client), against the real test cluster. Each client's vectors
must match the Python student's, its top-10 must equal ``esdistill search``'s, and an encoder of another deploy
must be refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import ROOT

NODE_DIR = ROOT / "examples" / "node"
JAVA_DIR = ROOT / "examples" / "java"


@pytest.fixture(scope="module")
def encoder(tiny_project, tmp_path_factory):
    project, _ = tiny_project
    out = tmp_path_factory.mktemp("encoder")
    return project, out, project.export_encoder(out)


@pytest.fixture(scope="module")
def reference(encoder):
    """What Python answers for the test queries, through the alias (``esdistill search``): vectors and rankings,
    with the PyTorch encoder (the fp32 graph must match sentence-transformers itself, not the served int8)."""
    project, _, _ = encoder
    queries = list(project.eval_queries().values())[:6]
    served, project.cfg.evaluate.query_encoder = project.cfg.evaluate.query_encoder, "torch"
    systems = project.systems(served=True)
    student, hybrid = systems["student"](), systems["hybrid"]()
    project.cfg.evaluate.query_encoder = served  # the project is shared with other tests
    return {q: {"vector": np.asarray(student.encode(q)), "student": student.search(q).hits[:10],
                "hybrid": hybrid.search(q).hits[:10]} for q in queries}


def test_export_writes_a_checked_encoder_named_after_the_served_deploy(encoder, es):
    project, out, manifest = encoder
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model_int8.onnx", "tokenizer.json", "manifest.json"}
    served = es.indices.get_alias(name=manifest["alias"]).body
    assert list(served) == [manifest["index"]]
    assert es.indices.get_mapping(index=manifest["index"]).body[manifest["index"]]["mappings"]["_meta"][
        "esdistill"]["key"] == manifest["deploy_key"]
    assert manifest["dims"] == 32 and manifest["normalized"] and manifest["inputs"][:2] == ["input_ids",
                                                                                          "attention_mask"]
    assert manifest["max_length"] == project.cfg.train.max_length
    assert manifest["engine"] == "elasticsearch" and manifest["knn_request"] == project.backend.knn_body(
        "{{vector}}", project.cfg.evaluate.k, project.cfg.evaluate.num_candidates)  # what the clients send
    assert manifest["min_cosine_vs_sentence_transformers"]["model.onnx"] >= 0.9999
    assert json.loads((out / "tokenizer.json").read_text())["truncation"]["max_length"] == manifest["max_length"]
    # a second export of the same deploy keeps the files
    mtime = (out / "model.onnx").stat().st_mtime_ns
    assert project.export_encoder(out) == manifest
    assert (out / "model.onnx").stat().st_mtime_ns == mtime


def test_a_kept_export_follows_the_config_s_evaluate_settings(encoder, tmp_path):
    """An export is kept by deploy key (its graphs are the deploy's), but the kNN defaults and the hybrid's fusion
    settings in its manifest are the config's ``[evaluate]``: changed there, the kept export's manifest follows."""
    from esdistill.encoder_export import is_complete
    from esdistill.pipeline import Project

    project, out, manifest = encoder
    folder = tmp_path / "enc"
    shutil.copytree(out, folder)
    ev = project.cfg.evaluate.model_copy(update={"num_candidates": manifest["knn"]["num_candidates"] + 7,
                                                 "rrf_k": manifest["hybrid"]["rrf_k"] + 3, "hybrid_weight": 0.7})
    other = Project(project.cfg.model_copy(update={"evaluate": ev}), client=project.client)
    assert other._deploy_key("student") == manifest["deploy_key"]  # the same deploy
    mtime = (folder / "model.onnx").stat().st_mtime_ns
    got = other.export_encoder(folder)
    assert got["knn"] == {"k": ev.k, "num_candidates": ev.num_candidates} and got["hybrid"]["rrf_k"] == ev.rrf_k
    assert got["hybrid"]["fusion"] == "minmax" and got["hybrid"]["weight"] == 0.7
    assert json.loads((folder / "manifest.json").read_text()) == got
    assert (folder / "model.onnx").stat().st_mtime_ns == mtime and is_complete(folder, manifest["deploy_key"])
    assert got["knn_request"]["knn"]["num_candidates"] == ev.num_candidates  # the request it sends follows too
    assert {k: v for k, v in got.items() if k not in ("knn", "knn_request", "hybrid")} == {
        k: v for k, v in manifest.items() if k not in ("knn", "knn_request", "hybrid")}


def test_export_refuses_a_config_whose_deploy_is_not_in_the_cluster(tiny_project, tmp_path):
    from esdistill.errors import ClusterError
    from esdistill.pipeline import Project

    project, _ = tiny_project
    other = Project(project.cfg.model_copy(update={"deploy": project.cfg.deploy.model_copy(update={"m": 24})}),
                    client=project.client)
    with pytest.raises(ClusterError, match="esdistill deploy"):
        other.export_encoder(tmp_path / "enc")


def _same_ranking(got: list, want: list, tol: float) -> None:
    """Equal ids in equal order, except between hits whose reference scores are within ``tol`` (a float tie)."""
    assert len(got) == len(want)
    for (gid, gscore), (wid, wscore) in zip(got, want, strict=True):
        assert abs(gscore - wscore) <= tol, (got, want)
        if gid != wid:
            tied = {d for d, s in want if abs(s - wscore) <= tol}
            assert gid in tied, (got, want)


def _mismatched(out, tmp_path):
    """The same encoder files with a manifest naming another deploy."""
    bad = tmp_path / "other-deploy"
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "manifest.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "deploy_key": "0" * 16}))
    return bad


def _check_client(cmd: list[str], cwd, out, reference, es_url, tmp_path, int8_tol: float = 0.95) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(reference) + "\n")
    env = dict(os.environ, ESDISTILL_ES_URL=es_url)
    # kNN scores differ by float noise between the ONNX and PyTorch encoders (<= 1e-4); RRF hides it (ranks), min-max
    # fusion divides it by a ranking's score spread
    fusion = json.loads((out / "manifest.json").read_text())["hybrid"]["fusion"]
    tol = {"student": 1e-4, "hybrid": 1e-12 if fusion == "rrf" else 2e-3}
    for system in ("student", "hybrid"):
        proc = subprocess.run([*cmd, "--encoder", str(out), "--system", system, "--json", "--queries-file",
                               str(queries)], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["query"] for line in lines] == list(reference)
        for line in lines:
            ref = reference[line["query"]]
            vec = np.asarray(line["vector"])
            assert float(vec @ ref["vector"] / np.linalg.norm(vec) / np.linalg.norm(ref["vector"])) > 0.9999
            _same_ranking([tuple(h) for h in line["hits"]], ref[system], tol=tol[system])
    # int8: close to the student, and it runs the whole search
    proc = subprocess.run([*cmd, "--encoder", str(out), "--int8", "--json", "--queries-file", str(queries)],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in map(json.loads, proc.stdout.splitlines()):
        vec, ref = np.asarray(line["vector"]), reference[line["query"]]["vector"]
        assert float(vec @ ref / np.linalg.norm(vec) / np.linalg.norm(ref)) > int8_tol
    # an encoder of another deploy is refused before any search
    proc = subprocess.run([*cmd, "--encoder", str(_mismatched(out, tmp_path)), "some query"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3 and "belongs to deploy 0000000000000000" in proc.stderr, proc.stderr[-2000:]


def _in_ci() -> bool:
    """CI (``CI=true``, as CI services set it): scripts/setup.sh has installed node and java there."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _check_stops_when_the_alias_moves(cmd: list[str], cwd, out, url: str, moved: str, swap) -> None:
    """A client answering queries from stdin answers the first from the encoder's deploy; ``swap(index, moved)``
    then moves the alias to ``moved`` (the engine's own request), and the next query stops it (exit 3) naming
    ``moved`` and the encoder's deploy. The alias is moved back (``swap(moved, index)``) whatever happens."""
    manifest = json.loads((out / "manifest.json").read_text())
    proc = subprocess.Popen([*cmd, "--encoder", str(out), "--json", "--queries-file", "-"], cwd=cwd,
                            env=dict(os.environ, ESDISTILL_ES_URL=url), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("vitamin d and bone health\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # answered by the encoder's own deploy
        assert first["hits"], first
        swap(manifest["index"], moved)
        proc.stdin.write("smoking and lung cancer\n")
        proc.stdin.close()
        assert proc.wait(timeout=300) == 3, proc.stderr.read()[-2000:]
        err = proc.stderr.read()
        assert f"now serves {moved}" in err and manifest["deploy_key"] in err, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        swap(moved, manifest["index"])


def _check_client_safety(cmd: list[str], cwd, out, es, es_url, tmp_path) -> None:
    """What a long-running client must notice: the alias moved to another index while it runs (after its check
    at start) — a kNN hit from another index stops it (exit 3) instead of answering with the wrong model's
    vectors; and a hybrid ``_msearch`` whose BM25 item lost a shard is an error, not fewer hits."""
    manifest = json.loads((out / "manifest.json").read_text())
    alias, index = manifest["alias"], manifest["index"]
    env = dict(os.environ, ESDISTILL_ES_URL=es_url)
    moved = f"{index}-moved"
    mapping = es.indices.get_mapping(index=index).body[index]["mappings"]
    vf = manifest["vector_field"]
    es.indices.create(index=moved, mappings={"properties": {vf: mapping["properties"][vf]}})
    dims = mapping["properties"][manifest["vector_field"]]["dims"]
    rng = np.random.default_rng(0)
    for i in range(3):
        v = rng.normal(size=dims)
        es.index(index=moved, id=f"m{i}", document={manifest["vector_field"]: (v / np.linalg.norm(v)).tolist()})
    es.indices.refresh(index=moved)

    def swap(frm: str, to: str) -> None:
        es.indices.update_aliases(actions=[{"remove": {"index": frm, "alias": alias}},
                                           {"add": {"index": to, "alias": alias}}])

    try:
        _check_stops_when_the_alias_moves(cmd, cwd, out, es_url, moved, swap)
    finally:
        es.indices.delete(index=moved)
    # the BM25 half over an alias where one index's shard cannot run the query: 200, with half the hits
    bm25 = manifest["hybrid"]["bm25_index"]
    partial, broken = f"{bm25}-partial", f"{bm25}-broken"
    es.indices.create(index=broken, mappings={"properties": {"title": {"type": "long"}, "text": {"type": "text"}}})
    es.index(index=broken, id="n1", document={"title": 7, "text": "cell"}, refresh=True)
    es.indices.put_alias(index=f"{bm25},{broken}", name=partial)
    folder = tmp_path / "partial-encoder"
    folder.mkdir()
    for f in out.iterdir():
        if f.name != "manifest.json":
            (folder / f.name).symlink_to(f)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "hybrid": {**manifest["hybrid"],
                                                                             "bm25_index": partial}}))
    try:
        proc = subprocess.run([*cmd, "--encoder", str(folder), "--system", "hybrid", "cell"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "shard(s) failed" in proc.stderr, proc.stderr[-2000:]
    finally:
        es.indices.delete_alias(index=f"{bm25},{broken}", name=partial)
        es.indices.delete(index=broken)


def _need(tool: str, folder, what: str) -> None:
    """Skip where ``tool`` is missing on a developer's machine; fail in CI, where a skip would pass unseen."""
    if shutil.which(tool) is None:
        if _in_ci():
            pytest.fail(f"{tool} is not installed, and CI must run this test: scripts/setup.sh installs it")
        pytest.skip(f"{tool} is not installed")
    if not folder.exists():
        pytest.fail(f"{what} is not installed: run scripts/test-setup.sh")


@pytest.mark.parametrize("ci", ["true", "", None])
def test_a_missing_client_tool_fails_in_ci_and_skips_elsewhere(ci, monkeypatch, tmp_path):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="esdistill-no-such-tool is not installed"):
        _need("esdistill-no-such-tool", tmp_path, "nothing")


def test_node_client_matches_the_python_student(encoder, reference, es_url, tmp_path):
    _need("node", NODE_DIR / "node_modules", "examples/node's packages")
    _check_client(["node", "search.mjs"], NODE_DIR, encoder[1], reference, es_url, tmp_path)


def test_java_client_matches_the_python_student(encoder, reference, es_url, tmp_path):
    _need("java", JAVA_DIR / "target" / "classes", "examples/java's build")
    _check_client(["java", "-cp", "target/classes:target/dependency/*", "esdistill.Search"], JAVA_DIR,
                  encoder[1], reference, es_url, tmp_path)


def test_node_client_stops_when_the_alias_moves_and_on_partial_answers(encoder, es, es_url, tmp_path):
    _need("node", NODE_DIR / "node_modules", "examples/node's packages")
    _check_client_safety(["node", "search.mjs"], NODE_DIR, encoder[1], es, es_url, tmp_path)


def test_java_client_stops_when_the_alias_moves_and_on_partial_answers(encoder, es, es_url, tmp_path):
    _need("java", JAVA_DIR / "target" / "classes", "examples/java's build")
    _check_client_safety(["java", "-cp", "target/classes:target/dependency/*", "esdistill.Search"], JAVA_DIR,
                         encoder[1], es, es_url, tmp_path)


def test_cli_export_onnx_prints_the_folder(tiny_project, tmp_path):
    project, _ = tiny_project
    values = project.cfg.model_dump(mode="json", exclude={"cluster"}) | {"cluster": {"url": project.cfg.cluster.url}}
    cfg = tmp_path / "c.toml"
    cfg.write_text(_toml(values))
    out = tmp_path / "enc"
    proc = subprocess.run([sys.executable, "-m", "esdistill", "export", "--onnx", "-c", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "manifest.json").read_text())["deploy_key"] == project._deploy_key("student")


def _toml(values: dict, table: str = "") -> str:
    """A config as TOML (scalars, lists of scalars and tables; None left out): enough for a RunConfig."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None and not isinstance(v, dict)]
    text = (f"[{table}]\n" if table else "") + "".join(line + "\n" for line in scalars)
    for k, v in values.items():
        if isinstance(v, dict):
            text += _toml(v, f"{table}.{k}" if table else k)
    return text
