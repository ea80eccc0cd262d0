#!/usr/bin/env bash
# tests/fuzz/run.sh - run each libFuzzer target for FUZZ_SECONDS on a seed
# corpus made by tests/fuzz/make-corpus.sh. Exit non-zero on any crash.
set -u
cd "$(dirname "$0")/../.."
: "${FUZZ_SECONDS:=30}"
corpus=tests/fuzz/corpus
bash tests/fuzz/make-corpus.sh "$corpus" || { echo "corpus generation failed"; exit 1; }
pass=0 fail=0
for bin in "$@"; do
	name=$(basename "$bin")
	dir="$corpus/${name#fuzz_}"
	mkdir -p "$dir"
	echo "== $name (${FUZZ_SECONDS}s, $(ls "$dir" | wc -l) seeds)"
	if "$bin" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=20 \
		-max_len=1048576 -print_final_stats=1 "$dir" >"/tmp/$name.log" 2>&1; then
		pass=$((pass + 1)); tail -n 3 "/tmp/$name.log"
	else
		fail=$((fail + 1)); tail -n 60 "/tmp/$name.log"
	fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
