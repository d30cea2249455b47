# Skiff: `make demo` runs a guest, `make test` runs every test.
# Both build what is missing; results are cached under $(SKIFF_CACHE).

SHELL := /bin/bash
export SKIFF_CACHE ?= $(HOME)/.cache/skiff
GUEST := build/guest
CARGO ?= cargo
VM_RUN := target/release/vm-run

.PHONY: all guest kernel initramfs agent-initramfs build test unit-test demo bench clean rust

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

# Unit tests need no guest; the integration tests in tests/ boot real ones.
test: build guest
	$(CARGO) test --release --workspace --locked

demo: build guest
	@echo "== booting $(GUEST)/vmlinux with the debug initramfs: uname -a =="
	$(VM_RUN) --kernel $(GUEST)/vmlinux --initrd $(GUEST)/initramfs-debug.cpio --timeline -- uname -a

bench: build guest
	scripts/bench_boot.py

clean:
	$(CARGO) clean
	rm -rf build
