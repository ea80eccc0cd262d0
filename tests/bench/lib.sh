# tests/bench/lib.sh - timing helpers for the benchmarks (sourced).
set -u
now() { date +%s.%N; }
# timeit VAR CMD... : run CMD, store wall seconds in VAR; output goes to $BENCH_DIR/last.log
timeit() {
	local var=$1; shift
	local t0 t1
	sync
	t0=$(now)
	"$@" >"$BENCH_DIR/last.log" 2>&1 || { echo "command failed: $*"; tail -5 "$BENCH_DIR/last.log"; return 1; }
	t1=$(now)
	printf -v "$var" '%.3f' "$(echo "$t1 - $t0" | bc -l)"
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }
# median: of the numbers on standard input, one a line
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
row() { printf '%-44s %10s %10s %8s\n' "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "SKIP: $1 not installed"; exit 0; }; }
