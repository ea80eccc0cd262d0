#!/usr/bin/env bash
# tests/fuzz/run.sh - run each libFuzzer target for FUZZ_SECONDS on a seed
# corpus made by tests/fuzz/make-corpus.sh. Exit non-zero on any crash.
set -u
cd "$(dirname "$0")/../.."
: "${FUZZ_SECONDS:=30}"
corpus=tests/fuzz/corpus
bash tests/fuzz/make-corpus.sh "$corpus" || { echo "corpus generation failed"; exit 1; }
# FUZZ_JOBS targets at a time (default: the number of CPUs; each is one process)
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
logs=$(mktemp -d /tmp/keel-fuzz.XXXXXX)
trap 'rm -rf "$logs"' EXIT
fuzz_one() { # fuzz_one BIN: its log and exit status in $logs
	local bin=$1 name dir rc
	name=$(basename "$bin")
	dir="$corpus/${name#fuzz_}"
	mkdir -p "$dir"
	echo "== $name (${FUZZ_SECONDS}s, $(ls "$dir" | wc -l) seeds)" >"$logs/$name.log"
	"$bin" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=20 \
		-max_len=1048576 -print_final_stats=1 "$dir" >>"$logs/$name.log" 2>&1
	rc=$?
	echo $rc >"$logs/$name.rc"
}
pass=0 fail=0
for bin in "$@"; do
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n 2>/dev/null || true; done
	fuzz_one "$bin" &
done
wait
for bin in "$@"; do
	name=$(basename "$bin")
	if [ "$(cat "$logs/$name.rc" 2>/dev/null)" = 0 ]; then
		pass=$((pass + 1)); head -n 1 "$logs/$name.log"; tail -n 3 "$logs/$name.log"
	else
		fail=$((fail + 1)); head -n 1 "$logs/$name.log"; tail -n 60 "$logs/$name.log"
		# keep the crashing input's log where CI can show it
		cp "$logs/$name.log" "/tmp/$name.log" 2>/dev/null
	fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
