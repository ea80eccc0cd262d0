#!/usr/bin/env bash
# tests/shell/test_convert_device.sh - keel convert and keel restore into a
# block device (loop devices stand in for LVM volumes and disks): written in
# place, raw, zeros where the source is zero, the tail past the image left
# alone; refused when mounted, too small, or not raw; device nodes and other
# special files are never replaced by a regular file; symbolic links to
# files are followed. Needs root and loop devices.
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || skip "needs root for loop devices"
command -v losetup >/dev/null || skip "losetup is missing"
cd "$TMP"
cleanup() {
	umount "$TMP/mnt" 2>/dev/null
	for f in "$TMP"/*.img; do
		for l in $(losetup -j "$f" -O NAME -n 2>/dev/null); do
			losetup -d "$l"
		done
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
# newloop FILE SIZE: a loop device over FILE, full of 0xff (stale content)
newloop() {
	python3 -c "import sys; open(sys.argv[1], 'wb').write(b'\xff' * int(sys.argv[2]))" "$1" "$2"
	losetup -f --show "$1" 2>/dev/null
}
ff_only() { # ff_only DEV OFFSET: every byte of DEV from OFFSET on is 0xff
	python3 - "$1" "$2" <<'PY'
import sys
with open(sys.argv[1], 'rb') as f:
    f.seek(int(sys.argv[2]))
    rest = f.read()
sys.exit(0 if rest and rest.count(b'\xff') == len(rest) else 1)
PY
}

size=$((24 * 1024 * 1024 + 12345)) # not a whole number of sectors
vsize=$(((size + 511) / 512 * 512)) # qcow2 rounds the disk up to whole sectors
pattern_file src.raw "$size"
qemu-img convert -f raw -O qcow2 src.raw src.qcow2 2>/dev/null || keel convert -f raw -O qcow2 src.raw src.qcow2 >/dev/null
dev=$(newloop back.img $((40 * 1024 * 1024))) || skip "cannot attach a loop device here"

t "qcow2 -> block device, --verify" keel convert --verify -O raw src.qcow2 "$dev"
t "the device is still a block device" test -b "$dev"
t "the device reads back as the source (zeros written over stale bytes)" cmp -n "$size" src.raw "$dev"
t "bytes past the image are left alone" ff_only "$dev" "$vsize"

# --verify notices a wrong byte on the device (KEEL_CONV_TEST_FLIP corrupts one)
KEEL_CONV_TEST_FLIP=1 "$KEEL" convert --verify -O raw src.qcow2 "$dev" >flip.out 2>&1
t "--verify mismatch on a device exits 3" test $? -eq 3
t "... naming the device" grep -q "verification failed: $dev" flip.out

# -t writeback and -t unsafe reach the device the same way
python3 -c "import sys; open(sys.argv[1], 'r+b').write(b'\xff' * 4096)" "$dev"
t "-t writeback into the device" keel convert -t writeback -O raw src.qcow2 "$dev"
t "-t writeback content" cmp -n "$size" src.raw "$dev"

# refusals leave the device as it was
sum0=$(sha256sum <"$dev")
pattern_file big.raw $((48 * 1024 * 1024))
expect_err "a device smaller than the image is refused" "holds .* bytes.*nothing was written" \
	keel convert -f raw -O raw big.raw "$dev"
expect_err "only raw goes into a device" "only raw" keel convert -O qcow2 src.qcow2 "$dev"
expect_err "-B into a device is refused" "need image" \
	keel convert -O raw -B src.raw -F raw src.qcow2 "$dev"
expect_err "the device as its own source is refused" "itself.*nothing was written" \
	keel convert -f raw -O raw "$dev" "$dev"
t "refusals left the device untouched" test "$(sha256sum <"$dev")" = "$sum0"

# a mounted device is refused (O_EXCL)
mdev=$(newloop m.img $((32 * 1024 * 1024)))
if [ -n "$mdev" ] && mkfs.ext4 -q -F "$mdev" >/dev/null 2>&1 && mkdir -p mnt &&
	mount "$mdev" mnt 2>/dev/null; then
	echo keep >mnt/file
	expect_err "a mounted device is refused" "in use.*nothing was written" \
		keel convert -f raw -O raw src.raw "$mdev"
	t "the mounted filesystem is intact" grep -q keep mnt/file
	umount mnt
else
	echo "SKIP: cannot mount a loop device here: the in-use refusal is not checked"
fi

# a write error part-way names the device as partly written
KEEL_FAULT=error@20 "$KEEL" convert -f raw -O raw src.raw "$dev" >err.out 2>&1
t "a failed copy into a device exits 1" test $? -eq 1
t "... and says the device is partly written" grep -q "partly written" err.out

# keel restore into a device
cp src.raw s512.raw
truncate -s "$vsize" s512.raw
keel backup --name one s512.raw v.keel >/dev/null
python3 -c "import sys; open(sys.argv[1], 'r+b').write(b'\xff' * (1 << 20))" "$dev"
t "restore into a block device" keel restore --verify v.keel "$dev"
t "restored content" cmp -n "$vsize" s512.raw "$dev"
t "the restored device is still a block device" test -b "$dev"

# other special files are refused and stay what they are
mkfifo fifo
expect_err "a FIFO as DST is refused" "not a regular file or a block device" \
	keel convert -f raw -O raw src.raw fifo
t "the FIFO is still a FIFO" test -p fifo
mknod cdev c 1 3 # a twin of /dev/null
expect_err "a character device as DST is refused" "not a regular file or a block device" \
	keel convert -f raw -O raw src.raw cdev
t "the character device is still one" test -c cdev

# symbolic links: to a file, the file is replaced; dangling, refused
echo old >target.raw
ln -s target.raw link.raw
t "convert through a symlink" keel convert -f raw -O raw src.raw link.raw
t "the link is still a link" test -L link.raw
t "the file it names got the image" cmp src.raw target.raw
ln -s nowhere.raw dangling.raw
expect_err "a dangling symlink as DST is refused" "symbolic link to nothing" \
	keel convert -f raw -O raw src.raw dangling.raw
t "nothing was created at the dangling link's target" test ! -e nowhere.raw

finish
