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
# SYSTEMS=headline: the report also holds the zero-shot base, the log-only student and the judgments-only control
exec .venv/bin/esdistill demo --profile "${PROFILE:-quick}" ${SYSTEMS:+--systems "$SYSTEMS"}   # examples/scifact.toml on datasets/scifact.tar.xz
