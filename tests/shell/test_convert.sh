#!/usr/bin/env bash
# tests/shell/test_convert.sh - keel convert: pipeline properties that do not
# depend on a particular format (raw in, raw out, plus whatever is built):
# sparseness, --verify, -j determinism, -B overlays, --keep-chain, signals,
# stale temporaries, JSON summary, usage errors.
. "$(dirname "$0")/lib.sh"

cd "$TMP"
pattern_file src.raw $((24 * 1024 * 1024 + 12345))
cp --sparse=always src.raw src.copy
srcsum=$(sha256sum src.raw | cut -d' ' -f1)
touch -d '2020-01-02 03:04:05' src.raw
srcmtime=$(stat -c %Y src.raw)

formats=$(keel help formats | awk 'NR > 1 && $2 == "yes" { print $1 }')

t "raw -> raw converts" keel convert -f raw -O raw src.raw out.raw
t "raw -> raw content identical" cmp src.raw out.raw
t "output stays sparse" test "$(stat -c %b out.raw)" -lt "$(stat -c %b src.raw)"
t "--verify passes" keel convert --verify -f raw -O raw src.raw v.raw
expect_rc 1 "a missing DST directory fails" \
	keel convert -f raw -O raw src.raw nodir/x.raw

# --verify catches a difference (KEEL_CONV_TEST_FLIP corrupts one written byte)
KEEL_CONV_TEST_FLIP=1 "$KEEL" convert --verify -f raw -O raw src.raw flip.raw >/dev/null 2>&1
t "--verify mismatch exits 3" test $? -eq 3
t "--verify mismatch leaves no output" test ! -e flip.raw

# determinism: -j 1 and -j 4 give the same bytes, for every creatable format
# (identities and timestamps pinned: they differ between any two runs)
export KEEL_FAKE_TIME=1700000000 KEEL_FAKE_UUID=42
mkdir -p j1 j3 j4 wb un
for f in $formats; do
	# same file name in each directory: some formats record their own name
	keel convert -j 1 -f raw -O "$f" src.raw "j1/d.$f" >/dev/null 2>&1
	keel convert -j 4 -f raw -O "$f" src.raw "j4/d.$f" >/dev/null 2>&1
	t "determinism -j1 = -j4 ($f)" cmp "j1/d.$f" "j4/d.$f"
	KEEL_CONV_SLOW_MS=3 "$KEEL" convert -j 3 -f raw -O "$f" src.raw "j3/d.$f" >/dev/null 2>&1
	t "determinism -j1 = -j3 with a slowed pipeline ($f)" cmp "j1/d.$f" "j3/d.$f"
	# -t direct (the default) and -t writeback differ in how, not what
	keel convert -j 1 -t writeback -f raw -O "$f" src.raw "wb/d.$f" >/dev/null 2>&1
	t "-t writeback = -t direct, byte for byte ($f)" cmp "j1/d.$f" "wb/d.$f"
	keel convert -j 1 -t unsafe -f raw -O "$f" src.raw "un/d.$f" >/dev/null 2>&1
	t "-t unsafe = -t direct, byte for byte ($f)" cmp "j1/d.$f" "un/d.$f"
done
expect_rc 2 "-t takes direct, writeback or unsafe" keel convert -t bogus -f raw -O raw src.raw t.raw
t "-t none is qemu-img's name for direct" keel convert -t none -f raw -O qcow2 src.raw none.qcow2
t "-t none output = -t direct" cmp none.qcow2 j1/d.qcow2
unset KEEL_FAKE_TIME KEEL_FAKE_UUID

# JSON summary
keel convert --output json -f raw -O raw src.raw j.raw >j.json
t "json summary has the counters" python3 -c "
import json; d = json.load(open('j.json'))
assert d['virtual_size'] == $((24 * 1024 * 1024 + 12345)), d
assert d['bytes_read'] > 0 and d['bytes_written'] > 0 and d['zero_bytes_skipped'] > 0, d
assert 0 < d['memory_bound'] <= 256 << 20, d
assert d['synced'] is True, d
"
keel convert -t unsafe --output json -f raw -O raw src.raw ju.raw >ju.json
t "json says when the output was not synced" python3 -c "
import json; d = json.load(open('ju.json'))
assert d['synced'] is False, d
"

# -t unsafe never fsyncs anything, not even the freshly created empty image
# (an fdatasync there waits for whatever else the disk is still writing);
# direct and writeback sync DST and its directory (syscall counts by strace)
nsyncs() { # nsyncs MODE FMT: fsync-family calls of one conversion
	rm -f "st.$1.$2"
	# LeakSanitizer cannot run under ptrace (the SANITIZE=1 build)
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
		strace -f -qq -e trace=fsync,fdatasync,sync_file_range,syncfs -o "st.$1.log" \
		"$KEEL" convert -t "$1" -f raw -O "$2" src.raw "st.$1.$2" >/dev/null 2>&1 || return 1
	grep -cE '(fsync|fdatasync|sync_file_range|syncfs)\(' "st.$1.log"
}
if command -v strace >/dev/null && strace -qq -o /dev/null true 2>/dev/null; then
	sd=$(nsyncs direct qcow2) sw=$(nsyncs writeback qcow2)
	t "-t direct syncs DST (and its directory): $sd calls" test "${sd:-0}" -ge 3
	t "-t writeback syncs DST (and its directory): $sw calls" test "${sw:-0}" -ge 3
	# page-cache writes stay inside 1 MiB-aligned pieces (lib/io.c says why:
	# 2 MiB folios are slow to fill on VMs with free page reporting)
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
		strace -f -qq -e trace=pwrite64 -o pw.log \
		"$KEEL" convert -t writeback -f raw -O raw src.raw pw.raw >/dev/null 2>&1
	t "-t writeback: buffered writes never cross a 1 MiB boundary" python3 -c "
import re
n = 0
for line in open('pw.log'):
    m = re.search(r'pwrite64\(\d+, .*, (\d+), (\d+)\) = ', line)
    if not m:
        continue
    ln, off = int(m.group(1)), int(m.group(2))
    n += 1
    assert off % (1 << 20) + ln <= 1 << 20, line
assert n >= 20, n
"
	for f in $formats; do
		su=$(nsyncs unsafe "$f")
		t "-t unsafe -O $f never syncs: ${su:-failed} call(s)" test "${su:-9}" -eq 0
		t "-t unsafe -O $f output reads back" keel compare src.raw "st.unsafe.$f"
	done
else
	echo "SKIP: strace is missing or cannot trace here: -t sync counts not checked"
fi

# -B: an overlay holding only the differences
cp --sparse=always src.raw base.raw
cp --sparse=always src.raw new.raw
printf 'changed block' | dd of=new.raw bs=1 seek=$((5 * 1048576)) conv=notrunc status=none
dd if=/dev/zero of=new.raw bs=65536 seek=3 count=2 conv=notrunc status=none
for f in $formats; do
	keel create -f "$f" -b base.raw -F raw probe.$f >/dev/null 2>&1 || continue
	rm -f probe.$f
	t "-B overlay ($f)" keel convert -f raw -O "$f" -B base.raw -F raw new.raw "ov.$f"
	t "-B overlay reads as new ($f)" keel compare new.raw "ov.$f"
	t "-B overlay is small ($f)" test "$(stat -c %s "ov.$f")" -lt $((4 * 1048576))
done

# DST may not be an image that SRC or the new overlay reads through
mkdir -p bk
keel convert -f raw -O qcow2 src.raw bk/base.qcow2 >/dev/null
keel convert -f raw -O qcow2 -B base.qcow2 -F qcow2 new.raw bk/top.qcow2 >/dev/null
cp bk/base.qcow2 bk/base.orig
expect_err "-B onto DST itself is refused" "backing image (-B).*nothing was written" \
	keel convert -f raw -O qcow2 -B base.qcow2 -F qcow2 new.raw bk/base.qcow2
t "... and the would-be parent is intact" cmp bk/base.orig bk/base.qcow2
expect_err "DST = SRC's backing image is refused" "backing image of.*nothing was written" \
	keel convert -O qcow2 bk/top.qcow2 bk/base.qcow2
t "... and the backing image is intact" cmp bk/base.orig bk/base.qcow2
t "... and SRC still reads as before" keel compare new.raw bk/top.qcow2
t "DST = SRC itself: recompressed in place" keel convert -c -O qcow2 bk/top.qcow2 bk/top.qcow2
t "... with the same content, flattened" keel compare new.raw bk/top.qcow2
t "no temporaries left in the directory" test -z "$(ls -A bk | grep keel-tmp)"

# a source another program holds open for writing (a running VM: qemu's
# write lock) is refused unless -U; so is one a keel command is writing
if command -v qemu-io >/dev/null; then
	keel convert -f raw -O qcow2 src.raw live.qcow2 >/dev/null
	qemu-io -f qcow2 -c 'sleep 6000' live.qcow2 >/dev/null 2>&1 &
	qpid=$!
	ino=$(stat -c %i live.qcow2)
	for _ in $(seq 50); do grep -q ":$ino 100 101\$" /proc/locks && break; sleep 0.1; done
	expect_err "a source qemu is writing is refused" "open for writing by another program" \
		keel convert -O raw live.qcow2 live.raw
	t "... and nothing was written" test ! -e live.raw
	t "-U copies it anyway" keel convert -U -O raw live.qcow2 live.raw
	expect_err "keel backup refuses it too" "open for writing by another program" \
		keel backup live.qcow2 live.keel
	t "keel backup -U copies it" keel backup -U live.qcow2 live.keel
	t "reading commands are not affected (keel info)" keel info live.qcow2
	kill "$qpid" 2>/dev/null
	wait "$qpid" 2>/dev/null
	t "once qemu is gone the copy goes ahead" keel convert -O raw live.qcow2 live2.raw
else
	echo "SKIP: qemu-io is missing: the running-writer refusal is not checked"
fi

# --keep-chain
for f in $formats; do
	keel create -f "$f" -b base.raw -F raw probe.$f >/dev/null 2>&1 || continue
	rm -f probe.$f
	mkdir -p "chain.$f" "out.$f"
	keel convert -f raw -O "$f" src.raw "chain.$f/base.$f" >/dev/null
	keel convert -f raw -O "$f" -B "base.$f" -F "$f" new.raw "chain.$f/top.$f" >/dev/null
	t "--keep-chain ($f)" keel convert --keep-chain -O "$f" "chain.$f/top.$f" "out.$f/top.$f"
	t "--keep-chain writes the parent ($f)" test -f "out.$f/base.$f"
	t "--keep-chain top reads as new ($f)" keel compare new.raw "out.$f/top.$f"
	t "--keep-chain base reads as old ($f)" keel compare src.raw "out.$f/base.$f"
done
# ...and across formats: a qcow2 chain of src.raw's odd size into each
# format, where VHD rounds the base up to a CHS geometry (a child of the
# unrounded size was refused: "a differencing disk has its parent's size")
mkdir -p xchain
keel convert -f raw -O qcow2 src.raw xchain/base.qcow2 >/dev/null
keel convert -f raw -O qcow2 -B base.qcow2 -F qcow2 new.raw xchain/top.qcow2 >/dev/null
for f in $formats; do
	[ "$f" = qcow2 ] && continue
	# formats with parents (of their own format)
	keel create -f "$f" xprobe.$f 1M >/dev/null 2>&1 &&
		keel create -f "$f" -b "xprobe.$f" "xprobe-c.$f" >/dev/null 2>&1 || continue
	mkdir -p "xout.$f"
	t "--keep-chain qcow2 -> $f" keel convert --keep-chain -O "$f" xchain/top.qcow2 "xout.$f/top.$f"
	t "--keep-chain qcow2 -> $f: top reads as new" keel compare new.raw "xout.$f/top.$f"
	t "--keep-chain qcow2 -> $f: base reads as old" keel compare src.raw "xout.$f/base.$f"
done

# signals: a slowed conversion interrupted with SIGINT/SIGTERM leaves nothing
for sig in INT TERM; do
	KEEL_CONV_SLOW_MS=200 "$KEEL" convert -j 2 -f raw -O raw src.raw "sig$sig.raw" 2>/dev/null &
	pid=$!
	# signal it once it has its temporary (a fixed sleep races a slow start)
	for _ in $(seq 100); do ls -a | grep -q "sig$sig.raw.keel-tmp" && break; sleep 0.05; done
	sleep 0.2
	kill -s "$sig" "$pid"
	wait "$pid"
	rc=$?
	t "SIG$sig: conversion fails" test "$rc" -ne 0
	t "SIG$sig: no output" test ! -e "sig$sig.raw"
	t "SIG$sig: no temporary left" sh -c "! ls -a | grep -q 'sig$sig.raw.keel-tmp'"
done
# SIGKILL leaves a temp file; the next run removes it
KEEL_CONV_SLOW_MS=200 "$KEEL" convert -j 2 -f raw -O raw src.raw kill.raw 2>/dev/null &
pid=$!
for _ in $(seq 100); do ls -a | grep -q "kill.raw.keel-tmp" && break; sleep 0.05; done
sleep 0.2
{ kill -KILL "$pid"; wait "$pid"; } 2>/dev/null
t "SIGKILL: no output" test ! -e kill.raw
t "SIGKILL: a temporary remains" sh -c "ls -a | grep -q '^\.kill\.raw\.keel-tmp\.$pid'"
t "next run succeeds" keel convert -f raw -O raw src.raw kill.raw
t "next run removed the stale temporary" sh -c "! ls -a | grep -q 'kill.raw.keel-tmp'"
t "source bytes unchanged" test "$(sha256sum src.raw | cut -d' ' -f1)" = "$srcsum"
t "source mtime unchanged" test "$(stat -c %Y src.raw)" = "$srcmtime"

# errors leave nothing
expect_rc 1 "unknown output format" keel convert -f raw -O nosuch src.raw e1.raw
t "no output after an error" test ! -e e1.raw
expect_rc 2 "missing DST is a usage error" keel convert -O raw src.raw
expect_rc 2 "bad -j is a usage error" keel convert -j 0 -O raw src.raw x.raw
# a 4 TiB disk with 3 MiB of data (at the start, the middle and the last
# GiB) into every format, then map and compare. Each takes well under a
# second; timeout is a hang guard, not a benchmark: block_status used to
# scan far past the window compare asked for (VHDX: 136 s) and VMDK walked
# every entry of the tables (5 s).
keel -q create -f qcow2 huge-src.qcow2 4T
keel -q io -c "write -P 1 0 1M" -c "write -P 2 2T 1M" -c "write -P 3 4095G 1M" huge-src.qcow2
for f in qcow2 vhdx vmdk vdi keel raw; do
	t "4 TiB sparse -> $f" timeout 120 "$KEEL" -q convert -O $f huge-src.qcow2 huge.$f
	t "4 TiB sparse $f: compare" timeout 120 "$KEEL" -q compare huge-src.qcow2 huge.$f
	timeout 120 "$KEEL" map huge.$f >huge.map
	t "4 TiB sparse $f: map has data at the three places, at most a block each" python3 -c "
import sys
runs = []
for w in (l.split() for l in open('huge.map')):
    if w[2:3] == ['data']:
        o, n = int(w[0], 16), int(w[1], 16)
        if runs and sum(runs[-1]) == o:  # adjacent runs (keel: one per compressed cluster)
            o, n = runs[-1][0], runs.pop()[1] + n
        runs.append((o, n))
for at in (0, 2 << 40, 4095 << 30):
    assert any(o <= at and at + (1 << 20) <= o + n for o, n in runs), (at, runs)
assert sum(n for o, n in runs) <= 3 * (32 << 20), runs
"
	t "4 TiB sparse $f: stays sparse (< 64 MiB)" \
		test "$(du -k huge.$f | cut -f1)" -lt 65536
	t "4 TiB sparse $f: the last data reads back" \
		keel -q io -c "read -P 3 4095G 1M" -c "read -P 0 $(((4095 << 30) + (1 << 20))) 1M" huge.$f
	rm -f huge.$f
done
keel -q create -f vhd huge.vhd 2000G
keel -q io -c "write -P 4 1000G 1M" huge.vhd
keel -q convert -O qcow2 huge.vhd huge-vhd.qcow2
t "2000 GiB sparse vhd: compare" timeout 120 "$KEEL" -q compare huge-vhd.qcow2 huge.vhd
rm -f huge-src.qcow2 huge.vhd huge-vhd.qcow2

t "help states the memory bound" sh -c "'$KEEL' help convert | grep -q 'stay under 192 MiB'"
keel convert --output json -j 2 -f raw -O raw src.raw m.raw >m.json
t "memory bound at -j 2 under 64 MiB" python3 -c "
import json; d = json.load(open('m.json')); assert d['memory_bound'] <= 64 << 20, d
"
finish
