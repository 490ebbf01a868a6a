"""Faults against a real Elasticsearch that the test stops and restarts (its own node, not the shared one)."""

import os
import threading

import pytest

from esdistill.cluster import LocalCluster, connect
from esdistill.config import ClusterSettings, LocalClusterSettings
from esdistill.data import Doc
from esdistill.errors import ClusterError
from esdistill.indexing import build_bm25_index, count, existing_ids

PORT = int(os.environ.get("ESDISTILL_TEST_FAULT_PORT", "9270"))


@pytest.fixture
def own_cluster():
    lc = LocalCluster(LocalClusterSettings(port=PORT, heap="512m"))
    lc.start()
    yield lc
    lc.stop()


def test_es_stopped_mid_bulk_then_resumed_exactly(own_cluster):
    client = connect(ClusterSettings(url=own_cluster.s.url, request_timeout=10))
    corpus = {f"d{i}": Doc(f"d{i}", f"t{i}", "words " * 50 + str(i)) for i in range(3000)}
    index = "fault-bm25"
    client.indices.delete(index=index, ignore_unavailable=True)
    stopped = threading.Event()

    class StopMidway:
        """Progress hook: stops Elasticsearch once 1,000 documents are confirmed."""
        n = 0

        def add_task(self, *a, **k):
            return 0

        def advance(self, task, n):
            StopMidway.n += n
            if StopMidway.n == 1000 and not stopped.is_set():
                stopped.set()
                own_cluster.stop()

    with pytest.raises(ClusterError, match="lost Elasticsearch while bulk-indexing"):
        build_bm25_index(client, index, corpus, key="k", chunk_size=250, progress=StopMidway())
    assert stopped.is_set()
    own_cluster.start()
    client = connect(ClusterSettings(url=own_cluster.s.url, request_timeout=10))
    before = count(client, index)
    assert 0 < before < len(corpus)
    info = build_bm25_index(client, index, corpus, key="k", chunk_size=250)
    assert info["resumed"] and info["indexed"] == len(corpus) - before
    assert count(client, index) == len(corpus) and existing_ids(client, index) == set(corpus)
