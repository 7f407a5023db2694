#!/usr/bin/env bash
# kube-build.sh builds the real Kubernetes binaries that Twill's Kubernetes
# datastore tests and lab use (kube-apiserver and kubectl), from
# k8s.io/kubernetes through the Go module proxy, and caches them under a
# directory keyed by version, so only the first run pays for the build
# (10–25 minutes on two cores cold, depending on load; seconds afterwards).
#
# Usage: scripts/kube-build.sh [binary ...]   (default: kube-apiserver kubectl)
# Prints the cache directory on its last line. TWILL_KUBE_CACHE overrides the
# cache root (default /var/cache/twill/kube); TWILL_KUBE_VERSION the version.
set -euo pipefail

version="${TWILL_KUBE_VERSION:-v1.37.2}"
root="${TWILL_KUBE_CACHE:-/var/cache/twill/kube}"
out="$root/$version"
bins=("$@")
[ "${#bins[@]}" -gt 0 ] || bins=(kube-apiserver kubectl)

missing=()
for b in "${bins[@]}"; do
  [ -x "$out/bin/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "$out"
  exit 0
fi

minor="${version#v1.}"; minor="${minor%%.*}"
staging="v0.${version#v1.}"
src="$out/src"
mkdir -p "$src" "$out/bin"
cd "$src"

# A wrapper module: k8s.io/kubernetes requires its staging modules at v0.0.0
# and replaces them with local paths, which a dependent module cannot see, so
# every one is replaced here with its published v0.x release. The sample-*
# modules are not served by the proxy and are not needed.
if [ ! -f go.sum ]; then
  cat > go.mod <<MOD
module twill.dev/kubebuild

go 1.26
MOD
  cat > tools.go <<'GO'
//go:build tools

// Package kubebuild pins the Kubernetes commands Twill builds.
package kubebuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  GOFLAGS=-mod=mod go mod download "k8s.io/kubernetes@$version"
  kmod=$(go env GOMODCACHE)/k8s.io/kubernetes@$version/go.mod
  echo "require k8s.io/kubernetes $version" >> go.mod
  grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$kmod" | awk '{print $1}' | while read -r m; do
    case "$m" in k8s.io/sample-*) continue ;; esac
    echo "replace $m => $m $staging" >> go.mod
  done
  GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || GOFLAGS=-mod=mod go mod tidy
fi

ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for b in "${missing[@]}"; do
  echo "kube-build: building $b $version (cached afterwards in $out/bin)" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$out/bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$out/bin/$b.tmp" "$out/bin/$b"
done
echo "$out"
