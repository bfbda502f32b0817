# `make run`: install what is missing, build in release mode, start the agent on built-in defaults.
# `make test`: install what the tests need, then run every test (as root, on the real kernel).

CARGO ?= cargo
ARGS ?=

# Build: clang compiles the BPF C; libbpf-sys (vendored libbpf) links libelf and zlib.
BUILD_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config make gcc bpftool
# Tests: packet-drop rules, netns/veth, a real Prometheus (promtool) and node_exporter, real
# containers (podman with runc, containerd) from a busybox-static image built locally, and
# python3-venv for osmem-server (PyPI), the OpenSearch-API server the shipper tests talk to;
# a real headless browser (chromium, driven through chromium-driver) for the console tests;
# systemd (systemd-analyze verify), libcap2-bin (capsh) and passwd (useradd) for the unit tests,
# man-db and bsdextrautils (col) to render the man page, python3-yaml to turn the DaemonSet into a Pod.
TEST_PACKAGES := iptables nftables iproute2 prometheus prometheus-node-exporter curl procps \
	podman runc busybox-static containerd openssl e2fsprogs util-linux mount coreutils python3-venv python3-pip \
	chromium chromium-driver systemd libcap2-bin passwd man-db bsdextrautils python3-yaml
# Benchmarks: bpftrace is the peer the hot-path benchmark compares against.
BENCH_PACKAGES := bpftrace
OSMEM_VERSION := 0.1.6
OSMEM_VENV := $(CURDIR)/.test-deps/osmem

.PHONY: all build release run test deps test-deps vmlinux bench fmt lint clean image deb

all: build

# Installs the packages of $(1) that are missing (with their recommends: podman needs some).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q $$missing; \
	fi
endef

deps:
	$(call apt_install,$(BUILD_PACKAGES))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

test-deps: deps
	$(call apt_install,$(TEST_PACKAGES))
	@# kubectl parses the Kubernetes manifests; any recent one will do (Debian's when none is there).
	@command -v kubectl >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get -o DPkg::Lock::Timeout=300 install -y -q kubernetes-client; }
	@if ! $(OSMEM_VENV)/bin/python -c 'import osmem_server' >/dev/null 2>&1; then \
		echo "installing osmem-server $(OSMEM_VERSION) into $(OSMEM_VENV)"; \
		rm -rf $(OSMEM_VENV) && python3 -m venv $(OSMEM_VENV) && \
		$(OSMEM_VENV)/bin/pip install -q --disable-pip-version-check osmem-server==$(OSMEM_VERSION); \
	fi

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

run: release
	./target/release/bianque run $(ARGS)

test: test-deps
	@# One test at a time: kernel tests share one kernel, its rate limits, PSI and memory.
	$(CARGO) test --no-fail-fast -- --test-threads=1

# Regenerate bpf/vmlinux.h from this machine's kernel BTF (committed, so builds do not need BTF).
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

bench: test-deps
	$(call apt_install,$(BENCH_PACKAGES))
	$(CARGO) bench --bench dropwatch
	$(CARGO) bench --bench metrics_scrape
	$(CARGO) bench --bench containers
	$(CARGO) bench --bench shipper
	$(CARGO) bench --bench profiler
	$(CARGO) bench --bench events_overhead
	$(CARGO) bench --bench autotracing_idle
	$(CARGO) bench --bench console
	$(CARGO) bench --bench hotpaths

# The container image, built offline: the release binary and the libraries it links, FROM scratch.
IMAGE ?= localhost/bianque:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image: release
	deploy/container/stage.sh target/release/bianque target/image
	podman build -t $(IMAGE) target/image

# The Debian package (binary, systemd unit, /etc/bianque/bianque.toml, man page, completions).
deb: release
	deploy/deb/build.sh target/release/bianque target/deb

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
