# syntax=docker/dockerfile:1
# Coil's image: hypercoil, the one executable that is coild, coilctl,
# coil-controller, coil-installer and coil-egress (the process of managed
# egress gateway pods), each a link to it in /usr/local/bin; the CNI plugin
# coil on its own (small: the runtime executes it for every ADD and DEL,
# and hypercoil's start-up would add to each); plus the
# reference CNI plugins the default configuration list chains
# (installed on a node only where it has none). Build it with
# `docker build -t ghcr.io/coil-project/coil:dev .` where a Docker engine
# runs. `make image` needs none: it builds the same files without Docker
# (internal/image) into the tarball bin/coil-image.tar. Keep the two in
# step: `go test ./internal/image/` compares the files this final stage
# copies with the ones `make image` puts in its image.

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath

# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download

COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/bin/ ./hypercoil ./coil
# One link per command: hypercoil runs the command it is called as.
RUN ln -s hypercoil /out/bin/coild && \
    ln -s hypercoil /out/bin/coilctl && ln -s hypercoil /out/bin/coil-controller && \
    ln -s hypercoil /out/bin/coil-installer && ln -s hypercoil /out/bin/coil-egress

# The reference plugins, at the version go.mod pins for the tests.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    version=$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins) && \
    GOBIN=/out/cni-plugins GOFLAGS="$GOFLAGS -mod=mod" go install -ldflags="-s -w" \
      github.com/containernetworking/plugins/plugins/meta/tuning@"$version" \
      github.com/containernetworking/plugins/plugins/meta/portmap@"$version" \
      github.com/containernetworking/plugins/plugins/meta/bandwidth@"$version" \
      github.com/containernetworking/plugins/plugins/main/loopback@"$version"

# Static binaries need no libc. The image runs as root by default: coild
# needs it (and its capabilities); the manifests run the other containers
# as an unprivileged user.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/cni-plugins/ /opt/coil/cni-plugins/
