#!/usr/bin/env bash
# test.sh runs Twill's whole test suite: unit, golden, fuzz seeds, and the
# privileged tests that build network namespaces (run it as root). With
# CI=true a privileged test whose requirements are missing fails instead of
# skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
. scripts/env.sh

echo "== go vet"
go vet ./...
echo "== build"
go build -o bin/twill ./cmd/twill
# The plugin needs no cgo; without it each ADD starts about 0.7 ms faster.
CGO_ENABLED=0 go build -o bin/twill-cni ./cmd/twill-cni
echo "== Kubernetes binaries (kube-apiserver, kubectl; cached by version)"
# The Kubernetes datastore tests run a real kube-apiserver. The first run on a
# machine builds it from the Go module proxy (about 10 minutes of two cores);
# later runs reuse the cache under /var/cache/twill/kube/<version>.
TWILL_KUBE_DIR="$(bash scripts/kube-build.sh kube-apiserver kubectl | tail -n 1)"
export TWILL_KUBE_DIR
echo "== go test"
# -p 1: the privileged tests share the kernel and two cores; serial runs are
# faster and more stable here than parallel ones.
go test -p 1 -count=1 -timeout 25m ./...
