# env.sh is sourced by the other scripts: it puts Go on PATH and lets an older
# Go fetch the toolchain go.mod names.
if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; fi
export PATH="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$PATH"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
