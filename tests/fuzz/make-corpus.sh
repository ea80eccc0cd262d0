#!/usr/bin/env bash
# tests/fuzz/make-corpus.sh DIR - seed corpora for the fuzz targets, one
# folder per target, from small images keel and qemu-img make.
set -eu
out=$1
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out"
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
for f in tests/fuzz/corpus.d/*.sh; do
	[ -e "$f" ] || continue
	# a failed seed script would leave its target fuzzing from nothing, unseen
	bash "$f" "$out" "$w" || { echo "error: $f failed" >&2; exit 1; }
done
