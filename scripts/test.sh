#!/usr/bin/env bash
# The test suite against a real Elasticsearch: tests/conftest.py starts the local test build on port 9250
# (ESDISTILL_TEST_ES_PORT) when none is running there, and stops it again at the end; tests/test_opensearch_node.py
# does the same with the local OpenSearch node on port 9400 (ESDISTILL_TEST_OS_PORT; assembled from Maven Central
# the first time, about 100 s).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-setup.sh   # the demo's setup, then the test tooling (pytest, example clients, Compose schema)
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
