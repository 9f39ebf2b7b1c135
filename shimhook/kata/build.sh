#!/usr/bin/env bash
# Build Kata with kata-netmon's patch series and kata-netmon, and test both,
# from a Kata source tree given on the command line (`make kata KATA_SRC=...`).
#
#   shimhook/kata/build.sh KATA_SRC
#
# KATA_SRC is a kata-containers checkout or export (the directory holding
# VERSION and src/runtime); it is never written to. Steps:
#
#  1. copy Kata's src/runtime and VERSION to $KATA_NETMON_WORK/kata (default
#     ~/.cache/kata-netmon/kata-build; never inside this repository) and
#     apply the series (shimhook/kata/series/00*.patch) with `git apply`,
#     stopping at the first patch that does not apply;
#  2. generate pkg/katautils/config-settings.go with Kata's Makefile rule;
#  3. run Kata's own unit tests of every file the series touches, and of the
#     source files it touches (virtcontainers, pkg/containerd-shim-v2);
#  4. require this repository's two modules from the copy's go.mod (require
#     + replace pointing at this checkout; no go.work);
#  5. copy shimhook/kata/kataloop/*_test.go into the copy's virtcontainers
#     and run the fix probes; each probe that passes sets a fix flag of the
#     adapter (-ldflags -X), a probe that fails or is missing leaves it off;
#  6. vet and test shimhook/kata, and run the Kata-in-the-loop tests;
#  7. build from the same copy Kata's containerd-shim-kata-v2 with
#     kata-netmon registered ("patch mode") and the drop-in
#     containerd-shim-kata-netmon-v2, into $KATA_NETMON_OUT (default
#     $KATA_NETMON_WORK/bin), and print a summary.
#
# Steps 3, 5 and 6 need root: they make network namespaces, taps, tc filters
# and macvtaps. They run in private network and mount namespaces
# (series/tools/in-private-ns.sh), so Kata's own tests, which use fixed link
# names, cannot touch the machine's network.
#
# Environment:
#   KATA_NETMON_WORK   work directory (default ~/.cache/kata-netmon/kata-build)
#   KATA_NETMON_OUT    where the binaries go (default $KATA_NETMON_WORK/bin)
#   KATA_NETMON_WITHOUT_PCI_FIX  1: after the series, apply
#                      series/tools/without-0001.patch, which puts Kata
#                      4.1.0's PCI path back into Sandbox.AddInterface (the
#                      first endpoint of the whole list): a Kata without the
#                      series' fix 0001, on which the probe finds the fix
#                      absent and the Kata-in-the-loop tests check the
#                      adapter's safety behaviour. The copy is then
#                      $KATA_NETMON_WORK/kata-without-0001, the binaries go
#                      to $KATA_NETMON_WORK/bin-without-0001. (0001 cannot
#                      simply be left out: the later patches build on it.)
#   KATA_NETMON_RACE   1 (default) runs the tests with -race
#   KATA_COMMIT        the commit, when KATA_SRC is not a git checkout
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
step() { echo "build.sh: == $*"; }

[ $# -eq 1 ] || die "usage: $0 KATA_SRC"
[ -d "$1" ] || die "KATA_SRC $1 is not a directory"
kata_src=$(cd "$1" && pwd -P)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
series=$here/series
tools=$series/tools
work=${KATA_NETMON_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-netmon/kata-build}
work=$(realpath -m "$work")
case "$work/" in "$repo"/*) die "KATA_NETMON_WORK ($work) must be outside the repository ($repo)" ;; esac
case "$kata_src/" in "$repo"/*) die "KATA_SRC must be outside the repository: never put Kata's code in it" ;; esac
without_pci_fix=${KATA_NETMON_WITHOUT_PCI_FIX:-0}
name=kata
bin=bin
if [ "$without_pci_fix" = 1 ]; then
	name=kata-without-0001
	bin=bin-without-0001
fi
out=${KATA_NETMON_OUT:-$work/$bin}
race=${KATA_NETMON_RACE:-1}
[ "$(id -u)" -eq 0 ] || die "Kata's tests and the Kata-in-the-loop tests need root (network namespaces, taps, tc)"
command -v git >/dev/null || die "git is needed to apply the series"
command -v make >/dev/null || die "make is needed to generate Kata's config-settings.go"
command -v unshare >/dev/null || die "unshare (util-linux) is needed to run the tests in private namespaces"

kata_mod=github.com/kata-containers/kata-containers/src/runtime
netmon_mod=github.com/kata-netmon/kata-netmon
grep -qs "^module $kata_mod\$" "$kata_src/src/runtime/go.mod" || die "$kata_src/src/runtime/go.mod is not module $kata_mod"
kata_version=$(cat "$kata_src/VERSION" 2>/dev/null || echo unknown)
kata_commit=${KATA_COMMIT:-$(git -C "$kata_src" rev-parse HEAD 2>/dev/null || true)}

# -p=2: the builds share a small machine (and a test binary's packages are
# compiled two at a time at most).
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false -p=2"
export GOWORK=off
race_flag=
[ "$race" = 1 ] && race_flag=-race
summary=()
note() { summary+=("$*"); }

# 1. The copy, with the series.
copy=$work/$name
logs=$work/$name-logs # logs and test binaries of this build
runtime=$copy/src/runtime
step "copying Kata $kata_version ${kata_commit:+($kata_commit) }from $kata_src to $copy"
rm -rf "$copy" "$logs"
mkdir -p "$copy/src" "$logs"
cp -a "$kata_src/src/runtime" "$runtime"
cp -L "$kata_src/VERSION" "$copy/VERSION"
rm -f "$runtime/pkg/katautils/config-settings.go" # generated below, from this copy

applied=()
patches=("$series"/00*.patch)
[ "$without_pci_fix" = 1 ] && patches+=("$tools/without-0001.patch")
for p in "${patches[@]}"; do
	base=$(basename "$p")
	# The copy is not a git repository; the ceiling keeps git from
	# applying relative to one that holds the work directory.
	if ! GIT_CEILING_DIRECTORIES=$work git -C "$copy" apply --check "$p" 2>"$logs/apply.log"; then
		cat "$logs/apply.log" >&2
		die "patch $base does not apply to Kata $kata_version ${kata_commit:+($kata_commit)}: see docs/kata.md for the Kata versions the series applies to"
	fi
	GIT_CEILING_DIRECTORIES=$work git -C "$copy" apply "$p"
	applied+=("$base")
done
note "patches applied: $(ls "$series"/00*.patch | wc -l) of the series"
for p in "${applied[@]}"; do
	case "$p" in
	without-0001.patch) note "  then $p: Kata 4.1.0's PCI path put back (KATA_NETMON_WITHOUT_PCI_FIX=1)" ;;
	*) note "  $p" ;;
	esac
done

# 2. Kata's generated file (VERSION, COMMIT, default paths). Without GOPATH
# (or with SKIP_GO_VERSION_CHECK) Kata's golang.mk does not try to
# download yq.
step "generating pkg/katautils/config-settings.go"
if ! (cd "$runtime" && env -u GOPATH make -s SKIP_GO_VERSION_CHECK=1 pkg/katautils/config-settings.go) >"$logs/make.log" 2>&1; then
	cat "$logs/make.log" >&2
	die "generating pkg/katautils/config-settings.go with Kata's Makefile failed"
fi
if [ -n "$kata_commit" ]; then
	sed -i "s|^var COMMIT = \"[^\"]*\"|var COMMIT = \"$kata_commit\"|" "$runtime/pkg/katautils/config-settings.go"
fi

in_ns() { "$tools/in-private-ns.sh" "$@"; }

# count_tests LOG: "N passed, M failed" of top-level tests.
count_tests() {
	echo "$(grep -c '^--- PASS' "$1" || true) passed, $(grep -c '^--- FAIL' "$1" || true) failed, $(grep -c '^--- SKIP' "$1" || true) skipped"
}

# run_test_binary NAME PKGDIR LOG ARGS...: run a compiled test binary in
# private namespaces, in its package directory.
run_test_binary() {
	local bin=$1 dir=$2 log=$3
	shift 3
	(cd "$dir" && in_ns "$bin" -test.v -test.count=1 -test.timeout 20m "$@") >"$log" 2>&1
}

# test_names DIR FILE...: the Test functions of those files, as a regex.
test_names() {
	local dir=$1
	shift
	(cd "$dir" && grep -hoP '^func \K(Test\w+)(?=\(t \*testing\.T\))' "$@" 2>/dev/null | sort -u | paste -sd'|')
}

# 3. Kata's own tests of what the series touches. The virtcontainers tests
# are those of the test files the series changes and of the test files of
# the source files it changes; the shim package runs whole.
step "Kata's unit tests of the files the series touches"
touched=$(cat "$series"/00*.patch | sed -n 's|^+++ b/src/runtime/||p' | sort -u)
vc_files=()
for f in $touched; do
	case "$f" in
	virtcontainers/*_test.go) vc_files+=("${f#virtcontainers/}") ;;
	virtcontainers/*.go)
		t=${f#virtcontainers/}
		t=${t%.go}_test.go
		[ -f "$runtime/virtcontainers/$t" ] && vc_files+=("$t")
		;;
	esac
done
mapfile -t vc_files < <(printf '%s\n' "${vc_files[@]}" | sort -u)
# These fail at Kata 4.1.0 already wherever the sandbox's resource
# controller cannot be created ("failed to add any hypervisor device to
# devices cgroup"), and then panic, which would end the test binary.
vc_skip='TestSandboxSetSandboxAndContainerState|TestSandboxGetContainer|TestContainerStateSetFstype|TestCreateContainer|TestDeleteContainer|TestStartContainer|TestStatusContainer|TestStatusSandbox|TestEnterContainer|TestMonitor|TestWaitProcess|TestSignalProcess|TestWinsizeProcess|TestContainerProcessIOStream|TestSandboxUpdateResources|TestSandboxHugepageLimit|TestCreateMockSandbox|TestDeleteStoreWhenNewContainerFail|TestSandbox_Cgroups'
skip_why="fail without the series too, where the sandbox's devices cgroup cannot be made"
if [ "$without_pci_fix" = 1 ]; then
	# The test of the fix this copy lacks.
	vc_skip+='|TestSandboxAddInterfaceDevicePath'
	skip_why+="; TestSandboxAddInterfaceDevicePath: tests the fix this copy lacks"
fi
vc_run=$(test_names "$runtime/virtcontainers" "${vc_files[@]}")
kata_fail=0
(cd "$runtime" && go test $race_flag -c -o "$logs/vc.test" ./virtcontainers && go test $race_flag -c -o "$logs/shim.test" ./pkg/containerd-shim-v2) ||
	die "Kata's tests do not compile with the series"
run_test_binary "$logs/vc.test" "$runtime/virtcontainers" "$logs/kata-vc.log" -test.run "^($vc_run)\$" -test.skip "^($vc_skip)\$" || kata_fail=1
run_test_binary "$logs/shim.test" "$runtime/pkg/containerd-shim-v2" "$logs/kata-shim.log" || kata_fail=1
note "Kata's unit tests (go test $race_flag, as root, in private netns/mount namespaces):"
note "  virtcontainers, tests of ${vc_files[*]}: $(count_tests "$logs/kata-vc.log") (log $logs/kata-vc.log)"
note "    not run ($skip_why): ${vc_skip//|/ }"
note "  pkg/containerd-shim-v2, whole package: $(count_tests "$logs/kata-shim.log") (log $logs/kata-shim.log)"
if [ "$kata_fail" = 1 ]; then
	grep -E '^(--- FAIL|panic:)' "$logs/kata-vc.log" "$logs/kata-shim.log" >&2 || true
	die "Kata's unit tests failed"
fi

# 4. This repository's modules, required from the copy.
step "adding $netmon_mod (and its shimhook/kata module) to the copy's go.mod"
cp "$runtime/go.mod" "$logs/go.mod.kata"
(cd "$runtime" &&
	go mod edit \
		-require=$netmon_mod@v0.0.0-00010101000000-000000000000 \
		-replace=$netmon_mod=$repo \
		-require=$netmon_mod/shimhook/kata@v0.0.0-00010101000000-000000000000 \
		-replace=$netmon_mod/shimhook/kata=$here &&
	cp -a "$here"/kataloop/*_test.go virtcontainers/ &&
	printf '%s\n' '// Registers kata-netmon (added by kata-netmon'"'"'s build.sh; not part of Kata).' 'package main' '' \
		'import _ "'$netmon_mod'/shimhook/kata/register"' >cmd/containerd-shim-kata-v2/kata_netmon.go &&
	go mod tidy >"$logs/tidy.log" 2>&1) || {
	cat "$logs/tidy.log" >&2
	die "the copy's go.mod could not take $netmon_mod"
}

# requires MODFILE: "module version" of each requirement.
requires() { go mod edit -json "$1" | python3 -c 'import json,sys; [print(r["Path"], r["Version"]) for r in json.load(sys.stdin).get("Require") or []]' | sort; }
raised=$(join <(requires "$logs/go.mod.kata") <(requires "$runtime/go.mod") | awk '$2 != $3 {print $1 " " $2 " -> " $3}')
note "the copy's go.mod requires $netmon_mod and $netmon_mod/shimhook/kata (replaced by $repo)"
if [ -n "$raised" ]; then
	note "  requirements of Kata raised by kata-netmon's (go mod tidy):"
	while read -r l; do note "    $l"; done <<<"$raised"
fi

# 5. The probes decide which fixes the adapter may count on.
step "probing the tree for the series' fixes"
(cd "$runtime" && go test -tags kata_netmon -c -o "$logs/probe.test" ./virtcontainers) || die "the probes do not compile"
run_test_binary "$logs/probe.test" "$runtime/virtcontainers" "$logs/probe.log" -test.run '^TestNetmonProbe' || true
ldflags=
pkg=$netmon_mod/shimhook/kata
note "fixes probed in the tree (probe test: outcome):"
for fix in PCIPath LinkByIndex KeepLinkUp UnplugGivenNetNS; do
	if grep -q "^--- PASS: TestNetmonProbe$fix " "$logs/probe.log"; then
		ldflags+=" -X $pkg.fix$fix=true"
		note "  $fix (TestNetmonProbe$fix): present"
	else
		note "  $fix (TestNetmonProbe$fix): ABSENT: the adapter steers around it"
	fi
done

# 6. Our module's own tests, then Kata in the loop.
step "vet and test $pkg in the copy"
(cd "$runtime" && go vet "$pkg/..." && go vet -tags kata_netmon ./virtcontainers/) >"$logs/vet.log" 2>&1 || {
	cat "$logs/vet.log" >&2
	die "go vet failed"
}
(cd "$runtime" && go test $race_flag -count=1 -ldflags "$ldflags" "$pkg/...") >"$logs/shimhook-kata.log" 2>&1 || {
	cat "$logs/shimhook-kata.log" >&2
	die "$pkg's tests failed"
}
note "$pkg tests: $(grep -c '^ok' "$logs/shimhook-kata.log") packages ok"

step "Kata in the loop"
(cd "$runtime" && go test $race_flag -tags kata_netmon -ldflags "$ldflags" -c -o "$logs/loop.test" ./virtcontainers) || die "the Kata-in-the-loop tests do not compile"
loop_fail=0
run_test_binary "$logs/loop.test" "$runtime/virtcontainers" "$logs/loop.log" -test.run '^TestNetmonLoop' || loop_fail=1
note "Kata-in-the-loop tests (virtcontainers, -tags kata_netmon, TestNetmonLoop*): $(count_tests "$logs/loop.log") (log $logs/loop.log)"
while read -r l; do note "  $l"; done < <(grep -E '^    --- (PASS|FAIL|SKIP)' "$logs/loop.log" | sed 's/^    //')
if [ "$loop_fail" = 1 ]; then
	grep -E '^(\s*--- FAIL|panic:)' "$logs/loop.log" >&2 || true
	die "the Kata-in-the-loop tests failed"
fi

# 7. Both binaries, from the same copy.
step "building the shims"
mkdir -p "$out"
(cd "$runtime" &&
	CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$out/containerd-shim-kata-v2" ./cmd/containerd-shim-kata-v2 &&
	CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$out/containerd-shim-kata-netmon-v2" "$pkg/cmd/containerd-shim-kata-netmon-v2") ||
	die "building the shims failed"
go tool nm "$out/containerd-shim-kata-v2" | grep -c " $pkg/register.init" >/dev/null ||
	die "containerd-shim-kata-v2 was built without kata-netmon registered"
note "binaries (in $out):"
note "  containerd-shim-kata-v2 (patch mode, kata-netmon registered): $("$out/containerd-shim-kata-v2" --version)"
note "  containerd-shim-kata-netmon-v2 (drop-in, io.containerd.kata-netmon.v2): $("$out/containerd-shim-kata-netmon-v2" --version)"

echo
echo "build.sh: summary: Kata $kata_version ${kata_commit:+($kata_commit) }from $kata_src, built in $copy"
for l in "${summary[@]}"; do echo "  $l"; done
