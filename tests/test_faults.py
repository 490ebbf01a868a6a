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


def test_bulk_rejections_are_retried_shown_and_nothing_is_lost():
    """A node whose write queue holds one request: concurrent writers make it answer 429."""
    lc = LocalCluster(LocalClusterSettings(port=PORT + 20, heap="512m", extra_settings={
        "thread_pool.write.size": "1", "thread_pool.write.queue_size": "1"}))
    lc.start()
    try:
        client = connect(ClusterSettings(url=lc.s.url, request_timeout=30))
        from esdistill.indexing import bulk_index

        for name in ("noise", "target"):
            client.indices.delete(index=name, ignore_unavailable=True)
            client.indices.create(index=name, settings={"number_of_shards": 1, "number_of_replicas": 0})
        stop = threading.Event()

        def noise():
            c = connect(ClusterSettings(url=lc.s.url, request_timeout=30), check=False)
            i = 0
            while not stop.is_set():
                try:
                    c.bulk(operations=[x for j in range(200) for x in ({"index": {"_index": "noise"}},
                                                                          {"n": i * 1000 + j})])
                except Exception:  # noqa: BLE001 - the noise may be rejected too; it only has to exist
                    pass
                i += 1

        threads = [threading.Thread(target=noise) for _ in range(4)]
        for t in threads:
            t.start()
        retries = []
        try:
            ok, errors = bulk_index(client, "target", ({"_id": f"d{i}", "_source": {"n": i}} for i in range(3000)),
                                    chunk_size=100, on_retry=lambda a, n, w: retries.append((a, n, w)),
                                    initial_backoff=0.2, max_backoff=2.0, max_retries=30)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert retries, "the node never pushed back; the test proved nothing"
        assert ok == 3000 and not errors
        assert count(client, "target") == 3000 and existing_ids(client, "target") == {f"d{i}" for i in range(3000)}
    finally:
        lc.stop()
