#!/usr/bin/env bash
# Side by side, in one session: `make bench` (and, with TARGETS, `make
# bench-guest`) of the monitor at BASE and at HEAD, run alternately,
# RUNS times each, one run at a time; then the figures in one table.
#
#   scripts/bench-compare.sh [BASE]       (default b34634c, where issue 12 began)
#   TARGETS="bench bench-guest" RUNS=3 OUT=/tmp/knm-compare scripts/bench-compare.sh
#
# BASE's monitor is measured with HEAD's-era benchmark harness for `make
# bench` (e2e/bench, e2e/load and the Makefile of HARNESS, default 1adf8b8,
# the first commit whose benchmarks count events the monitor applied and
# run a lone monitor beside the 200), so both sides print the same rows;
# bench-guest runs BASE's own. Both trees are temporary worktrees. As root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
base=${1:-b34634c}
harness=${HARNESS:-1adf8b8}
runs=${RUNS:-3}
targets=${TARGETS:-bench}
out=${OUT:-$(mktemp -d /tmp/knm-compare.XXXXXX)}
export PATH="$PATH:/usr/local/go/bin"
mkdir -p "$out"
wt=$(mktemp -d /tmp/knm-compare-trees.XXXXXX)
cleanup() {
	git -C "$here" worktree remove --force "$wt/before" 2>/dev/null || true
	git -C "$here" worktree remove --force "$wt/after" 2>/dev/null || true
	rm -rf "$wt"
	git -C "$here" worktree prune
}
trap cleanup EXIT
git -C "$here" worktree add -q --detach "$wt/before" "$base"
git -C "$here" worktree add -q --detach "$wt/after" HEAD
if ! git -C "$wt/before" merge-base --is-ancestor "$harness" HEAD 2>/dev/null; then
	# The harness of $harness on $base's monitor; $base predates
	# internal/nsfs, whose DoPath was internal/nsdo's Do.
	git -C "$wt/before" checkout -q "$harness" -- Makefile e2e/bench e2e/load
	sed -i -e 's|kata-netmon/internal/nsfs"|kata-netmon/internal/nsdo"|' -e 's|nsfs\.DoPath(|nsdo.Do(|' \
		"$wt/before/e2e/bench/env_test.go"
fi
log=$out/runlog.txt
failed=0
for target in $targets; do
	for n in $(seq "$runs"); do
		for side in before after; do
			f=$out/$side-$target-$n.txt
			{ echo "== $side ($(git -C "$wt/$side" log --oneline -1)) make $target, run $n"; echo "start $(date -u +%FT%TZ), $(uptime)"; } | tee -a "$log"
			if ! (cd "$wt/$side" && make "$target") >"$f" 2>&1; then
				echo "FAILED: see $f" | tee -a "$log"
				failed=$((failed + 1))
			fi
			echo "end $(date -u +%FT%TZ)" >>"$log"
		done
	done
done
python3 "$here/scripts/bench-compare.py" "$out" "$runs" $targets | tee "$out/table.md"
echo "outputs: $out"
if ((failed)); then
	echo "bench-compare: $failed run(s) failed; their columns are empty" >&2
	exit 1
fi
