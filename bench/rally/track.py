"""Rally parameter source of the esdistill track: the test queries' request bodies, one after another.

``queries`` (a track parameter) is a JSON-lines file written by ``bench/rally.py``: one object per query with
the body BM25 sends (``bm25``) and the student's kNN body with the query vector already computed (``knn``), so
Rally measures Elasticsearch alone, as applications query it."""

import json
import os


class EsdistillQueries:
    def __init__(self, track, params, **kwargs):
        self._index = params["index"]
        self._system = params["system"]
        path = params["queries"]
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(__file__), path)
        with open(path, encoding="utf-8") as f:
            self._bodies = [json.loads(line)[self._system] for line in f if line.strip()]
        if not self._bodies:
            raise ValueError(f"{path}: no queries")
        self._next = 0
        self.infinite = True

    def partition(self, partition_index, total_partitions):
        # each client starts at its own offset, so concurrent clients do not send the same query at once
        part = EsdistillQueries.__new__(EsdistillQueries)
        part.__dict__.update(self.__dict__)
        part._next = partition_index * len(self._bodies) // max(total_partitions, 1)
        return part

    def params(self):
        body = self._bodies[self._next % len(self._bodies)]
        self._next += 1
        return {"index": self._index, "body": body, "cache": False, "request-params": {}, "detailed-results": False}


def register(registry):
    registry.register_param_source("esdistill-queries", EsdistillQueries)
