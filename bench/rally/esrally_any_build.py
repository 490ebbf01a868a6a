"""``esrally`` for a cluster whose ``GET /`` is not served — Elasticsearch's integ-test build, which esdistill's
tests and benches run on, answers it with 405. Rally reads the version there only to name the distribution, so
this reads it from ``GET /_nodes/_local`` instead when ``GET /`` fails (and lets Rally's sync client skip its
``GET /`` product check), then runs Rally's own ``main``. Run it
with Rally's Python: ``.rally/bin/python bench/rally/esrally_any_build.py race …`` (``bench/rally.py`` does)."""

import sys

import esrally.client.factory as factory
import esrally.client.synchronous as synchronous

_info_version = factory.cluster_distribution_version


def cluster_distribution_version(hosts, client_options, client_factory=factory.EsClientFactory):
    try:
        return _info_version(hosts, client_options, client_factory)
    except Exception:  # noqa: BLE001 - GET / refused: the nodes API has the same facts
        es = client_factory(hosts, client_options).create()
        node = next(iter(es.nodes.info(node_id="_local")["nodes"].values()))
        return node.get("build_flavor", "default"), node["version"], node.get("build_hash", "unknown"), False


factory.cluster_distribution_version = cluster_distribution_version

# Rally's sync client checks the product with GET / before its first request (its async one, which sends the
# benchmark's requests, does not): trust the target as the async client does
_init = synchronous.RallySyncElasticsearch.__init__


def _trusting_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self._verified_elasticsearch = True


synchronous.RallySyncElasticsearch.__init__ = _trusting_init

if __name__ == "__main__":
    from esrally.rally import main

    sys.argv[0] = "esrally"
    sys.exit(main())
