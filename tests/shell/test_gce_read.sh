#!/usr/bin/env bash
# tests/shell/test_gce_read.sh - reading a raw disk out of a tar, gzip-
# compressed or not (format/gce.c): what `gcloud compute images export`
# writes, what GNU tar makes in each of its sparse dialects, and keel's own
# -O gce. Every read path must take the stream in one pass
# (KEEL_GCE_ONE_PASS=1 makes a second pass an error), and a damaged stream
# must fail the command before anything is written under DST.
. "$(dirname "$0")/lib.sh"
command -v tar >/dev/null || skip "tar not installed"
command -v gzip >/dev/null || skip "gzip not installed"
cd "$TMP"
mkdir src
pattern_file src/disk.raw $((40 * 1048576 + 512))
# holes the tar must store as holes: 8 MiB in the middle, 3 MiB before the end
fallocate -p -o $((16 << 20)) -l $((8 << 20)) src/disk.raw 2>/dev/null ||
	dd if=/dev/zero of=src/disk.raw bs=1M seek=16 count=8 conv=notrunc,sparse status=none
cp src/disk.raw ref.raw

# every dialect GNU tar writes, and keel's own
(cd src && tar --format=oldgnu -Sczf ../oldgnu.tar.gz disk.raw)
(cd src && tar --format=gnu -Sczf ../gnu.tar.gz disk.raw)
(cd src && tar --format=posix -Sczf ../pax10.tar.gz disk.raw)
(cd src && tar --format=posix --sparse-version=0.1 -Sczf ../pax01.tar.gz disk.raw)
(cd src && tar --format=ustar -czf ../ustar.tar.gz disk.raw)
(cd src && tar --format=oldgnu -Scf ../plain.tar disk.raw)
keel convert -O gce -f raw ref.raw keel.tar.gz >/dev/null
export KEEL_GCE_ONE_PASS=1
for a in oldgnu.tar.gz gnu.tar.gz pax10.tar.gz pax01.tar.gz ustar.tar.gz plain.tar keel.tar.gz; do
	t "$a: probed as gce" sh -c "'$KEEL' info $a | grep -q 'file format: gce'"
	t "$a: reads as the disk" keel compare ref.raw $a
	rm -f out.qcow2
	t "$a: convert -j 4 --verify, one pass" keel convert -j 4 --verify -O qcow2 $a out.qcow2
	t "$a: qemu-img agrees" qemu-img compare -f raw -F qcow2 ref.raw out.qcow2
	t "$a: check reads it through" keel check $a
done
# keel's gce rounds the size up to a whole GiB: the padding reads as zeros
t "the padding is a hole" sh -c "'$KEEL' map --output json keel.tar.gz | grep -q '\"type\": \"zero\"'"
t "sizes" test "$(keel info --output json oldgnu.tar.gz | grep -o '"virtual_size": [0-9]*')" = "\"virtual_size\": $((40 * 1048576 + 512))"
t "sparse map is the block status" sh -c "'$KEEL' map oldgnu.tar.gz | grep -q '^0x1000000 .*zero'"
for f in qcow2 vmdk vhdx vhd vdi keel raw; do
	rm -f out.$f
	t "into $f" keel convert -O $f oldgnu.tar.gz out.$f
	t "into $f: same content" keel compare ref.raw out.$f
done
# a reader thread inflates ahead while the writer commits; without it
# (a target that needs its zeros written, -B) the writer's thread reads
t "the writer's thread reading, -j 4 --verify" env KEEL_CONV_NO_READER=1 "$KEEL" convert -j 4 --verify -O qcow2 oldgnu.tar.gz nr.qcow2
t "...matches" keel compare ref.raw nr.qcow2
t "-j 1 with the reader thread, --verify" keel convert -j 1 --verify -O qcow2 oldgnu.tar.gz j1.qcow2
t "...matches" keel compare ref.raw j1.qcow2
t "compressed zstd qcow2 from a tar.gz" keel convert -c -O qcow2 -o compression_type=zstd pax10.tar.gz z.qcow2
t "...matches" qemu-img compare -f raw ref.raw z.qcow2
t "into an OVA" keel convert -O ova oldgnu.tar.gz vm.ova
t "...matches" keel compare ref.raw vm.ova
t "tar.gz to tar.gz" keel convert -O gce gnu.tar.gz again.tar.gz
t "...matches" keel compare ref.raw again.tar.gz
t "a nightly backup of a tar.gz" keel backup oldgnu.tar.gz v.keel
t "...restores the disk" keel compare ref.raw v.keel
t "--output json of a convert" sh -c "'$KEEL' convert --output json -O qcow2 gnu.tar.gz j.qcow2 | grep -q '\"bytes_read\"'"

# gzip as other tools write it: several members, zero padding after it
tar -C src -cf cat.tar disk.raw
head -c 20000000 cat.tar | gzip -1 >cat.tar.gz
tail -c +20000001 cat.tar | gzip -9 >>cat.tar.gz
t "concatenated gzip members" keel compare ref.raw cat.tar.gz
cp oldgnu.tar.gz padded.tar.gz && head -c 10240 /dev/zero >>padded.tar.gz
t "zero padding after the stream" keel compare ref.raw padded.tar.gz
cp oldgnu.tar.gz trailing.tar.gz && printf 'junk' >>trailing.tar.gz
expect_err "trailing garbage" "4 bytes of trailing data after the gzip stream" \
	keel compare ref.raw trailing.tar.gz

# reading backwards works, by reading again from the start (not in one pass)
keel create -f raw p.raw 16M >/dev/null
keel io -f raw -c "write -P 0x11 1M 1M" -c "write -P 0x22 9M 1M" p.raw >/dev/null
mkdir p && cp --sparse=always p.raw p/disk.raw && tar -C p -Sczf p.tar.gz disk.raw
t "a read behind the last one starts over" env -u KEEL_GCE_ONE_PASS "$KEEL" io -c "read -P 0x22 9M 64k" -c "read -P 0x11 1M 64k" -c "read -P 0x22 10175k 1k" p.tar.gz
expect_err "...which KEEL_GCE_ONE_PASS catches" "a second pass over the stream" \
	keel io -c "read -P 0x22 9M 64k" -c "read -P 0x11 1M 64k" p.tar.gz
expect_err "read-only" "read-only" keel io -c "write -P 1 0 4k" p.tar.gz

# members: disk.raw by default, anything else by name
echo notes >notes.txt
cp p.raw disk.img
tar -czf two.tar.gz notes.txt disk.img
expect_err "no disk.raw: the error lists the members" \
	"no file 'disk.raw' in the archive (it holds 2: notes.txt, disk.img); pick one with FILE@NAME" \
	keel info two.tar.gz
t "FILE@NAME selects a member" keel compare p.raw two.tar.gz@disk.img
t "--disk NAME too" keel convert --disk disk.img -O qcow2 two.tar.gz sel.qcow2
t "...matches" keel compare p.raw sel.qcow2
expect_err "a missing member" "no file 'nope' in the archive" keel info two.tar.gz@nope
qemu-img convert -f raw -O qcow2 p.raw disk.raw
tar -czf q.tar.gz disk.raw
expect_err "an image inside the tar is not read as raw" \
	"'disk.raw' in the archive is a qcow2 image, not a raw disk: extract it" keel info q.tar.gz
gzip -c p.raw >p.raw.gz
expect_err "gzip of a disk, not of a tar" "p.raw.gz is gzip-compressed data (not a tar" keel info p.raw.gz

# damage: in the data, in the CRC, a cut; nothing written under DST
size=$(stat -c %s oldgnu.tar.gz)
cp oldgnu.tar.gz flip.tar.gz
printf '\x55' | dd of=flip.tar.gz bs=1 seek=$((size / 2)) conv=notrunc status=none
expect_err "damaged deflate data" "flip.tar.gz: gzip data damaged at or before byte" keel convert -O qcow2 flip.tar.gz flip.qcow2
t "...no output" test ! -e flip.qcow2
expect_err "...read on the writer's thread too" "flip.tar.gz: gzip data damaged at or before byte" env KEEL_CONV_NO_READER=1 "$KEEL" convert -O qcow2 flip.tar.gz flip.qcow2
t "...no output" test ! -e flip.qcow2
cp oldgnu.tar.gz crc.tar.gz
printf '\0\0\0\0' | dd of=crc.tar.gz bs=1 seek=$((size - 8)) conv=notrunc status=none
expect_err "a wrong CRC-32 fails the convert" "crc.tar.gz: gzip data damaged at or before byte [0-9]*: incorrect data check" \
	keel convert -O qcow2 crc.tar.gz crc.qcow2
t "...no output" test ! -e crc.qcow2
expect_rc 3 "check reports it" keel check crc.tar.gz
expect_err "compare does not call it identical" "incorrect data check" keel compare ref.raw crc.tar.gz
head -c $((size - 1000)) oldgnu.tar.gz >cut.tar.gz
expect_err "a cut stream" "cut.tar.gz: gzip stream cut short" keel convert -O qcow2 cut.tar.gz cut.qcow2
t "...no output" test ! -e cut.qcow2
head -c 5000 plain.tar >cut.tar
expect_err "a cut plain tar" "cut.tar" keel compare -F gce ref.raw cut.tar
keel convert -O ova -f raw p.raw vm2.ova >/dev/null && gzip -c vm2.ova >vm2.ova.gz
expect_err "a gzipped OVA gets a hint" "vm2.ova.gz: a gzip-compressed OVA: an OVA is an uncompressed tar (gunzip it" keel info vm2.ova.gz

python3 -c "
import tarfile
ti = tarfile.TarInfo('disk.raw'); ti.size = 1 << 60
open('huge-hdr.tar', 'wb').write(ti.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))"
expect_err "an impossible member size" "'disk.raw' has no size or an impossible one (1152921504606846976)" \
	keel info -f gce huge-hdr.tar

# from a pipe: "-" is standard input, a FIFO works too; read once, forward
cat oldgnu.tar.gz | "$KEEL" convert -O qcow2 - pipe.qcow2 >/dev/null
t "from standard input" keel compare ref.raw pipe.qcow2
mkfifo fifo
# bounded, and not holding the runner's output pipe, should keel never open the FIFO
(timeout 120 cat pax10.tar.gz >fifo 2>/dev/null </dev/null &)
t "from a FIFO, -j 4 --verify" keel convert -j 4 --verify -O vmdk fifo fifo.vmdk
t "...matches" keel compare ref.raw fifo.vmdk
# a writer that stalls: Ctrl-C still stops the command at once, reader
# thread or not (the read polls the signal flag), and leaves no DST
for nr in "" 1; do
	rm -f stall
	mkfifo stall
	(exec 3>stall; head -c 300000 oldgnu.tar.gz >&3; sleep 60) </dev/null >/dev/null 2>&1 &
	wpid=$!
	KEEL_CONV_NO_READER=$nr "$KEEL" convert -O qcow2 stall stall.qcow2 >stall.out 2>&1 &
	kpid=$!
	sleep 1
	kill -INT $kpid
	t0=$(date +%s)
	wait $kpid
	krc=$?
	t "SIGINT while the pipe stalls${nr:+ (read on the writing thread)}: exit 1 within 10 s" \
		test "$krc" = 1 -a $(($(date +%s) - t0)) -le 10
	t "...says it was interrupted" grep -q "keel: error: .*interrupted by signal 2" stall.out
	t "...no output" test ! -e stall.qcow2
	kill $wpid 2>/dev/null
	wait $wpid 2>/dev/null
done
t "info from a pipe" sh -c "cat keel.tar.gz | '$KEEL' info - | grep -q 'member: disk.raw'"
t "backup from a pipe" sh -c "cat gnu.tar.gz | '$KEEL' backup - pv.keel"
t "...restores the disk" keel compare ref.raw pv.keel
expect_err "a raw disk cannot come from a pipe" \
	"- is a pipe, and raw images need random access: only a tar or tar.gz" \
	sh -c "cat ref.raw | '$KEEL' info -"
expect_err "a pipe is not read backwards past its first MiB" \
	"- is a pipe: it cannot be read again at" \
	sh -c "mkdir r && head -c 8M /dev/urandom >r/disk.raw && tar -C r -czf rnd.tar.gz disk.raw &&
		cat rnd.tar.gz | env -u KEEL_GCE_ONE_PASS '$KEEL' io -c 'read 6M 4k' -c 'read 2M 4k' -"
# -O gce --verify digests the source while writing: no second pass (5 MiB
# of random data: far past the pipe's first MiB that could be read again)
head -c 5M /dev/urandom >rnd5.raw
keel convert -O gce -f raw rnd5.raw rnd5.tar.gz >/dev/null
t "-O gce --verify from a pipe" sh -c "cat rnd5.tar.gz | '$KEEL' convert -O gce --verify - again5.tar.gz"
t "...matches" keel compare rnd5.raw again5.tar.gz
expect_err "nor opened twice" "is a pipe this command already reads" \
	sh -c "cat oldgnu.tar.gz | '$KEEL' compare - -"
expect_err "trailing junk after a stream from a pipe" "-: trailing data after the gzip stream (at byte" \
	sh -c "cat trailing.tar.gz | '$KEEL' compare ref.raw -"
expect_err "a damaged stream from a pipe" "incorrect data check" \
	sh -c "cat crc.tar.gz | '$KEEL' convert -O qcow2 - pcrc.qcow2"
t "...no output" test ! -e pcrc.qcow2

# a huge sparse disk costs its data, not its size
keel create -f qcow2 huge.qcow2 1T >/dev/null
keel io -c "write -P 5 0 1M" -c "write -P 6 700G 1M" huge.qcow2 >/dev/null
t "1 TiB sparse into a tar.gz" timeout 120 "$KEEL" convert -O gce huge.qcow2 huge.tar.gz
t "...and back, in one pass" timeout 120 "$KEEL" convert -O qcow2 huge.tar.gz huge2.qcow2
t "...identical" timeout 120 "$KEEL" compare huge.qcow2 huge2.qcow2
finish
