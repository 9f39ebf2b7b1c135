#!/usr/bin/env bash
# Installs the real Docker 29 environment used by the e2e tests and the demo:
# dockerd, containerd, containerd-shim-runc-v2 and runc built from source into
# one cache dir, plus busybox-static (image rootfs) and iptables from apt. The
# docker client on PATH is used; only when there is none is one built into the
# cache too. e2e/internal/dockerenv finds everything there.
#
# Idempotent: every binary already present in the cache is skipped.
#
#   KNM_CACHE   cache dir (default /var/cache/kata-netmon); binaries go to $KNM_CACHE/bin
#
# GOMODCACHE/GOCACHE are left at their defaults.
set -euo pipefail

KNM_CACHE="${KNM_CACHE:-/var/cache/kata-netmon}"
BIN="$KNM_CACHE/bin"

DOCKERD_PKG="github.com/moby/moby/v2/cmd/dockerd@v2.0.0-beta.24"
CONTAINERD_VERSION="v2.3.5"
CONTAINERD_PKG="github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}"
SHIM_PKG="github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}"
RUNC_PKG="github.com/opencontainers/runc@v1.5.2"
# Only used when no docker client is on PATH (the machine image ships 28.2.2).
DOCKER_CLI_VERSION="v29.9.3+incompatible"
# docker/cli has no go.mod (only vendor.mod, and module zips carry no vendor/),
# so `go install github.com/docker/cli/cmd/docker@...` resolves the wrong
# versions. We build from vendor.mod instead, with two substitutions because the
# proxy refuses two of its requirements (403): swarmkit v2.1.3 -> the
# pseudo-version dockerd v2.0.0-beta.24 itself uses, and go-rosetta (macOS-only
# Rosetta detection) -> a local one-function stub.
SWARMKIT_VERSION="v2.1.3-0.20260828175525-ad0357aedfca"

log() { printf '[deps-docker] %s\n' "$*" >&2; }

# timed NAME CMD...: runs CMD and prints how long it took.
timed() {
	local name="$1"
	shift
	local start=$EPOCHREALTIME
	"$@"
	log "$(printf '%-26s %6.1fs' "$name" "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')")"
}

if [[ $EUID -ne 0 ]]; then
	log "must run as root (apt-get, and the e2e tests need root anyway)"
	exit 1
fi
command -v go >/dev/null || { log "go not found on PATH"; exit 1; }

script_start=$EPOCHREALTIME
mkdir -p "$BIN"

# Builds go to temporary dirs inside the cache and are moved into place when
# complete, so an interrupted build never leaves a half-written binary that a
# later run would take as cached.
tmpdirs=()
trap 'if ((${#tmpdirs[@]})); then rm -rf "${tmpdirs[@]}"; fi' EXIT

# --- apt packages (only the missing ones; apt-get update at most once) -------
apt_updated=0
apt_install() {
	local missing=()
	local p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			missing+=("$p")
		fi
	done
	if ((${#missing[@]} == 0)); then
		return 0
	fi
	if ((apt_updated == 0)); then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		apt_updated=1
	fi
	log "apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

timed "apt packages" apt_install libseccomp-dev pkg-config iptables busybox-static

# --- go builds ----------------------------------------------------------------
# build NAME PKG [go install flags...]: GOBIN=$BIN go install unless $BIN/NAME exists.
build() {
	local name="$1" pkg="$2"
	shift 2
	if [[ -x "$BIN/$name" ]]; then
		log "$(printf '%-26s cached' "$name")"
		return 0
	fi
	log "building $name ($pkg)"
	local tmp
	tmp=$(mktemp -d "$KNM_CACHE/.build-$name.XXXXXX")
	tmpdirs+=("$tmp")
	timed "$name" env GOBIN="$tmp" go install "$@" "$pkg"
	mv -f "$tmp/$name" "$BIN/$name"
}

build runc "$RUNC_PKG" -tags seccomp
build containerd-shim-runc-v2 "$SHIM_PKG"
build containerd "$CONTAINERD_PKG"
build dockerd "$DOCKERD_PKG"

# --- docker client --------------------------------------------------------------
build_docker_cli() {
	local tmp="$1" moddir src
	moddir=$(go mod download -json "github.com/docker/cli@$DOCKER_CLI_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[[ -n "$moddir" ]] || { log "go mod download github.com/docker/cli@$DOCKER_CLI_VERSION failed"; return 1; }
	src="$tmp/src"
	cp -r "$moddir" "$src"
	chmod -R u+w "$src"
	cp "$src/vendor.mod" "$src/go.mod"
	cp "$src/vendor.sum" "$src/go.sum"
	mkdir -p "$tmp/rosetta"
	printf 'module github.com/tonistiigi/go-rosetta\n\ngo 1.18\n' >"$tmp/rosetta/go.mod"
	printf '// Package rosetta stands in for the macOS-only original: never under Rosetta on Linux.\npackage rosetta\n\nfunc Enabled() bool { return false }\n' >"$tmp/rosetta/rosetta.go"
	local version="${DOCKER_CLI_VERSION#v}"
	version="${version%+incompatible}"
	(
		cd "$src"
		go mod edit -replace "github.com/tonistiigi/go-rosetta=$tmp/rosetta" \
			-replace "github.com/moby/swarmkit/v2=github.com/moby/swarmkit/v2@$SWARMKIT_VERSION"
		GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod go build \
			-ldflags "-X github.com/docker/cli/cli/version.Version=$version" -o "$tmp/docker" ./cmd/docker
	)
}

if docker_path=$(command -v docker 2>/dev/null); then
	log "$(printf '%-26s %s (on PATH)' docker "$docker_path")"
elif [[ -x "$BIN/docker" ]]; then
	log "$(printf '%-26s cached' docker)"
else
	log "building docker client (github.com/docker/cli@$DOCKER_CLI_VERSION)"
	cli_tmp=$(mktemp -d "$KNM_CACHE/.build-docker.XXXXXX")
	tmpdirs+=("$cli_tmp")
	timed docker build_docker_cli "$cli_tmp"
	mv -f "$cli_tmp/docker" "$BIN/docker"
fi

log "$(printf '%-26s %6.1fs' total "$(awk -v a="$script_start" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')")"
log "binaries in $BIN:"
ls -l "$BIN" >&2
