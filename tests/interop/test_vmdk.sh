#!/usr/bin/env bash
# VMDK interop: images qemu-img makes read back through keel byte-identical
# to qemu-img's own `convert -O raw`; images keel writes pass `qemu-img
# check`, compare identical in qemu-img, and open in libvmdk's vmdkinfo
# (and read back identical through vmdkmount when FUSE works); parent
# chains with the CID check, both directions.
. "$(dirname "$0")/../shell/lib.sh"

command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v qemu-io >/dev/null || skip "qemu-io not installed"
DATA=$(cd "$(dirname "$0")" && pwd)/data

# sparse_cmp A B: byte equality of two (sparse) files, reading only the
# ranges where either has data; holes both share read as zeros in both.
sparse_cmp() {
	python3 - "$1" "$2" <<'PY'
import os, sys
def segs(fd, size):
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h)); off = h
    return out
a, b = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
sa, sb = os.fstat(a).st_size, os.fstat(b).st_size
if sa != sb:
    sys.exit("size %d != %d" % (sa, sb))
for s, e in sorted(segs(a, sa) + segs(b, sb)):
    off = s
    while off < e:
        n = min(e - off, 1 << 20)
        if os.pread(a, n, off) != os.pread(b, n, off):
            sys.exit("differ in [%d, %d)" % (off, off + n))
        off += n
PY
}

# same_as_qemu IMG: keel reads IMG exactly as qemu-img does
same_as_qemu() {
	local img=$1 q="$TMP/q.raw" k="$TMP/k.raw"
	rm -f "$q" "$k"
	qemu-img convert -f vmdk -O raw "$img" "$q" || return 1
	keel compare "$q" "$img" || return 1
	keel convert -O raw "$img" "$k" >/dev/null || return 1
	sparse_cmp "$q" "$k"
}

# Sources: data, zero runs, holes and a tail that is not sector aligned; and
# a 5 GiB sparse disk with data below and beyond 4 GiB.
pattern_file "$TMP/src.raw" $((40 * 1024 * 1024 + 300001))
truncate -s 5G "$TMP/big.raw"
python3 - "$TMP/big.raw" <<'PY'
import random, sys
r = random.Random(7)
with open(sys.argv[1], 'r+b') as f:
    for off in (0, 1 << 20, (2 << 30) - 4096, 3 << 30, (4 << 30) + 12345 * 512, (5 << 30) - 70000):
        f.seek(off); f.write(r.randbytes(70000))
PY

# ---------------------------------------------------------------- read matrix
for src in src big; do
	for sf in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
		mkdir -p "$TMP/r-$src-$sf"
		img="$TMP/r-$src-$sf/d.vmdk"
		qemu-img convert -f raw -O vmdk -o subformat=$sf "$TMP/$src.raw" "$img"
		t "read qemu $sf ($src)" same_as_qemu "$img"
	done
	qemu-img convert -f raw -O vmdk -o zeroed_grain=on "$TMP/$src.raw" "$TMP/z-$src.vmdk"
	qemu-io -f vmdk -c 'write -z 0 1M' -c 'write -z 3M 128k' "$TMP/z-$src.vmdk" >/dev/null
	t "read qemu zeroed_grain=on (version 2, $src)" same_as_qemu "$TMP/z-$src.vmdk"
	qemu-img convert -f raw -O vmdk -o compat6=on "$TMP/$src.raw" "$TMP/c6-$src.vmdk"
	t "read qemu compat6=on ($src)" same_as_qemu "$TMP/c6-$src.vmdk"
done
t "zeroed grains are ZERO in keel map" sh -c "'$KEEL' map --output json '$TMP/z-src.vmdk' | python3 -c 'import json,sys; m=json.load(sys.stdin); assert m[0][\"type\"]==\"zero\" and m[0][\"length\"]>=1<<20, m[0]'"
t "info shows subformat, version and extents" sh -c "'$KEEL' info '$TMP/r-src-twoGbMaxExtentSparse/d.vmdk' | grep -q 'twoGbMaxExtentSparse' && '$KEEL' info '$TMP/z-src.vmdk' | grep -q 'sparse version: 2' && '$KEEL' info --output json '$TMP/r-big-twoGbMaxExtentFlat/d.vmdk' | grep -q 'd-f003.vmdk'"
# keel map against qemu-img map: the data extents, with offsets in the extent
# files. qemu maps a flat extent as data throughout, where keel asks the
# filesystem for holes, so each keel data run must lie inside a qemu one at
# the same offset (sparse extents: the runs are equal).
map_as_qemu() {
	qemu-img map -f vmdk --output=json "$1" >"$1.qmap" && "$KEEL" map --output json "$1" >"$1.kmap" &&
	python3 - "$1.qmap" "$1.kmap" "${2:-}" <<'PY'
import json, sys
def runs(m):
    out = []
    for e in m:
        if not e.get('data') or 'offset' not in e:
            continue
        if out and out[-1][0] + out[-1][1] == e['start'] and out[-1][2] + out[-1][1] == e['offset']:
            out[-1][1] += e['length']
        else:
            out.append([e['start'], e['length'], e['offset']])
    return out
q, k = (runs(json.load(open(p))) for p in sys.argv[1:3])
kfiles = {e.get('file', '') for e in json.load(open(sys.argv[2])) if e.get('data')}
assert k and all(f for f in kfiles), (k, kfiles)
for s, n, o in k:
    assert any(qs <= s and s + n <= qs + qn and o - s == qo - qs for qs, qn, qo in q), ((s, n, o), q)
if sys.argv[3:] == ['sparse']:
    assert q == k, (q, k)
PY
}
t "map: twoGbMaxExtentSparse extents and offsets as qemu-img map" map_as_qemu "$TMP/r-big-twoGbMaxExtentSparse/d.vmdk" sparse
t "map: twoGbMaxExtentFlat extents and offsets as qemu-img map" map_as_qemu "$TMP/r-big-twoGbMaxExtentFlat/d.vmdk"
t "map: monolithicFlat extents and offsets as qemu-img map" map_as_qemu "$TMP/r-src-monolithicFlat/d.vmdk"
t "map names the extent file" sh -c "'$KEEL' map --output json '$TMP/r-big-twoGbMaxExtentSparse/d.vmdk' | grep -q '\"file\": *\".*d-s003.vmdk\"'"
t "stream block status says compressed" sh -c "'$KEEL' map --output json '$TMP/r-src-streamOptimized/d.vmdk' | grep -q compressed"

# a qemu child over a qemu base
qemu-img convert -f raw -O vmdk "$TMP/src.raw" "$TMP/base.vmdk"
qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$TMP/child.vmdk"
qemu-io -f vmdk -c 'write -P 0x77 1M 200k' -c 'write -z 4M 128k' -c 'write -P 0x33 40M 4k' \
	"$TMP/child.vmdk" >/dev/null
t "read qemu child with a VMDK parent" same_as_qemu "$TMP/child.vmdk"
t "child map shows unallocated ranges from the parent" sh -c "'$KEEL' map '$TMP/child.vmdk' | grep -q ' 1 '"
qemu-io -f vmdk -c 'write -P 0x01 0 4k' "$TMP/base.vmdk" >/dev/null
expect_err "parent whose CID changed is refused" "child.vmdk: parent 'base.vmdk' has CID .* made against CID" \
	keel convert -O raw "$TMP/child.vmdk" "$TMP/x.raw"
t "--no-parent still shows the child" sh -c "'$KEEL' info --no-parent '$TMP/child.vmdk' | grep -q 'parent: base.vmdk'"

# a file from VMware-style tooling (tests/interop/data/README.md)
gzip -dc "$DATA/ext2.vmdk.gz" > "$TMP/ext2.vmdk"
t "read interop sample ext2.vmdk" same_as_qemu "$TMP/ext2.vmdk"
t "ext2.vmdk content digest" sh -c "'$KEEL' convert -O raw '$TMP/ext2.vmdk' '$TMP/e.raw' >/dev/null && sha256sum '$TMP/e.raw' | grep -q '^a6c2f0e39afe6c6a'"

# ---------------------------------------------------------------- write matrix
have_mount=0
if command -v vmdkmount >/dev/null && command -v fusermount >/dev/null && [ -c /dev/fuse ]; then
	mkdir -p "$TMP/mnt"
	keel convert -O vmdk "$TMP/src.raw" "$TMP/probe.vmdk" >/dev/null
	if vmdkmount "$TMP/probe.vmdk" "$TMP/mnt" >/dev/null 2>&1; then
		have_mount=1
		fusermount -u "$TMP/mnt"
	fi
fi
[ $have_mount = 1 ] || echo "# vmdkmount unusable here (no FUSE): libvmdk checks use vmdkinfo only"

# libvmdk_reads IMG RAW: vmdkmount exposes the same bytes as RAW
libvmdk_reads() {
	vmdkmount "$1" "$TMP/mnt" >/dev/null || return 1
	local rc=0
	sparse_cmp_mnt "$TMP/mnt/vmdk1" "$2" || rc=1
	fusermount -u "$TMP/mnt"
	return $rc
}
# a FUSE file has no holes to skip: compare only where RAW has data, and
# that the rest of the FUSE file reads as zeros in sampled places
sparse_cmp_mnt() {
	python3 - "$1" "$2" <<'PY'
import os, sys
m, r = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
size = os.fstat(r).st_size
off = 0
while off < size:
    try:
        d = os.lseek(r, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(r, d, os.SEEK_HOLE)
    p = d
    while p < h:
        n = min(h - p, 1 << 20)
        if os.pread(m, n, p) != os.pread(r, n, p):
            sys.exit("differ in [%d, %d)" % (p, p + n))
        p += n
    off = h
for p in range(0, size, 97 << 20):
    n = min(65536, size - p)
    if os.pread(m, n, p) != os.pread(r, n, p):
        sys.exit("differ near %d" % p)
PY
}

for src in src big; do
	for opt in subformat=monolithicSparse subformat=streamOptimized esxi zeroed_grain=on; do
		img="$TMP/w-$src-${opt#*=}.vmdk"
		t "keel convert -O vmdk -o $opt ($src)" keel convert -O vmdk -o "$opt" "$TMP/$src.raw" "$img"
		t "qemu-img check passes ($opt, $src)" qemu-img check -f vmdk "$img"
		t "qemu-img compare identical ($opt, $src)" qemu-img compare -f raw -F vmdk "$TMP/$src.raw" "$img"
		if command -v vmdkinfo >/dev/null; then
			t "vmdkinfo opens it ($opt, $src)" sh -c "vmdkinfo '$img' | grep -q 'Media size'"
		fi
		if [ $have_mount = 1 ]; then
			qemu-img convert -f vmdk -O raw "$img" "$TMP/w.raw"
			t "vmdkmount reads the same bytes ($opt, $src)" libvmdk_reads "$img" "$TMP/w.raw"
		fi
	done
done
t "streamOptimized output is version 3 with a footer" python3 - "$TMP/w-src-streamOptimized.vmdk" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
magic, ver, flags = struct.unpack_from('<4sII', b, 0)
assert magic == b'KDMV' and ver == 3 and flags & 0x30000 == 0x30000, (magic, ver, hex(flags))
assert struct.unpack_from('<Q', b, 56)[0] == 2**64 - 1          # GD_AT_END
assert b[-1024:-1020] == b'KDMV'                                 # footer
assert struct.unpack_from('<I', b, len(b) - 1536 + 12)[0] == 3  # footer marker
assert b[-512:] == bytes(512)                                    # end of stream
assert b'createType="streamOptimized"' in b[512:11 * 1024]
PY
t "esxi profile: lsilogic adapter" sh -c "'$KEEL' info '$TMP/w-src-esxi.vmdk' | grep -q 'adapter type: lsilogic'"
t "extent line names the final file, not a temporary" sh -c "'$KEEL' info '$TMP/w-src-monolithicSparse.vmdk' | grep -q 'SPARSE \"w-src-monolithicSparse.vmdk\"'"
t "keel convert -c -O vmdk writes a stream qemu reads" sh -c "'$KEEL' convert -c -O vmdk '$TMP/src.raw' '$TMP/w-c.vmdk' >/dev/null && '$KEEL' info '$TMP/w-c.vmdk' | grep -q streamOptimized && qemu-img compare -f raw -F vmdk '$TMP/src.raw' '$TMP/w-c.vmdk'"
t "keel reads what keel wrote (stream)" sh -c "'$KEEL' compare '$TMP/src.raw' '$TMP/w-src-streamOptimized.vmdk'"

# ---------------------------------------------------------------- chains written by keel
t "create a monolithicSparse base" keel create -f vmdk "$TMP/kb.vmdk" 64M
t "write the base" keel io -f vmdk -c "write -P 0x11 0 1M" -c "write -P 0x22 8M 300k" "$TMP/kb.vmdk"
t "create a child with -b" keel create -f vmdk -b kb.vmdk "$TMP/kc.vmdk"
t "write the child" keel io -f vmdk -c "write -P 0x33 65536 100" -c "write -P 0x44 9M 64k" "$TMP/kc.vmdk"
t "qemu-img check of the child" qemu-img check -f vmdk "$TMP/kc.vmdk"
t "qemu-img sees the parent" sh -c "qemu-img info '$TMP/kc.vmdk' | grep -q 'backing file: kb.vmdk'"
t "qemu reads the chain as keel does" same_as_qemu "$TMP/kc.vmdk"
t "qemu-io reads child data over parent data" qemu-io -f vmdk -c "read -P 0x11 0 65536" -c "read -P 0x33 65536 100" -c "read -P 0x11 65636 1000" "$TMP/kc.vmdk"
if command -v vmdkinfo >/dev/null; then
	t "vmdkinfo sees the parent" sh -c "vmdkinfo '$TMP/kc.vmdk' | grep -q 'Parent filename:.*kb.vmdk'"
fi
qemu-io -f vmdk -c 'write -P 0x55 0 512' "$TMP/kb.vmdk" >/dev/null
expect_err "keel refuses the child once the parent changed" "kc.vmdk: parent 'kb.vmdk' has CID" keel map "$TMP/kc.vmdk"
expect_err "a VMDK parent must be VMDK" "must be a VMDK" keel create -f vmdk -b src.raw -F raw "$TMP/kx.vmdk"

# vmfsSparse (COWD): ESXi's snapshot deltas on VMFS 5, behind a descriptor,
# over a vmfs (flat) base. Nothing here writes COWD: tests/common/mkcowd.py
# makes them, and qemu-img, which reads them, is the judge.
MKCOWD=$(cd "$(dirname "$0")/../common" && pwd)/mkcowd.py
mkcowd() { python3 "$MKCOWD" "$@"; }
mkdesc() { # mkdesc OUT CREATETYPE TYPE SECTORS EXTFILE CID [PARENT PARENTCID]
	printf '# Disk DescriptorFile\nversion=1\nCID=%s\nparentCID=%s\ncreateType="%s"\n%s\n# Extent description\nRW %s %s "%s"\n\n#DDB\nddb.adapterType = "lsilogic"\n' \
		"$6" "${8:-ffffffff}" "$2" "${7:+parentFileNameHint=\"$7\"}" "$4" "$3" "$5" >"$1"
}
cd "$TMP" || exit 1
mkcowd cw1-delta.vmdk 40960 1 1 && mkdesc cw1.vmdk vmfsSparse VMFSSPARSE 40960 cw1-delta.vmdk 1a2b3c4d
mkcowd cw2-delta.vmdk 300001 128 3 && mkdesc cw2.vmdk vmfsSparse VMFSSPARSE 300001 cw2-delta.vmdk 1a2b3c4e
head -c $((40960 * 512)) /dev/urandom >cwb-flat.vmdk && mkdesc cwb.vmdk vmfs VMFS 40960 cwb-flat.vmdk 11111111
mkcowd cw3-delta.vmdk 40960 8 4 && mkdesc cw3.vmdk vmfsSparse VMFSSPARSE 40960 cw3-delta.vmdk 22222222 cwb.vmdk 11111111
for n in cw1 cw2 cw3; do
	qemu-img convert -f vmdk -O raw $n.vmdk $n.ref.raw
	t "vmfsSparse $n: keel compare with qemu-img's raw" keel compare $n.ref.raw $n.vmdk
	t "vmfsSparse $n: keel check finds nothing wrong" keel check $n.vmdk
done
t "vmfsSparse: info names it and the vmfs parent" sh -c \
	"'$KEEL' info cw3.vmdk | grep -q 'vmdk (vmfsSparse)' && '$KEEL' info cw3.vmdk | grep -q 'parent: cwb.vmdk'"
t "vmfsSparse: converts to qcow2 that qemu-img compares equal" sh -c \
	"'$KEEL' -q convert -O qcow2 cw3.vmdk cw3.qcow2 && qemu-img compare cw3.ref.raw cw3.qcow2"
t "vmfsSparse: a delta alone reads (without its parent)" sh -c "'$KEEL' info cw1-delta.vmdk | grep -q 'vmdk (vmfsSparse)'"
expect_err "vmfsSparse: not written" "vmfsSparse (COWD) extents are read-only in keel" keel io -c "write 0 4k" cw1.vmdk
cp cw2-delta.vmdk cwleak-delta.vmdk && head -c 65536 /dev/urandom >>cwleak-delta.vmdk
mkdesc cwleak.vmdk vmfsSparse VMFSSPARSE 300001 cwleak-delta.vmdk 1a2b3c4f
t "vmfsSparse: check reports space no table uses" sh -c "! '$KEEL' check cwleak.vmdk >cwl.out 2>&1; grep -q 'used by nothing (leaked)' cwl.out"
# damaged NAME DELTA CREATETYPE EXTTYPE SECTORS PYTHON MESSAGE: a copy of DELTA
# patched by PYTHON (w32/w64 write little-endian), behind its own descriptor
damaged() {
	local n=$1 ext=${2##*-}
	cp "$2" "$n-$ext"
	python3 -c "import struct, sys
f = open(sys.argv[1], 'r+b')
def w32(o, v): f.seek(o); f.write(struct.pack('<I', v))
def w64(o, v): f.seek(o); f.write(struct.pack('<Q', v))
$6" "$n-$ext"
	mkdesc $n.vmdk $3 $4 $5 "$n-$ext" 1a2b3c4d
	expect_err "$3: $n" "$7" keel convert -O raw $n.vmdk $n.raw
}
cowd_bad() { damaged "$1" cw1-delta.vmdk vmfsSparse VMFSSPARSE 40960 "$2" "$3"; }
cowd_bad cwver 'w32(4, 2)' "vmfsSparse (COWD) version 2 is not supported"
cowd_bad cwgrain 'w32(16, 3)' "vmfsSparse header: grain size 3 sectors is not a power of two"
cowd_bad cwngd 'w32(24, 1)' "vmfsSparse header: 1 grain directory entries cannot map 40960 sectors"
cowd_bad cwgd 'w32(20, 2)' "vmfsSparse header: grain directory at sector 2 lies inside the header"
cowd_bad cwgdeof 'w32(20, 1 << 30)' "grain directory"
cowd_bad cwgt 'f.seek(4 * 512); w32(4 * 512, 0x7fffffff)' "grain table 0 at sector 2147483647"

# seSparse: ESXi's snapshot deltas on VMFS 6, made by tests/common/mksesparse.py
# in the layout qemu reads (VMware never published it); qemu-img is the judge
MKSE=$(cd "$(dirname "$MKCOWD")" && pwd)/mksesparse.py
python3 "$MKSE" se1-sesparse.vmdk 81920 1 && mkdesc se1.vmdk seSparse SESPARSE 81920 se1-sesparse.vmdk 1a2b3c50
python3 "$MKSE" se2-sesparse.vmdk 70000000 2 && mkdesc se2.vmdk seSparse SESPARSE 70000000 se2-sesparse.vmdk 1a2b3c51
head -c $((81920 * 512)) /dev/urandom >seb-flat.vmdk && mkdesc seb.vmdk vmfs VMFS 81920 seb-flat.vmdk 33333333
python3 "$MKSE" se3-sesparse.vmdk 81920 3 && mkdesc se3.vmdk seSparse SESPARSE 81920 se3-sesparse.vmdk 44444444 seb.vmdk 33333333
for n in se1 se2 se3; do
	qemu-img convert -f vmdk -O raw $n.vmdk $n.ref.raw
	t "seSparse $n: keel compare with qemu-img's raw" keel compare $n.ref.raw $n.vmdk
done
t "seSparse: check walks every table: 60 grains of data" sh -c "'$KEEL' check se2.vmdk | grep -q '^60/8750000 = '"
t "seSparse: zero and unmapped grains hide the parent (as qemu reads)" sh -c \
	"'$KEEL' map --output json se3.vmdk | grep -q '\"type\": *\"zero\"'"
t "seSparse: converts to VHDX that qemu-img compares equal" sh -c \
	"'$KEEL' -q convert -O vhdx se3.vmdk se3.vhdx && qemu-img compare se3.ref.raw se3.vhdx"
t "seSparse: a delta alone reads (without its parent)" sh -c "'$KEEL' info se1-sesparse.vmdk | grep -q 'vmdk (seSparse)' && '$KEEL' check se1-sesparse.vmdk"
expect_err "seSparse: not written" "seSparse extent (descriptor line [0-9]*) is read-only in keel" keel io -c "write 0 4k" se1.vmdk
se_bad() { damaged "$1" se1-sesparse.vmdk seSparse SESPARSE 81920 "$2" "$3"; }
se_bad semagic 'w64(0, 0)' "no seSparse header magic"
se_bad sever 'w64(8, 1)' "seSparse version 0x1 is not supported"
se_bad segrain 'w64(24, 16)' "seSparse grains of 16 sectors and tables of 64 sectors are not supported"
se_bad seflags 'w64(40, 1)' "seSparse flags or reserved fields are set"
se_bad sevol 'w64(512, 0)' "no seSparse volatile header magic at sector 1"
se_bad sejournal 'w64(512 + 24, 1)' "seSparse journal needs replaying"
se_bad segdsize 'w64(136, 0)' "seSparse grain directory of 0 sectors cannot map 81920 sectors"
se_bad segdeof 'w64(128, 1 << 40)' "seSparse grain directory at sector 1099511627776"
se_bad segtoff 'w64(144, 1 << 63)' "seSparse grain tables (sector 9223372036854775808) or grains"
se_bad segde 'w64(16 * 512, 0x2000000000000005)' "seSparse grain directory entry 0 is 0x2000000000000005"
se_bad segte 'w64(17 * 512, 0x5000000000000000)' "has table entry 0x5000000000000000 (unknown kind)"
se_bad segrainfar 'w64(17 * 512, 0x30000000ffffffff)' "lies past the end of the file"
t "seSparse: check reports a damaged table entry" sh -c "! '$KEEL' check segte.vmdk >segte.out 2>&1; grep -q 'unknown kind' segte.out"
finish
