#!/usr/bin/env bash
# keel verify-boot end to end through the qemu engine (TCG here): good images
# pass, bad ones fail with the right reason, the image never changes, nothing
# is left behind, and missing KVM/QEMU give clear errors. Test disks are built
# without root: mkfs -d / protofiles / mtools into partition images, sfdisk
# for the table, dd into place.
. "$(dirname "$0")/lib.sh"

APP=${KEEL_APPLIANCE_DIR:-$(dirname "$KEEL")/appliance}
export KEEL_APPLIANCE_DIR=$APP
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed"
[ -r "$APP/initrd.cpio" ] || skip "appliance not built ($APP; 'make appliance' needs apt-get download)"
for t in sfdisk mkfs.ext4 mkfs.vfat mcopy mkfs.xfs; do
	command -v $t >/dev/null || skip "$t not installed"
done
TO=${VB_TIMEOUT:-150}

# ---- test disks --------------------------------------------------------
mkdir -p "$TMP/root/etc" "$TMP/root/boot" "$TMP/root/usr/lib"
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' \
	>"$TMP/root/usr/lib/os-release"
ln -s ../usr/lib/os-release "$TMP/root/etc/os-release"
echo kernel >"$TMP/root/boot/vmlinuz-6.1.0-test"
echo initrd >"$TMP/root/boot/initrd.img-6.1.0-test"

# ext4 on MBR: 1 MiB gap, 47 MiB partition
mk_mbr_ext4() {
	truncate -s 47M "$TMP/p.ext4"
	mkfs.ext4 -q -F -d "$TMP/root" "$TMP/p.ext4"
	truncate -s 48M "$1"
	echo 'start=2048, type=83' | sfdisk -q "$1"
	dd if="$TMP/p.ext4" of="$1" bs=1M seek=1 conv=notrunc status=none
	rm -f "$TMP/p.ext4"
}
mk_mbr_ext4 "$TMP/mbr.raw"

# GPT: EFI system partition (FAT, EFI/BOOT/BOOTX64.EFI) + ext4 root
truncate -s 33M "$TMP/esp.img"
mkfs.vfat -F 32 -n EFI "$TMP/esp.img" >/dev/null 2>&1 || mkfs.vfat -n EFI "$TMP/esp.img" >/dev/null
echo efi-app >"$TMP/bootx64.efi"
mmd -i "$TMP/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$TMP/esp.img" "$TMP/bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
truncate -s 40M "$TMP/root.ext4"
mkfs.ext4 -q -F -d "$TMP/root" "$TMP/root.ext4"
truncate -s 76M "$TMP/gpt.raw"
sfdisk -q "$TMP/gpt.raw" <<EOF
label: gpt
start=2048, size=67584, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
start=69632, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
EOF
dd if="$TMP/esp.img" of="$TMP/gpt.raw" bs=512 seek=2048 conv=notrunc status=none
dd if="$TMP/root.ext4" of="$TMP/gpt.raw" bs=512 seek=69632 conv=notrunc status=none
rm -f "$TMP/esp.img" "$TMP/root.ext4"

# xfs (new xfs needs >= 300 MiB; the file stays sparse) filled from a protofile
cat >"$TMP/proto" <<EOF
/dev/null
0 0
d--755 0 0
etc d--755 0 0
os-release ---644 0 0 $TMP/root/usr/lib/os-release
\$
boot d--755 0 0
vmlinuz-6.1.0-test ---644 0 0 $TMP/root/boot/vmlinuz-6.1.0-test
initrd.img-6.1.0-test ---644 0 0 $TMP/root/boot/initrd.img-6.1.0-test
\$
\$
EOF
truncate -s 320M "$TMP/p.xfs"
mkfs.xfs -q -f -p "$TMP/proto" "$TMP/p.xfs"
truncate -s 321M "$TMP/xfs.raw"
echo 'start=2048, type=83' | sfdisk -q "$TMP/xfs.raw"
dd if="$TMP/p.xfs" of="$TMP/xfs.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$TMP/p.xfs"

# bad: primary superblock zeroed (partition at 1 MiB, superblock at +1024)
cp --sparse=always "$TMP/mbr.raw" "$TMP/zerosb.raw"
dd if=/dev/zero of="$TMP/zerosb.raw" bs=1024 seek=1025 count=1 conv=notrunc status=none
# bad: truncated to half (the partition now passes the end of the disk)
cp --sparse=always "$TMP/mbr.raw" "$TMP/trunc.raw"
truncate -s 24M "$TMP/trunc.raw"
# bad: random bytes
head -c $((8 << 20)) /dev/urandom >"$TMP/random.raw"
# bad: a filesystem with no partition table
truncate -s 48M "$TMP/nopt.raw"
mkfs.ext4 -q -F -d "$TMP/root" "$TMP/nopt.raw"

fingerprint() { echo "$(sha256sum <"$1" | cut -c1-64) $(stat -c '%s %Y.%y' "$1")"; }

# vb NAME WANT_RC [extra args]: boot, check the exit status, keep the JSON report
vb() {
	local img=$1 want=$2; shift 2
	local before after rc
	before=$(fingerprint "$img")
	"$KEEL" verify-boot --engine qemu --timeout "$TO" --output json "$@" "$img" \
		>"$TMP/out.json" 2>"$TMP/err.txt"
	rc=$?
	after=$(fingerprint "$img")
	if [ "$rc" -eq "$want" ]; then ok "verify-boot $(basename "$img") $* exits $want"
	else bad "verify-boot $(basename "$img") $* exits $rc, wanted $want"; sed 's/^/    # /' "$TMP/err.txt" "$TMP/out.json" | tail -20; fi
	if [ "$before" = "$after" ]; then ok "$(basename "$img") unchanged (bytes and mtime)"
	else bad "$(basename "$img") changed: $before -> $after"; fi
}
# jq-less JSON checks
jcheck() { # DESCRIPTION PYTHON-EXPR (d = the report)
	if python3 -c "import json,sys; d=json.load(open('$TMP/out.json')); sys.exit(0 if ($2) else 1)" 2>"$TMP/py.err"; then
		ok "$1"
	else
		bad "$1"; sed 's/^/    # /' "$TMP/out.json" "$TMP/py.err" | head -c 3000
	fi
}
has_reason() { echo "any(r.startswith('$1') for r in d['reasons'])"; }

vb "$TMP/mbr.raw" 0 --expect-os debian
jcheck "mbr: verdict ok, dos table, ext4 clean, debian, kernel+initrd" \
	"d['passed'] and d['verdict']['disk']['ptable']=='dos' and d['verdict']['partitions'][0]['fstype']=='ext4' and d['verdict']['partitions'][0]['fsck']=='clean' and d['verdict']['os']['id']=='debian' and d['verdict']['boot']['kernel'].endswith('vmlinuz-6.1.0-test') and d['verdict']['boot']['initrd'].endswith('initrd.img-6.1.0-test')"
jcheck "mbr: qemu engine, disk read-only to the guest, stage timings" \
	"d['engine']=='qemu' and d['verdict']['disk']['ro']=='1' and d['timings']['kernel_to_init_s']>0 and d['timings']['checks_s']>0 and d['timings']['total_s']>0"
grep -h timings "$TMP/out.json" >/dev/null && python3 -c "import json; d=json.load(open('$TMP/out.json')); print('    # timings:', d['timings'])"

# sanitizer runs (KEEL_TEST_QUICK) boot fewer images: the guest side is the
# same; what ASan watches is keel's own serving of the disk
full() { [ -z "${KEEL_TEST_QUICK:-}" ] || [ "${KEEL_TEST_QUICK:-}" = 0 ]; }
if full; then
vb "$TMP/gpt.raw" 0
jcheck "gpt: verdict ok with an EFI system partition and its bootloader" \
	"d['passed'] and d['verdict']['disk']['ptable']=='gpt' and d['verdict']['partitions'][0]['esp'] and d['verdict']['boot']['efi'].upper().endswith('BOOTX64.EFI') and d['verdict']['partitions'][0]['fsck']=='clean'"

vb "$TMP/xfs.raw" 0
jcheck "xfs: verdict ok, xfs checked" \
	"d['passed'] and d['verdict']['partitions'][0]['fstype']=='xfs' and d['verdict']['partitions'][0]['fsck'] in ('clean','unavailable')"
fi

# other formats and snapshots of the same disk, where the drivers exist
if "$KEEL" help formats 2>/dev/null | grep -qw qcow2; then
	qemu-img convert -O qcow2 "$TMP/mbr.raw" "$TMP/mbr.qcow2"
	vb "$TMP/mbr.qcow2" 0 --expect-os debian
else
	echo "# qcow2 driver not in this build: qcow2 boot not tested"
fi
if full && "$KEEL" help formats 2>/dev/null | grep -qw vmdk; then
	qemu-img convert -O vmdk "$TMP/mbr.raw" "$TMP/mbr.vmdk"
	vb "$TMP/mbr.vmdk" 0 --expect-os debian
else
	echo "# vmdk driver not in this build: VMDK boot not tested"
fi
if "$KEEL" help formats 2>/dev/null | grep -qw keel &&
	"$KEEL" convert -O keel "$TMP/mbr.raw" "$TMP/vault.keel" >/dev/null 2>&1 &&
	"$KEEL" snapshot create "$TMP/vault.keel" nightly >/dev/null 2>&1; then
	"$KEEL" io -c 'write -z 0 1M' "$TMP/vault.keel" >/dev/null 2>&1 # wreck the current state
	vb "$TMP/vault.keel@nightly" 0 --expect-os debian
else
	echo "# .keel snapshots not in this build: vault.keel@SNAP boot not tested"
fi

# the human report, on the expect-os mismatch (one boot for both)
before=$(fingerprint "$TMP/mbr.raw")
"$KEEL" verify-boot --engine qemu --timeout "$TO" --expect-os ubuntu "$TMP/mbr.raw" >"$TMP/h.txt" 2>&1
rc=$?
t "expect-os mismatch exits 3" test "$rc" = 3
t "expect-os mismatch: reason expected-os-absent" grep -q 'reason: expected-os-absent' "$TMP/h.txt"
t "human report: verdict FAIL, os, stage timings" sh -c \
	"grep -q 'verdict: FAIL' '$TMP/h.txt' && grep -q '^os: debian' '$TMP/h.txt' && grep -q 'timings: vmm start .* kernel to /init .* checks' '$TMP/h.txt'"
t "mbr.raw unchanged after the mismatch run" test "$before" = "$(fingerprint "$TMP/mbr.raw")"

vb "$TMP/zerosb.raw" 3
jcheck "zeroed superblock: fsck errors or no filesystem, no OS" \
	"($(has_reason fsck-errors) or $(has_reason no-filesystem)) and $(has_reason no-os)"
if full; then
vb "$TMP/trunc.raw" 3
jcheck "truncated image: partition beyond the end" "$(has_reason partition-beyond-end)"
vb "$TMP/random.raw" 3
jcheck "random bytes: no partition table" "$(has_reason no-partition-table)"
vb "$TMP/nopt.raw" 3
jcheck "filesystem without a partition table: no partition table" "$(has_reason no-partition-table)"
fi


# ---- no engine / no permission / no QEMU ----------------------------------
expect_err "kvm engine without /dev/kvm" "/nonexistent/kvm does not exist" \
	env KEEL_KVM_DEV=/nonexistent/kvm "$KEEL" verify-boot --engine kvm "$TMP/mbr.raw"
mkdir -p "$TMP/nobin"
for tool in env sh; do ln -sf "$(command -v $tool)" "$TMP/nobin/$tool"; done
expect_err "qemu engine without QEMU" "qemu-system-x86_64 not found" \
	env PATH="$TMP/nobin" "$KEEL" verify-boot --engine qemu "$TMP/mbr.raw"
expect_err "auto without KVM and QEMU names both" "no engine can run.*does not exist.*qemu-system-x86_64" \
	env PATH="$TMP/nobin" KEEL_KVM_DEV=/nonexistent/kvm "$KEEL" verify-boot "$TMP/mbr.raw"
t "--explain picks qemu on kvm_pvm / without KVM" sh -c \
	"KEEL_KVM_DEV=/nonexistent/kvm '$KEEL' verify-boot --explain | grep -q '^engine: qemu'"
if [ -e /sys/module/kvm_pvm ]; then
	t "--explain says why (kvm_pvm)" sh -c "'$KEEL' verify-boot --explain | grep -q 'kvm_pvm'"
fi
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && [ -e /dev/kvm ] &&
	[ "$(stat -c %a /dev/kvm)" = 600 ]; then
	cp "$TMP/random.raw" /tmp/keel-vb-perm.$$.raw && chmod 644 /tmp/keel-vb-perm.$$.raw
	expect_err "kvm engine without permission" "permission denied" \
		setpriv --reuid=65534 --regid=65534 --clear-groups \
		env KEEL_APPLIANCE_DIR="$APP" "$KEEL" verify-boot --engine kvm /tmp/keel-vb-perm.$$.raw
	rm -f /tmp/keel-vb-perm.$$.raw
else
	echo "# permission test needs root, setpriv and a 0600 /dev/kvm: not run"
fi
expect_rc 2 "unknown engine is a usage error" "$KEEL" verify-boot --engine xen "$TMP/mbr.raw"
t "help verify-boot documents engines and checks" sh -c \
	"'$KEEL' help verify-boot | grep -q 'auto   (default)' && '$KEEL' help verify-boot | grep -q 'nothing-bootable'"

# ---- nothing left behind: watchdog and signals -------------------------------
"$KEEL" verify-boot --engine qemu --timeout 2 "$TMP/mbr.raw" >"$TMP/wd.txt" 2>&1 &
pid=$!
wait $pid
rc=$?
t "watchdog: exit 1 with 'no verdict within 2 s'" sh -c "[ $rc = 1 ] && grep -q 'no verdict within 2 s' '$TMP/wd.txt'"
t "watchdog: no QEMU left behind" sh -c "! pgrep -f '[k]eel-verify-boot-$pid-' >/dev/null"
"$KEEL" verify-boot --engine qemu --timeout 100 "$TMP/mbr.raw" >"$TMP/sig.txt" 2>&1 &
pid=$!
sleep 2
kill -TERM $pid
wait $pid
rc=$?
t "SIGTERM: exit 1, cancelled" sh -c "[ $rc = 1 ] && grep -q 'cancelled' '$TMP/sig.txt'"
sleep 0.5
t "SIGTERM: no QEMU left behind" sh -c "! pgrep -f '[k]eel-verify-boot-$pid-' >/dev/null"
t "no socket file: the NBD socket is abstract" sh -c "! grep -q 'keel-verify-boot-$pid' /proc/net/unix"
finish
