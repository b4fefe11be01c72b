# Coil build, test and demo entry points. `make test` and `make demo` install
# what they need (Debian packages, Go tools) on a fresh Debian machine.

GO        ?= go
CACHE_DIR ?= $(HOME)/.cache/coil

CNI_VERSION     := v1.3.1
PLUGINS_VERSION := v1.9.1
# Reference CNI client and plugins, cached outside the clone and keyed by
# version. Built static (CGO_ENABLED=0, -trimpath, -s -w) as the upstream
# release tarballs and Coil's image are, so that benchmarks compare what
# users run: a cgo binary spends ~1-2 ms more CPU starting (the dynamic
# loader and libc), paid on every CNI command.
CNI_BIN := $(CACHE_DIR)/cni-$(CNI_VERSION)-plugins-$(PLUGINS_VERSION)-static
STATIC_GO := CGO_ENABLED=0 $(GO)
STATIC_FLAGS := -trimpath -ldflags='-s -w'
CNI_PLUGINS := main/ptp ipam/host-local meta/tuning meta/portmap meta/bandwidth main/loopback

ETCD_VERSION := $(shell $(GO) list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
# etcd and etcdctl built from the etcd Go modules, cached like the CNI tools.
ETCD_BIN := $(CACHE_DIR)/etcd-$(ETCD_VERSION)

# libseccomp-dev: runc of the real-node tests is built with seccomp.
APT_PACKAGES := iproute2 iputils-ping nftables bird2 libseccomp-dev

# Each command on its own, and hypercoil: all of them in one executable
# (the image's), acting as the command it is called as.
BINARIES := coil coild coilctl coil-controller coil-installer coil-egress hypercoil

# The runtime image and the sandbox ("pause") image of the test nodes, which
# `make image` writes as tarballs into bin/ (no Docker engine needed).
IMAGE       ?= ghcr.io/coil-project/coil:dev
PAUSE_IMAGE ?= coil.local/pause:3.10

export CNI_BIN_DIR := $(CNI_BIN)
export ETCD_BIN_DIR := $(ETCD_BIN)
export COIL_CACHE_DIR := $(CACHE_DIR)

.PHONY: all build image test vet fuzz mtest soak demo demo-cnitool demo-down kube-apiserver kube-node bench deps apt-deps cni-tools etcd-tools clean

all: build

# Static like the image's binaries (and sharing their build cache entries).
build:
	@mkdir -p bin
	$(STATIC_GO) build -trimpath -o bin/ $(addprefix ./,$(BINARIES))

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Unit and integration tests: real etcd (embedded), real network namespaces
# (needs root), the reference CNI client. The end-to-end suite is `make mtest`.
test: deps vet kube-apiserver
	$(GO) test -count=1 $$($(GO) list ./... | grep -v '/mtest$$' | grep -v /mtest/demo | grep -v /mtest/soak)

# Fuzz every decoder of untrusted input (etcd records, REST bodies, CNI
# netconf) for FUZZTIME each. `make test` runs their checked-in seed
# corpora (testdata/fuzz/) as plain tests.
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	./model:FuzzDecodeBlock ./model:FuzzDecodeAddress ./model:FuzzDecodePool \
	./model:FuzzDecodeNode ./model:FuzzDecodeEgress \
	./coild/server:FuzzRequestBodies ./coild/server:FuzzDecodeAllocFast \
	./coil/plugin:FuzzParseNetConf ./coil/plugin:FuzzParsePodArgs

fuzz: deps
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# End-to-end: multi-node clusters of network namespaces with real etcd,
# kube-apiserver (built once into the cache), coild, coil-controller, BIRD;
# and real nodes (kubelet, containerd, runc; Coil installed from deploy/
# with the image of `make image`).
# The short chaos soak (mtest/soak, a few minutes) runs after the scenarios,
# one package at a time (-p 1): both build clusters.
mtest: deps build image kube-apiserver kube-node
	$(GO) test -count=1 -timeout 40m -p 1 -v ./mtest/ ./mtest/soak/

# The full chaos soak: 10,000 pod lifecycles under faults, its report
# written into docs/reliability.md. SOAK_ARGS replays a run (-seed N ...).
SOAK_ARGS ?=
soak: deps build kube-apiserver
	$(GO) run ./mtest/soak/run $(SOAK_ARGS)

# A local 3-node cluster of kubelet nodes with Coil installed from deploy/,
# left running; `make demo-down` removes it.
demo: deps build image kube-apiserver kube-node
	$(GO) run ./mtest/demo up

# The same demo without kubelet nodes: coild started directly, the CNI
# reference client standing in for the kubelet.
demo-cnitool: deps build kube-apiserver
	$(GO) run ./mtest/demo up --cnitool

demo-down:
	$(GO) run ./mtest/demo down

kube-apiserver:
	$(GO) run ./internal/testenv/kubeapi/ensure

# kubelet, kube-scheduler, kube-controller-manager and kubectl from the
# Kubernetes module, containerd and runc from theirs, cached like the API
# server (the first build takes about 10 minutes on two cores).
kube-node:
	$(GO) run ./internal/testenv/kubenode/ensure

# Benchmarks against references measured in the same run; rewrites the
# generated part of docs/benchmarks.md and the throughput chart.
bench: deps
	$(GO) run ./mtest/bench

deps: apt-deps cni-tools etcd-tools

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (network namespace tests need it)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

cni-tools: $(CNI_BIN)/.done

$(CNI_BIN)/.done:
	@mkdir -p $(CNI_BIN)
	GOBIN=$(CNI_BIN) GOFLAGS=-mod=mod $(STATIC_GO) install $(STATIC_FLAGS) github.com/containernetworking/cni/cnitool@$(CNI_VERSION)
	GOBIN=$(CNI_BIN) GOFLAGS=-mod=mod $(STATIC_GO) install $(STATIC_FLAGS) $(addprefix github.com/containernetworking/plugins/plugins/,$(addsuffix @$(PLUGINS_VERSION),$(CNI_PLUGINS)))
	@touch $@

etcd-tools: $(ETCD_BIN)/.done

$(ETCD_BIN)/.done:
	@mkdir -p $(ETCD_BIN)
	@# etcd's modules carry replace directives, so `go install mod@version`
	@# refuses them; build them through this module, which pins the version.
	$(GO) build -o $(ETCD_BIN)/etcd go.etcd.io/etcd/server/v3
	$(GO) build -o $(ETCD_BIN)/etcdctl go.etcd.io/etcd/etcdctl/v3
	@touch $@

# The runtime image as bin/coil-image.tar and the pause image as
# bin/pause-image.tar, built with go-containerregistry (internal/image):
# `ctr -n k8s.io images import`, `docker load` or `crane push` take them.
# With a Docker engine, `docker build -t $(IMAGE) .` builds the same files.
image:
	GO=$(GO) $(GO) run ./internal/image/build --image=$(IMAGE) --out=bin/coil-image.tar \
		--pause-image=$(PAUSE_IMAGE) --pause-out=bin/pause-image.tar

clean:
	rm -rf bin
