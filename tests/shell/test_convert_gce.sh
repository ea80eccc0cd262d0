#!/usr/bin/env bash
# tests/shell/test_convert_gce.sh - keel convert -O gce: disk.raw in a
# gzip-compressed tar, sparse, size rounded up to a GiB, read back by GNU tar.
. "$(dirname "$0")/lib.sh"
command -v tar >/dev/null || skip "tar not installed"
cd "$TMP"
pattern_file src.raw $((12 * 1048576 + 512))
t "convert -O gce --verify" keel convert -O gce --verify -f raw src.raw img.tar.gz
t "gzip stream" sh -c "gzip -t img.tar.gz"
t "one member named disk.raw" test "$(tar -tzf img.tar.gz)" = disk.raw
mkdir x
t "GNU tar extracts it" tar -C x -xzf img.tar.gz
t "size is a whole GiB" test "$(stat -c %s x/disk.raw)" = $((1 << 30))
t "extracted sparse" test "$(stat -c %b x/disk.raw)" -lt $((64 * 2048))
t "content equals the source" keel compare src.raw x/disk.raw
t "tar.gz much smaller than the disk" test "$(stat -c %s img.tar.gz)" -lt $((12 * 1048576))
t "sparse=off" keel convert -O gce -o sparse=off,level=1 -f raw src.raw plain.tar.gz
mkdir y && tar -C y -xzf plain.tar.gz
t "sparse=off content" keel compare src.raw y/disk.raw
truncate -s 300M empty.raw
t "an empty disk" keel convert -O gce --verify -f raw empty.raw empty.tar.gz
t "an empty disk stays tiny" test "$(stat -c %s empty.tar.gz)" -lt 65536
expect_err "unknown gce option" "unknown option" keel convert -O gce -o bogus=1 -f raw src.raw e.tar.gz
t "no output after an error" test ! -e e.tar.gz
KEEL_CONV_SLOW_MS=1 KEEL_FAKE_TIME=1700000000 "$KEEL" convert -j 1 -O gce -f raw src.raw d1.tar.gz >/dev/null
KEEL_FAKE_TIME=1700000000 "$KEEL" convert -j 4 -O gce -f raw src.raw d4.tar.gz >/dev/null
t "deterministic output" cmp d1.tar.gz d4.tar.gz

# DST '-': standard output, for `| gsutil cp - gs://...`; the summary goes to stderr
KEEL_FAKE_TIME=1700000000 "$KEEL" convert -O gce -f raw src.raw - >so.tar.gz 2>so.err
t "to standard output: the same bytes as into a file" cmp d1.tar.gz so.tar.gz
t "...the summary on stderr" grep -q 'converted src.raw -> -' so.err
t "...through a pipe into keel again" sh -c "'$KEEL' convert -O gce -o level=1 -f raw src.raw - 2>/dev/null | '$KEEL' convert -O qcow2 - back.qcow2"
t "...matches" keel compare src.raw back.qcow2
t "...--output json on stderr" sh -c "'$KEEL' convert --output json -O gce -f raw src.raw - 2>&1 >/dev/null | grep -q '\"synced\": false'"
t "...whose output_size is the stream's" sh -c "KEEL_FAKE_TIME=1700000000 '$KEEL' convert --output json -O gce -f raw src.raw - 2>&1 >/dev/null | grep -q '\"output_size\": $(stat -c %s so.tar.gz),'"
expect_err "other formats need a file" "DST '-' (standard output) takes only -O gce" keel convert -O qcow2 -f raw src.raw -
t "...and no file named '-'" test ! -e ./-
expect_err "--verify cannot read standard output back" "not possible on standard output" sh -c "'$KEEL' convert --verify -O gce -f raw src.raw - >/dev/null"
finish
