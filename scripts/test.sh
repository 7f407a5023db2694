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
echo "== go test"
# -p 1: the privileged tests share the kernel and two cores; serial runs are
# faster and more stable here than parallel ones.
go test -p 1 -count=1 -timeout 25m ./...
