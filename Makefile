# twinsnap build, test, benchmark and demo entry points.
# Every target that needs system packages calls scripts/deps first, which
# installs what is missing on Debian 12 (as root) and is quick otherwise.

SHELL := /bin/bash
GO ?= go
CACHE := $(CURDIR)/.cache
export TWINSNAP_CACHE ?= $(CACHE)
GOLANGCI_VERSION := v2.6.2
GOLANGCI := $(CACHE)/bin/golangci-lint-$(GOLANGCI_VERSION)
FUZZTIME ?= 60s
TEST_TIMEOUT ?= 25m

.DEFAULT_GOAL := help
.PHONY: help deps build test bench demo lint fuzz clean

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install the system packages the project needs (idempotent).
	@scripts/deps

build: ## Build twinsnapd and twinsnap into bin/.
	@mkdir -p bin
	$(GO) build -o bin/ ./cmd/...

test: deps ## Run every test (integration tests against real QEMU, Samba, libvirtd) with -race.
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	# One package at a time: the integration tests boot TCG guests and start
	# clusters, and two such packages side by side starve each other on a
	# 2-core machine.
	$(GO) test -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...
	# The race detector slows encoding tenfold; the 100,000-record checkpoint
	# round trip runs at full size without it.
	$(GO) test -count=1 -run '^TestCheckpointLarge$$' ./cluster/state/
	@scripts/check-strays

bench: deps ## Run the benchmarks; print a table and write bench/results.json.
	$(GO) run ./internal/testenv/benchrun -out bench/results.json

demo: deps ## Run the demo on this machine.
	$(GO) run ./internal/testenv/demo

lint: $(GOLANGCI) ## go vet, gofmt and golangci-lint (with the import rules of DESIGN.md).
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GOLANGCI) run ./...

$(GOLANGCI):
	@mkdir -p $(CACHE)/bin $(CACHE)/lint-build
	GOBIN=$(CACHE)/lint-build $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)
	mv $(CACHE)/lint-build/golangci-lint $@

fuzz: ## Run every fuzz target for FUZZTIME (default 60s) each.
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
	  done; \
	done

clean: ## Remove build output and caches (guest images, linter).
	rm -rf bin bench/results.json bench/results.jsonl $(CACHE)
