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


def test_untrusted_certificate_fails_with_a_clear_message(secure):
    cs = secure.client_settings().model_copy(update={"ca_certs": None})
    with pytest.raises(ClusterError, match="TLS verification failed") as e:
        connect(cs)
    assert "CA_CERTS" in str(e.value)


def test_secret_never_appears_in_any_output(secure, tmp_path, tiny_models):
    """The whole loop against the secured node with the password in the environment: the secret must not be
    in stdout, stderr, any file of the work dir (caches, models, reports) or the results index."""
    cfg = tmp_path / "c.toml"
    # the password of the run that succeeds is in the config file's [cluster] table: it must never be dumped
    cfg.write_text(f'workdir = "{tmp_path / "work"}"\n[cluster]\npassword = "{SECRET}"\n'
                   f'[data]\nname = "sec"\nbeir = "{SCIFACT}"\n'
                   "max_train_queries = 6\nmax_test_queries = 3\nmax_corpus_docs = 40\n[candidates]\nk = 5\n"
                   f'[teacher]\nmodel = "{tiny_models["ce"]}"\nmax_length = 32\n'
                   f'[train]\nbase_model = "{tiny_models["bi"]}"\nnegatives = 2\nepochs = 1\nmax_length = 32\n'
                   "dev_fraction = 0.0\n[evaluate]\nrerank_depth = 5\nk = 10\nnum_candidates = 20\n")
    env = dict(os.environ, ESDISTILL_ES_URL=secure.s.url, ESDISTILL_ES_USERNAME="esdistill",
               ESDISTILL_ES_CA_CERTS=str(secure.node / "config/certs/ca.crt"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "esdistill", "run", "-c", str(cfg)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [proc.stdout, proc.stderr]
    # and a failing run with the secret in the environment, whose error message is the most likely place for a leak
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text(cfg.read_text().replace(f'password = "{SECRET}"\n', ""))
    bad = dict(env, ESDISTILL_ES_PASSWORD=SECRET + "x")
    proc = subprocess.run([sys.executable, "-m", "esdistill", "index", "-c", str(bad_cfg)], capture_output=True,
                          text=True, env=bad)
    assert proc.returncode == 2 and "401" in proc.stderr
    outputs += [proc.stdout, proc.stderr]
    for text in outputs:
        assert SECRET not in text
    files = [p for p in Path(tmp_path / "work").rglob("*") if p.is_file()]
    reports = [p for p in files if p.name == "report.json"]
    assert reports  # the loop really ran to the end
    assert json.loads(reports[0].read_text())["config"]["cluster"]["password"] == "**********"  # redacted
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    client = connect(secure.client_settings())
    client.indices.refresh(index="esdistill-results")
    docs = client.search(index="esdistill-results", size=1000).body["hits"]["hits"]
    assert docs and all(SECRET not in json.dumps(d["_source"]) for d in docs)
