"""The model stages away from the cluster: export a bundle where the cluster is, run the offline stages with the
cluster unreachable, carry the results back, and finish with cache hits."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from esdistill.bundle import Bundle, export, import_return
from esdistill.pipeline import Project

from .conftest import tiny_config

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port


def esdistill(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", ESDISTILL_ES_URL=UNREACHABLE)
    proc = subprocess.run([sys.executable, "-m", "esdistill", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_offline_round_trip(tmp_path, es, es_url, tiny_models):
    name = f"b{uuid.uuid4().hex[:8]}"
    systems = ["bm25", "pipeline", "student", "judgments", "hybrid"]
    cfg = tiny_config(tmp_path / "here", es_url, tiny_models, name, data={"pseudo_queries": 4},
                      evaluate={"systems": systems})
    here = Project(cfg, client=es)
    try:
        info = export(here, tmp_path / "bundle")
        assert info["queries"]["pseudo"] == 4 and set(info["stages"]) == {"candidates", "test-candidates"}
        assert "cluster" not in json.loads((tmp_path / "bundle" / "bundle.json").read_text())["config"]

        # the other machine: no cluster (the URL leads nowhere), its own work dir
        away = tmp_path / "away"
        away.mkdir()
        esdistill("run", "--offline", "--bundle", str(tmp_path / "bundle"), "--workdir", str(away / "w"), cwd=away)
        esdistill("bundle", "pack", "--bundle", str(tmp_path / "bundle"), "--workdir", str(away / "w"),
                  "--out", str(away / "back"), "--part-mb", "1", cwd=away)
        manifest = json.loads((away / "back" / "esdistill-return.json").read_text())
        assert len(manifest["parts"]) > 1  # cut into parts of at most 1 MiB
        assert all((away / "back" / p).stat().st_size <= 2**20 for p in manifest["parts"])

        imported = import_return(away / "back", Path(cfg.workdir))
        assert imported["models_upcast"] == 1  # the student's weights, float16 on the way, float32 again
        project = Project(cfg, client=es)  # a fresh process's view: everything model-heavy is a cache hit
        for cache in (project._fit_cache(), project._teacher_cache(True), project._teacher_cache(False),
                      project._train_cache(), project._control_cache(), project._system_cache("pipeline")):
            assert cache.done, cache.stage
        assert not Path(project._fit_cache().path("model-0")).exists()  # fold weights stayed away
        assert not Path(project._control_cache().path("model")).exists()  # the control came back as vectors
        report = project.run()
        assert project.teacher()["cached"] and project.train()["cached"]
        dep = json.loads((Path(cfg.workdir) / "deploy" / f"{project._deploy_key()}.json").read_text())
        assert dep["from_vectors_total"] == dep["docs"] == len(project.dataset.corpus)  # no document embedded here
        data = json.loads(Path(report["json"]).read_text())
        assert set(data["systems"]) == set(systems)
        runs = {n: json.loads(project._system_cache(n).path("run.json").read_text()) for n in systems}
        assert "reranked on" in runs["pipeline"]["measured"]  # ranked offline, timed there
        assert "encode" in runs["judgments"]["measured"]  # its query vectors came back, not its weights
        # the student's weights made the trip intact: queries encoded here match the vectors encoded there
        from esdistill.embed import PrecomputedQueryEncoder
        from esdistill.models import load_bi_encoder

        there = PrecomputedQueryEncoder(project._query_vectors_cache("student"), project.eval_queries())
        model = load_bi_encoder(project.student_path(), max_length=cfg.train.max_length)
        for text in list(project.eval_queries().values())[:5]:
            a, b = model.encode(text, normalize_embeddings=True), there.encode(text)
            assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_offline_project_refuses_the_cluster(tmp_path, es, es_url, tiny_models):
    from esdistill.errors import ClusterError

    name = f"b{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(tmp_path / "here", es_url, tiny_models, name, evaluate={"systems": ["bm25", "student"]})
    try:
        export(Project(cfg, client=es), tmp_path / "bundle")
        offline = Project(Bundle(tmp_path / "bundle").config(tmp_path / "w"), bundle=Bundle(tmp_path / "bundle"))
        with pytest.raises(ClusterError, match="needs the Elasticsearch cluster"):
            offline.deploy()
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_a_return_that_was_tampered_with_is_refused(tmp_path):
    from esdistill.errors import InputError

    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "esdistill-return.tar.00").write_bytes(b"not what was packed")
    (tmp_path / "back" / "esdistill-return.json").write_text(json.dumps(
        {"format": 1, "sha256": "0" * 64, "bytes": 19, "parts": ["esdistill-return.tar.00"], "folders": []}))
    with pytest.raises(InputError, match="checksum differs"):
        import_return(tmp_path / "back", tmp_path / "w")


def _return_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A return as ``bundle pack`` writes it (a gzipped tar in parts + manifest) holding two stages' folders, each
    ``done.json`` first in the tar, as pack orders them."""
    import hashlib
    import io
    import tarfile

    files = {"embed/aaaa/done.json": b'{"stage": "embed"}', "embed/aaaa/vectors.npy": os.urandom(200_000),
             "query-vectors/bbbb/done.json": b'{"stage": "query-vectors"}',
             "query-vectors/bbbb/vectors.npy": os.urandom(50_000)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    data = buf.getvalue()
    back = tmp_path / "back"
    back.mkdir()
    (back / "esdistill-return.tar.00").write_bytes(data)
    (back / "esdistill-return.json").write_text(json.dumps(
        {"format": 1, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
         "parts": ["esdistill-return.tar.00"], "folders": ["embed/aaaa", "query-vectors/bbbb"]}))
    return back, files


def test_an_interrupted_import_leaves_no_stage_marked_done(tmp_path, monkeypatch):
    """Killed while the second stage's vectors are being written: no stage of the return is in the cache (the
    first one's ``done.json`` next to truncated vectors would pass for finished), no temporary folder is left, and
    importing again brings every stage whole, replacing a partial folder of the same key."""
    import tarfile

    back, files = _return_folder(tmp_path)
    work = tmp_path / "w"
    real = tarfile.TarFile.makefile

    def killed(self, tarinfo, targetpath):
        if tarinfo.name == "query-vectors/bbbb/vectors.npy":
            raise KeyboardInterrupt
        return real(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", killed)
    with pytest.raises(KeyboardInterrupt):
        import_return(back, work)
    assert not (work / "embed" / "aaaa").exists() and not (work / "query-vectors" / "bbbb").exists()
    assert [p.name for p in work.iterdir()] == []  # the temporary folder went too
    monkeypatch.setattr(tarfile.TarFile, "makefile", real)
    (work / "embed" / "aaaa" / "parts").mkdir(parents=True)  # a partial local run of the same key
    import_return(back, work)
    for name, body in files.items():
        assert (work / name).read_bytes() == body
    assert not (work / "embed" / "aaaa" / "parts").exists()
    assert sorted(p.name for p in work.iterdir()) == ["embed", "query-vectors"]
