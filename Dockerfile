# Dockerfile: Twill's container image (twill and twill-cni), for users who
# have Docker or BuildKit:
#
#   docker build -t twill.dev/twill:v0.1.0-dev --build-arg VERSION=v0.1.0-dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/twill:TAG --push .
#
# This file is not built in Twill's development environment or CI, which
# have no Docker engine. Without Docker or a registry, build the same image
# from binaries with Twill itself (package image, tested there):
#
#   CGO_ENABLED=0 go build -trimpath -o bin/twill ./cmd/twill
#   CGO_ENABLED=0 go build -trimpath -o bin/twill-cni ./cmd/twill-cni
#   bin/twill image build -o twill-image.tar   # then: ctr -n k8s.io images import twill-image.tar
#
# Both give the same layout: /usr/local/bin/twill and /usr/local/bin/twill-cni
# (static binaries: the image has no C library and needs none, since Twill
# programs the kernel through netlink directly), /tmp with mode 1777, PATH
# including /usr/local/bin (the DaemonSet of `twill manifest` runs
# "twill install-cni" and "twill node run"), entrypoint twill, command
# "node run".

# The build stage runs on the builder's platform and cross-compiles for the
# target's (Go needs no emulation for that).
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=v0.1.0-dev
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN set -eu; \
    export CGO_ENABLED=0 GOOS="$TARGETOS" GOARCH="${TARGETARCH:-$(go env GOARCH)}"; \
    ld="-s -w -X twill.dev/twill/cli.Version=$VERSION -X twill.dev/twill/manifest.DefaultTag=$VERSION"; \
    mkdir -p /out/usr/local/bin /out/tmp; \
    chmod 1777 /out/tmp; \
    go build -trimpath -ldflags "$ld" -o /out/usr/local/bin/twill ./cmd/twill; \
    go build -trimpath -ldflags "$ld" -o /out/usr/local/bin/twill-cni ./cmd/twill-cni

# The final stage holds the two binaries and /tmp, nothing else.
FROM scratch
COPY --from=build /out/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/twill"]
CMD ["node", "run"]
