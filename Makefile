# hibdisk — two commands on a fresh Debian machine:
#   make run    serve a demo disk over NBD and print how to boot QEMU from it
#   make demo   boot, hibernate, resume, diff, sqlite3: the whole story, unattended
#   make test   everything: lint, unit, conformance, crash, real peers (QEMU, versitygw), QEMU boot
GO          ?= go
BIN         := bin/hibdisk
TOOLS       := $(CURDIR)/build/tools
STATICCHECK := $(TOOLS)/staticcheck
STATICCHECK_VERSION := v0.8.2
# The S3 server the remote tests run (internal/s3test finds it here, or
# on PATH); ~2.5 minutes to build cold, then cached.
VERSITYGW   := $(TOOLS)/versitygw
VERSITYGW_VERSION := v1.8.0
# Go test timeout for the whole suite; CI allows 90 minutes, we aim far lower.
TEST_TIMEOUT ?= 20m
# The race detector instruments every package but SQLite itself: C
# translated to Go (go-sqlite3-wasm, 4.6 MB of it), used one connection
# per goroutine. Its loads and stores cost 15-35% of the SQLite-heavy
# tests' time under -race. Our code and the go-sqlite3 wrapper every
# connection is used through stay instrumented.
RACE := -race -gcflags=github.com/ncruces/go-sqlite3-wasm/...=-race=false

.PHONY: all build deps lint test fuzz bench bench-nbd bench-vm bench-scale run demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/hibdisk

# docs/hibdisk.1 from the commands' own usage (TestManPage fails when it is stale).
.PHONY: man
man:
	$(GO) run ./cmd/hibdisk man -o docs/hibdisk.1

# Debian packages of the real peers the tests use (apt-get, only when missing).
deps:
	scripts/deps.sh

$(STATICCHECK):
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(VERSITYGW):
	GOBIN=$(TOOLS) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './build/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	@cp go.mod build/go.mod.lint && cp go.sum build/go.sum.lint && $(GO) mod tidy && \
	  if ! cmp -s go.mod build/go.mod.lint || ! cmp -s go.sum build/go.sum.lint; then \
	    echo "go mod tidy changes go.mod/go.sum: run it and commit the result"; \
	    cp build/go.mod.lint go.mod; cp build/go.sum.lint go.sum; exit 1; fi

# go test runs two packages at a time (2 cores) in the order given: the
# longest go first, so that none of them starts last and runs alone.
SLOW_PACKAGES := ./test/qemu ./disklayer/sqlitelayer ./cmd/hibdisk ./diffdisk

test: deps lint build $(VERSITYGW)
	$(GO) test $(RACE) -timeout $(TEST_TIMEOUT) $(SLOW_PACKAGES) ./...

# Every native fuzz target for FUZZTIME each (go test runs one target at a
# time); the corpus grows under testdata/fuzz and $(go env GOCACHE)/fuzz.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$target"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./disklayer/sqlitelayer/ ./diffdisk/

# hibdisk vs qemu-nbd (qcow2 overlay) vs nbdkit memory, fio nbd engine.
bench-nbd: deps
	scripts/bench-nbd.sh

# First read, memory and convert over bases of 1, 4 and 16 GiB of data,
# and the space commit gives back (scripts/bench-scale.sh).
bench-scale: deps
	scripts/bench-scale.sh

run: build
	scripts/run-demo.sh

demo: build
	scripts/demo.sh

clean:
	rm -rf bin build demo.db demo.db-wal demo.db-shm demo.sock  # demo.*: what make run made before build/run

# Machine hibernate/resume of the u-root test guest at 512 MiB and 1 GiB,
# median of RUNS (default 5); BINS="a=BIN b=BIN" compares builds side by
# side, interleaved (scripts/bench-vm.sh).
bench-vm: build
	scripts/bench-vm.sh
