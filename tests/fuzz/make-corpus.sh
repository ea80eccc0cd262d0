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
	bash "$f" "$out" "$w" || echo "warning: $f failed" >&2
done
