# kata-netmon. Everything runs as root on Linux; `make test` installs what
# it needs (Docker 29, containerd, runc, QEMU, a guest kernel) into
# $(KNM_CACHE) first, so a fresh machine needs nothing else.

GO        ?= go
KNM_CACHE ?= /var/cache/kata-netmon
export KNM_CACHE

.PHONY: all build deps deps-docker deps-guest vet test unit demo bench bench-guest fuzz kata clean

all: build

build:
	$(GO) build -o bin/kata-netmon ./cmd/kata-netmon

deps: deps-docker deps-guest

deps-docker:
	bash scripts/deps-docker.sh

deps-guest:
	bash scripts/deps-guest.sh

vet:
	$(GO) vet ./...

# The whole suite, race detector on. Under CI=true a missing prerequisite
# (not root, a missing binary) fails instead of skipping.
test: deps vet
	$(GO) test -race -count=1 -timeout 45m ./...

# Only what needs no Docker and no guest (still needs root for netns tests).
unit: vet
	$(GO) test -race -count=1 ./netmon/... ./matcher/... ./hotplug/... ./shimhook/... ./internal/... ./cmd/...

# The main job: a real Docker 29, the monitor and a real QEMU guest.
demo: deps build
	$(GO) run ./e2e/cmd/demo

# Benchmarks of the monitor itself, against an in-memory sandbox: attach
# latency (one iteration = one endpoint), idle cost, event absorption, and
# 200 monitors beside a lone one. Reports, not timed tests.
bench:
	$(GO) test -p 1 -run '^$$' -bench AttachLatency -benchtime 200x -count 1 ./e2e/bench/
	$(GO) test -p 1 -run '^$$' -bench 'Idle|UnrelatedEvents' -benchtime 1x -count 1 ./e2e/bench/
	$(GO) test -p 1 -run '^$$' -bench Load -benchtime 1x -count 1 ./e2e/load/

bench-guest: deps
	$(GO) test -run '^$$' -bench Guest -benchtime 1x -count 1 -timeout 30m ./e2e/benchguest/

# A short coverage-guided run of each fuzz target (the seeds run in `test`).
fuzz:
	@set -e; for f in $$($(GO) test -list '^Fuzz' ./matcher/ | grep ^Fuzz); do \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s ./matcher/; done

# Apply kata-netmon's patch series to a copy of a Kata source tree, run Kata's
# tests of what it touches and the Kata-in-the-loop tests there, and build
# Kata's shim with the monitor and the drop-in shim (as root; docs/kata.md).
# KATA_NETMON_WITHOUT_PCI_FIX=1 builds and tests a Kata without the PCI-path fix.
kata:
	@test -n "$(KATA_SRC)" || { echo "usage: make kata KATA_SRC=/path/to/kata-containers" >&2; exit 2; }
	bash shimhook/kata/build.sh "$(KATA_SRC)"

clean:
	rm -rf bin
