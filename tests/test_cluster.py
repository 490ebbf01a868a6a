"""The local Elasticsearch test build and connecting to clusters."""

import subprocess
import sys

import pytest

from esdistill.cluster import LocalCluster, connect, java_major
from esdistill.config import ClusterSettings
from esdistill.errors import ClusterError


def test_local_cluster_is_real_and_healthy(es, local_settings):
    st = LocalCluster(local_settings).status()
    assert st.running and st.health in ("green", "yellow")
    info = es.nodes.info().body
    (node,) = info["nodes"].values()
    assert node["version"] == local_settings.version
    assert node["host"] == "127.0.0.1"


def test_java_found_is_21_or_newer(local_settings):
    home = LocalCluster(local_settings).java_home()
    assert java_major(home) >= 21


def test_unreachable_cluster_names_url_and_fix():
    with pytest.raises(ClusterError) as e:
        connect(ClusterSettings(url="http://127.0.0.1:1", request_timeout=2))
    assert "http://127.0.0.1:1" in str(e.value)
    assert "ESDISTILL_ES_URL" in str(e.value)


def test_cli_unreachable_cluster_is_one_clear_message(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "x"\nbeir = "nowhere"\n[cluster]\nurl = "http://127.0.0.1:1"\nrequest_timeout = 2\n')
    proc = subprocess.run([sys.executable, "-m", "esdistill", "index", "-c", str(cfg)], capture_output=True,
                          text=True)
    # The cluster is checked before the data is read: the first problem reported is the cluster's.
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot reach Elasticsearch at http://127.0.0.1:1" in proc.stderr
