# hibdisk — two commands on a fresh Debian machine:
#   make run    serve a demo disk over NBD and print how to boot QEMU from it
#   make test   everything: lint, unit, conformance, crash, real peers, QEMU boot
GO          ?= go
BIN         := bin/hibdisk
TOOLS       := $(CURDIR)/build/tools
STATICCHECK := $(TOOLS)/staticcheck
STATICCHECK_VERSION := v0.8.2
# Go test timeout for the whole suite; CI allows 90 minutes, we aim far lower.
TEST_TIMEOUT ?= 20m

.PHONY: all build deps lint test bench bench-nbd run clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/hibdisk

# Debian packages of the real peers the tests use (apt-get, only when missing).
deps:
	scripts/deps.sh

$(STATICCHECK):
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './build/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

test: deps lint build
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./disklayer/ ./diffdisk/

# hibdisk vs qemu-nbd (qcow2 overlay) vs nbdkit memory, fio nbd engine.
bench-nbd: deps
	scripts/bench-nbd.sh

run: build
	scripts/run-demo.sh

clean:
	rm -rf bin build demo.db demo.db-wal demo.db-shm demo.sock
