#!/usr/bin/env bash
# What the test suite needs on top of the demo's setup (scripts/setup.sh, run first): the test extras in .venv
# (pytest, jsonschema, Ray, ONNX), Go for the Compose Specification's schema (tests/test_docker.py), the
# application clients of examples/ (tests/test_clients.py: Node.js and npm, a JDK >= 17 and Maven), and a JDK 11-23
# for the local OpenSearch node (tests/test_opensearch_node.py).
# scripts/test.sh (and so CI, .ci/run) runs it. Idempotent: a second run checks and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ESDISTILL_SETUP_OPENSEARCH=1 bash scripts/setup.sh   # with the JDK of the local OpenSearch node

apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "please install: $*" >&2; return 1
  fi
}

stamp=.venv/.esdistill-test-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet -e ".[test]"
  touch "$stamp"
fi
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || apt_install golang-go   # fetches the Compose schema
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
command -v mvn >/dev/null || apt_install maven   # setup.sh skips it when ESDISTILL_ES_URL names a remote cluster
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
echo "test-setup: ok (test extras, Compose schema, Node.js and Java example clients, a JDK for OpenSearch)" >&2
