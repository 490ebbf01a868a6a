#!/usr/bin/env bash
# The main job: the SciFact demo, all stages, against the configured cluster (ESDISTILL_ES_URL) or a local
# Elasticsearch test build started for it. PROFILE=full for the full profile. Reruns resume from the cache.
# ESDISTILL_ES_ENGINE=opensearch: the same demo on a local OpenSearch node (docs/opensearch.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
if [ -z "${ESDISTILL_ES_URL:-}" ]; then
  .venv/bin/esdistill cluster start
fi
exec .venv/bin/esdistill demo --profile "${PROFILE:-quick}"   # examples/scifact.toml on datasets/scifact.tar.xz
