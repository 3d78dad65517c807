# The README's two commands: `make run` and `make test`. Both install what is missing.

CARGO    ?= cargo
DATA_DIR ?= $(CURDIR)/.rkube-data
# Where cargo puts binaries (honours CARGO_TARGET_DIR).
TARGET   := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# Debian packages the build and the tests need: protoc and its well-known protos
# (libprotobuf-dev) for the etcd-client and CRI crates' builds; a real etcd for the etcd
# backend's tests; runc, CNI plugins and nftables for the container runtime; busybox (test
# images), a registry and htpasswd (its basic auth) for the runtime's tests; containerd
# (CRI interop), curl and iproute2 for the kubelet's tests.
APT_PACKAGES := protobuf-compiler libprotobuf-dev etcd-server runc containernetworking-plugins nftables \
                busybox-static docker-registry apache2-utils containerd curl iproute2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps pyvenv build run test lint bench fuzz dist clean

## deps: install missing Debian packages (idempotent)
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The Python kubernetes client (PyPI) for the client-library tests, in a venv under target/.
PYVENV := $(CURDIR)/target/pyvenv
PY_PACKAGES := kubernetes==37.0.2

## pyvenv: the Python client the tests drive (idempotent)
pyvenv:
	@$(PYVENV)/bin/python -c "import kubernetes" 2>/dev/null || { \
	  echo "installing the Python kubernetes client into $(PYVENV)"; \
	  python3 -m venv $(PYVENV) && $(PYVENV)/bin/pip install -q $(PY_PACKAGES); }

build: deps
	$(CARGO) build --workspace

## run: build and start a single-node server on ./.rkube-data
run: build
	@echo "starting rkube server with data in $(DATA_DIR) (Ctrl-C stops it)"
	$(TARGET)/debug/rkube server --data-dir $(DATA_DIR) --write-kubeconfig $(DATA_DIR)/rkube.yaml

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: formatting, lints and every test (root-only tests skip loudly without root)
test: lint pyvenv
	$(CARGO) test --workspace

## fuzz: the property tests over request decoders and patch appliers, with many more
## cases than `make test` runs (FUZZ_CASES each)
FUZZ_CASES ?= 50000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p rkube-api --test patch_fuzz
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p rkube-apiserver --lib decode_fuzz

## bench: `rkube-bench` (crates/bench, not part of the shipped binary) measures a release
## `rkube`: datastore figures (embedded store vs a real etcd on the same disk), API server
## figures, scheduler_perf shapes, container runtime and kubelet figures (root:
## namespaces, mounts, runc)
bench: deps
	$(CARGO) build --release -p rkube -p rkube-bench
	$(TARGET)/release/rkube-bench datastore
	$(TARGET)/release/rkube-bench apiserver
	for shape in basic topology-spreading anti-affinity preemption; do \
		$(SUDO) $(TARGET)/release/rkube-bench scheduler --shape $$shape --dir /var/lib \
			$$([ $$shape = basic ] && echo --backlog) || exit 1; done
	$(SUDO) $(TARGET)/release/rkube-bench runtime
	$(SUDO) $(TARGET)/release/rkube-bench kubelet

## dist: the binary users download, in dist/rkube (the `dist` profile: stripped, LTO)
dist: deps
	$(CARGO) build --profile dist -p rkube
	@mkdir -p dist && cp $(TARGET)/dist/rkube dist/rkube
	@echo "dist/rkube: $$(stat -c %s dist/rkube) bytes"

clean:
	$(CARGO) clean
