#!/usr/bin/env bash
# tests/bench/run.sh - `make bench`: every benchmark, keel side by side with
# the tool a user would otherwise use, in the same run. Never part of check.
# BENCH_ONLY=io,convert limits the set; BENCH_DIR sets the scratch directory.
set -u
cd "$(dirname "$0")/../.."
: "${KEEL:=$PWD/build/keel}"
export KEEL
export BENCH_DIR=${BENCH_DIR:-/tmp/keel-bench}
mkdir -p "$BENCH_DIR"
rc=0
for b in tests/bench/bench_*.sh; do
	name=$(basename "$b" .sh); name=${name#bench_}
	if [ -n "${BENCH_ONLY:-}" ] && ! echo ",$BENCH_ONLY," | grep -q ",$name,"; then continue; fi
	echo "=== $name"
	bash "$b" || { echo "bench $name failed"; rc=1; }
	echo
done
exit $rc
