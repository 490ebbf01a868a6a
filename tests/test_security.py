"""A secured Elasticsearch (TLS on HTTP + a file-realm user) from the test build's x-pack security:
right credentials work, wrong ones fail clearly, and a planted secret never appears in any output."""

import hashlib
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from esdistill.cluster import LocalCluster, connect
from esdistill.config import ClusterSettings, LocalClusterSettings
from esdistill.errors import ClusterError

from .conftest import SCIFACT

PORT = int(os.environ.get("ESDISTILL_TEST_SECURE_PORT", "9280"))
SECRET = "planted-Secret-7f3a9c"


@pytest.fixture(scope="module")
def secure():
    lc = LocalCluster(LocalClusterSettings(port=PORT, heap="512m", security=True, password=SecretStr(SECRET)))
    lc.start()
    yield lc
    lc.stop()


def test_right_credentials_and_ca_work(secure):
    cs = secure.client_settings()
    assert cs.url.startswith("https://")
    client = connect(cs)
    assert client.cluster.health().body["status"] in ("green", "yellow")
    who = client.security.authenticate().body
    assert who["username"] == "esdistill" and "superuser" in who["roles"]


def test_ca_fingerprint_instead_of_ca_file(secure):
    pem = (secure.node / "config" / "certs" / "ca.crt").read_text()
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    cs = secure.client_settings().model_copy(update={"ca_certs": None, "ca_fingerprint": fingerprint})
    assert connect(cs).cluster.health().body["status"] in ("green", "yellow")


def test_unknown_api_key_fails_with_a_clear_message(secure):
    # The test build cannot mint API keys (its .security index needs analysis-common), so only the refusal of
    # an API key the cluster does not know is tested here; minting and using one needs the docker stack.
    cs = secure.client_settings().model_copy(update={"username": None, "password": None,
                                                     "api_key": SecretStr("bm90LWEta2V5OnJlYWxseS1ub3Q=")})
    with pytest.raises(ClusterError, match=r"refused the credentials \(401\)") as e:
        connect(cs)
    assert "bm90LWEta2V5" not in str(e.value)


def test_wrong_password_fails_with_a_clear_message(secure):
    cs = secure.client_settings().model_copy(update={"password": SecretStr("wrong-" + SECRET)})
    with pytest.raises(ClusterError, match=r"refused the credentials \(401\)") as e:
        connect(cs)
    assert SECRET not in str(e.value)


def test_credentials_scoped_to_indices_work_without_cluster_privileges(secure, es):
    """A role (an API key's, typically) that may read indices but not cluster health: connect goes on, and the
    user index's identity is read with a search instead of the stats it may not see."""
    from esdistill.indexing import bulk_index, index_identity

    admin = connect(secure.client_settings())
    # the secured node's data outlives a run (it lives under the shared esdistill home): start from nothing
    admin.indices.delete(index="scoped-docs", ignore_unavailable=True)
    admin.indices.create(index="scoped-docs", mappings={"properties": {"text": {"type": "text"}}})
    bulk_index(admin, "scoped-docs", ({"_id": str(i), "_source": {"text": f"doc {i}"}} for i in range(5)))
    admin.indices.refresh(index="scoped-docs")
    secure.add_user("reader", "reader-pass-1", ["esdistill_reader"], {
        "esdistill_reader": {"indices": [{"names": ["scoped-*"], "privileges": ["read"]}]}})
    cs = secure.client_settings().model_copy(update={"username": "reader", "password": SecretStr("reader-pass-1")})
    reader = None
    for _ in range(50):  # the file realm reloads users and roles within seconds
        try:
            reader = connect(cs)
            break
        except ClusterError:
            import time

            time.sleep(0.2)
    assert reader is not None, "the scoped user was never accepted"
    with pytest.raises(Exception):  # noqa: B017 - the point: this user really lacks cluster privileges
        reader.cluster.health()
    assert reader.count(index="scoped-docs").body["count"] == 5
    before = index_identity(reader, "scoped-docs")
    assert before["from"] == "search" and before["count"] == 5 and before["indices"] == ["scoped-docs"]
    admin.index(index="scoped-docs", id="2", document={"text": "edited"}, refresh=True)  # an edit, same count
    after = index_identity(reader, "scoped-docs")
    assert after["count"] == 5 and after != before
    admin.indices.delete(index="scoped-docs")


def _scoped_user(secure, name: str, password: str, privileges: list[str]):
    """A user of the secured node whose role grants only ``privileges`` on ``scoped-*`` (no cluster privilege)."""
    import time

    role = f"esdistill_{name}"
    secure.add_user(name, password, [role], {role: {"indices": [{"names": ["scoped-*"], "privileges": privileges}]}})
    cs = secure.client_settings().model_copy(update={"username": name, "password": SecretStr(password)})
    for _ in range(50):  # the file realm reloads users and roles within seconds
        try:
            return connect(cs)
        except ClusterError:
            time.sleep(0.2)
    raise AssertionError(f"the scoped user {name} was never accepted")


def _load(admin, index: str, texts: list[str]) -> None:
    """``index`` deleted and loaded again: the same ids in the same order (so the same ``_seq_no``s and count)."""
    from esdistill.indexing import bulk_index

    admin.indices.delete(index=index, ignore_unavailable=True)
    admin.indices.create(index=index, mappings={"properties": {"text": {"type": "text"}}})
    bulk_index(admin, index, ({"_id": str(i), "_source": {"text": t}} for i, t in enumerate(texts)))
    admin.indices.refresh(index=index)


def test_a_recreated_index_is_seen_without_the_monitor_privilege(secure):
    """Deleted and loaded again under the same name with the same count and the same write sequence (every stage
    would have reused its output): a user with ``read`` only still sees it — the index's UUID, read from a point
    in time — and a user who may only search gets a document sample that sees this reload, with a warning that
    a re-creation keeping the sample could not be seen."""
    from esdistill.errors import EsdistillWarning
    from esdistill.indexing import index_identity

    admin = connect(secure.client_settings())
    reader = _scoped_user(secure, "reader", "reader-pass-1", ["read"])
    searcher = _scoped_user(secure, "searcher", "searcher-pass-1", ["indices:data/read/search"])
    index = "scoped-recreated"
    try:
        _load(admin, index, [f"doc {i}" for i in range(5)])
        before = index_identity(reader, index)
        uuid = admin.indices.get_settings(index=index).body[index]["settings"]["index"]["uuid"]
        assert before["from"] == "search" and before["uuids"] == {index: uuid}
        with pytest.warns(EsdistillWarning, match="cannot be detected"):
            sampled = index_identity(searcher, index)
        assert "uuids" not in sampled and sampled["sample"]
        _load(admin, index, [f"another doc {i}" for i in range(5)])
        after = index_identity(reader, index)
        assert {k: v for k, v in after.items() if k != "uuids"} == {k: v for k, v in before.items() if k != "uuids"}
        assert after != before  # only the UUID tells them apart
        with pytest.warns(EsdistillWarning):
            assert index_identity(searcher, index)["sample"] != sampled["sample"]
    finally:
        admin.indices.delete(index=index, ignore_unavailable=True)


def test_untrusted_certificate_fails_with_a_clear_message(secure):
    cs = secure.client_settings().model_copy(update={"ca_certs": None})
    with pytest.raises(ClusterError, match="TLS verification failed") as e:
        connect(cs)
    assert "CA_CERTS" in str(e.value)


def test_secret_never_appears_in_any_output(secure, tmp_path, tiny_models):
    """The whole loop against the secured node with the password in the config file — in its ``[cluster]`` table
    and in the URL, whose user info is what authenticates (``https://user:password@host``: the client turns it into
    Basic auth) — must not show it in stdout, stderr, any file of the work dir (caches, models, report.json) or
    the results index; nor may the failing runs' error messages (a wrong password, a wrong URL)."""
    cfg = tmp_path / "c.toml"
    url = secure.s.url.replace("https://", f"https://esdistill:{SECRET}@")
    cfg.write_text(f'workdir = "{tmp_path / "work"}"\n[cluster]\nurl = "{url}"\npassword = "{SECRET}"\n'
                   f'[data]\nname = "sec"\nbeir = "{SCIFACT}"\n'
                   "max_train_queries = 6\nmax_test_queries = 3\nmax_corpus_docs = 40\n[candidates]\nk = 5\n"
                   f'[teacher]\nmodel = "{tiny_models["ce"]}"\nmax_length = 32\n'
                   f'[train]\nbase_model = "{tiny_models["bi"]}"\nnegatives = 2\nepochs = 1\nmax_length = 32\n'
                   "dev_fraction = 0.0\n[evaluate]\nrerank_depth = 5\nk = 10\nnum_candidates = 20\n")
    # no ESDISTILL_ES_USERNAME: the URL's user info is the only login (the [cluster] password is used with a user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESDISTILL_ES_")}
    env.update(ESDISTILL_ES_CA_CERTS=str(secure.node / "config/certs/ca.crt"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "esdistill", "run", "-c", str(cfg)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [proc.stdout, proc.stderr]
    # failing runs with the secret in the environment, whose error messages are the most likely place for a leak
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text(cfg.read_text().replace(f'url = "{url}"\npassword = "{SECRET}"\n', ""))
    assert SECRET not in bad_cfg.read_text()
    bad = dict(env, ESDISTILL_ES_URL=secure.s.url, ESDISTILL_ES_USERNAME="esdistill",
               ESDISTILL_ES_PASSWORD=SECRET + "x")
    proc = subprocess.run([sys.executable, "-m", "esdistill", "index", "-c", str(bad_cfg)], capture_output=True,
                          text=True, env=bad)
    assert proc.returncode == 2 and "401" in proc.stderr
    outputs += [proc.stdout, proc.stderr]
    bad = dict(env, ESDISTILL_ES_URL=secure.s.url.replace("https://", f"https://esdistill:{SECRET}x@"))
    proc = subprocess.run([sys.executable, "-m", "esdistill", "index", "-c", str(bad_cfg)], capture_output=True,
                          text=True, env=bad)
    assert proc.returncode == 2 and "401" in proc.stderr and "https://**********@127.0.0.1" in proc.stderr
    outputs += [proc.stdout, proc.stderr]
    for text in outputs:
        assert SECRET not in text
    files = [p for p in Path(tmp_path / "work").rglob("*") if p.is_file()]
    reports = [p for p in files if p.name == "report.json"]
    assert reports  # the loop really ran to the end
    shown = json.loads(reports[0].read_text())["config"]["cluster"]
    assert shown["password"] == "**********" and shown["url"] == f"https://**********@127.0.0.1:{PORT}"  # redacted
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    client = connect(secure.client_settings())
    client.indices.refresh(index="esdistill-results")
    docs = client.search(index="esdistill-results", size=1000).body["hits"]["hits"]
    assert docs and all(SECRET not in json.dumps(d["_source"]) for d in docs)


def test_urls_with_credentials_are_redacted_in_results_documents_and_bench_files(secure, tmp_path, monkeypatch):
    """The one redaction (:func:`esdistill.redact.redact`) on the other writers: a results-index document whose
    fields hold a URL with credentials (stored on the real node, read back), and a bench result file written by
    ``bench/common.py`` from a config dump and a command line that both hold one."""
    import importlib.util

    from esdistill.config import build_config
    from esdistill.redact import redact
    from esdistill.results import doc_id, write_results

    planted = f"https://esdistill:{SECRET}@127.0.0.1:{PORT}"
    assert redact(planted) == f"https://**********@127.0.0.1:{PORT}"
    assert redact(f"https://u:{SECRET}@x@h:1/p?to=a@b") == "https://**********@h:1/p?to=a@b"  # a raw @ in a password
    assert redact("see https://h:9200/p?mail=a@b and x@y") == "see https://h:9200/p?mail=a@b and x@y"
    client = connect(secure.client_settings())
    doc = {"run_id": "redact-test", "evaluate_key": "redact-test", "system": "bm25", "doc_type": "system",
           "dataset": "sec", "model_id": planted, "teacher_id": f"request-{planted}"}
    try:
        assert write_results(client, [doc]) == 1
        hits = client.search(index="esdistill-results", query={"term": {"run_id": "redact-test"}}).body["hits"]["hits"]
        assert len(hits) == 1 and SECRET not in json.dumps(hits[0]["_source"])
        assert hits[0]["_source"]["model_id"] == f"https://**********@127.0.0.1:{PORT}"
    finally:  # the node outlives the run: never leave a document behind (the loop's test scans them all)
        client.options(ignore_status=404).delete(index="esdistill-results", id=doc_id(doc), refresh=True)

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).resolve().parent.parent / "bench"
                                                  / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    cfg = build_config({"data": {"name": "sec", "beir": str(SCIFACT)}, "cluster": {"url": planted}})
    assert cfg.cluster_settings().url == planted  # the client still gets the credentials
    monkeypatch.setattr(sys, "argv", ["bench/run.py", "--url", planted])
    path = common.write_result(tmp_path, "x", {"config": json.loads(cfg.model_dump_json()), "hardware": {"cpu": "x"}})
    text = path.read_text()
    assert SECRET not in text and json.loads(text)["config"]["cluster"]["url"] == f"https://**********@127.0.0.1:{PORT}"
