# `make run`: install what is missing, build in release mode, start the agent on built-in defaults.
# `make test`: install what the tests need, then run every test (as root, on the real kernel).

CARGO ?= cargo
ARGS ?=

# Build: clang compiles the BPF C; libbpf-sys (vendored libbpf) links libelf and zlib.
BUILD_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config make gcc bpftool
# Tests: packet-drop rules, netns/veth, a real Prometheus (promtool) and node_exporter,
# real containers (podman with runc, containerd) from a busybox-static image built locally.
TEST_PACKAGES := iptables nftables iproute2 prometheus prometheus-node-exporter curl procps \
	podman runc busybox-static containerd e2fsprogs util-linux mount coreutils

.PHONY: all build release run test deps test-deps vmlinux bench fmt lint clean

all: build

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call apt_install,$(BUILD_PACKAGES))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

test-deps: deps
	$(call apt_install,$(TEST_PACKAGES))

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

run: release
	./target/release/bianque run $(ARGS)

test: test-deps
	$(CARGO) test -- --test-threads=2

# Regenerate bpf/vmlinux.h from this machine's kernel BTF (committed, so builds do not need BTF).
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

bench: test-deps
	$(CARGO) bench --bench dropwatch
	$(CARGO) bench --bench events_overhead

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
