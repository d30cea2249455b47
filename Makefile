# Skiff: `make demo` runs a guest, `make test` runs every test.
# Both build what is missing; results are cached under $(SKIFF_CACHE).

SHELL := /bin/bash
export SKIFF_CACHE ?= $(HOME)/.cache/skiff
GUEST := build/guest
CARGO ?= cargo
VM_RUN := target/release/vm-run

.PHONY: all guest kernel initramfs agent-initramfs build test test-deps unit-test demo bench fuzz clean rust

all: build guest

rust:
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install it with rustup (https://rustup.rs), then re-run make" >&2; exit 1; }

kernel:
	resources/kernel/build.sh $(GUEST)

initramfs:
	guest/image/build-initramfs.sh $(GUEST)

agent-initramfs: rust
	guest/image/build-agent-initramfs.sh $(GUEST)

guest: kernel initramfs agent-initramfs

build: rust
	$(CARGO) build --release --workspace --locked

# Debian packages the tests need: protoc (the CRI client's protos), containerd
# and runc (the shim tests), busybox-static (their images), ping, ip and tc
# (the pod network checks), the CNI bridge and host-local plugins.
test-deps:
	@bash -c 'log() { printf "test-deps: %s\n" "$$*" >&2; }; die() { log "ERROR: $$*"; exit 1; }; \
		. scripts/apt-install.sh && apt_install protobuf-compiler containerd runc busybox-static iputils-ping iproute2 containernetworking-plugins'

# Unit tests need no guest; the integration tests in tests/ boot real ones.
# The shim and CRI tests also run on each containerd release found beside
# the work tree (scripts/containerd-releases.sh), unless SKIFF_CONTAINERD_DIRS
# already names some.
test: test-deps build guest
	dirs=$${SKIFF_CONTAINERD_DIRS-$$(scripts/containerd-releases.sh)}; \
		SKIFF_CONTAINERD_DIRS=$$dirs $(CARGO) test --release --workspace --locked

# A container in a Skiff sandbox through a private containerd.
demo: build guest
	scripts/demo.sh

# Every fuzz target for FUZZ_SECONDS each (scripts/fuzz.sh); `make test`
# replays their corpus and past findings in seconds.
FUZZ_SECONDS ?= 60
fuzz: rust
	@for t in virtio_fs virtio_blk virtio_net vsock mmio; do scripts/fuzz.sh $$t $(FUZZ_SECONDS) || exit 1; done

bench: build guest
	scripts/bench_boot.py

clean:
	$(CARGO) clean
	rm -rf build
