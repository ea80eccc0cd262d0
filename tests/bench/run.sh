#!/usr/bin/env bash
# tests/bench/run.sh - `make bench`: run every tests/bench/bench_*.sh (or the
# ones named as arguments) in turn. Benchmarks print their own tables; they
# are never part of `make check` and never assert on time.
set -u
cd "$(dirname "$0")/../.."
: "${KEEL:=$PWD/build/keel}"
export KEEL
rc=0
benches=("$@")
[ ${#benches[@]} -eq 0 ] && benches=(tests/bench/bench_*.sh)
for b in "${benches[@]}"; do
	[ -e "$b" ] || continue
	echo "== $b"
	bash "$b" || { echo "bench $b failed (exit $?)"; rc=1; }
done
exit $rc
