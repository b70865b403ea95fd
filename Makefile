# mosaic: `make demo` starts a local cluster and shows it working;
# `make test` runs every test suite (what CI runs).
SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
export CGO_ENABLED ?= 1

.PHONY: build demo test test-unit test-cluster lint clean

# The CLI (mosaic, and mosaicctl, to which it hands every command but run)
# is linked statically (no cgo): it starts for every `mosaic run`, and
# loading libc and starting cgo's threads took a quarter of its start.
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/mosaic ./cmd/mosaicctl
	$(GO) build -o bin/ ./cmd/mosaicd

demo: build
	./demo/demo.sh

# Everything CI runs: formatting and vet, unit and small integration tests
# with the race detector, then the multi-node and failure suites (real
# daemons in network namespaces; they need root).
test: lint test-unit test-cluster

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags cluster ./e2e/

test-unit:
	$(GO) test -race -count=1 ./...

test-cluster: build
	MOSAIC_BIN_DIR=$(CURDIR)/bin $(GO) test -tags cluster -count=1 -timeout 20m -v ./e2e/ 2>&1 | tee e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

clean:
	rm -rf bin e2e.log
