#!/usr/bin/env bash
# A full Linux boot of the appliance through keel's own VMM (--engine kvm).
# Needs hardware-backed /dev/kvm: on kvm_pvm (software KVM, ~1M guest
# instructions/s) a distribution kernel does not reach userspace in useful
# time, so this prints SKIP there. The tiny-guest tests
# (tests/unit/vmm/test_kvm.c) cover the VMM on every host with /dev/kvm.
. "$(dirname "$0")/lib.sh"

APP=${KEEL_APPLIANCE_DIR:-$(dirname "$KEEL")/appliance}
export KEEL_APPLIANCE_DIR=$APP
dev=${KEEL_KVM_DEV:-/dev/kvm}
[ -e "$dev" ] || skip "$dev does not exist (no KVM on this host)"
[ -r "$dev" ] && [ -w "$dev" ] || skip "$dev is not accessible to $(id -un)"
[ -e /sys/module/kvm_pvm ] && skip "$dev is kvm_pvm (software KVM without VT-x/AMD-V): a Linux boot takes minutes; run on a host with hardware virtualization"
[ -r "$APP/initrd.cpio" ] || skip "appliance not built ('make appliance')"
command -v sfdisk >/dev/null && command -v mkfs.ext4 >/dev/null || skip "sfdisk/mkfs.ext4 missing"

mkdir -p "$TMP/root/etc" "$TMP/root/boot"
printf 'ID=debian\nPRETTY_NAME="Debian GNU/Linux 12"\n' >"$TMP/root/etc/os-release"
echo k >"$TMP/root/boot/vmlinuz-t"
echo i >"$TMP/root/boot/initrd.img-t"
truncate -s 47M "$TMP/p.ext4"
mkfs.ext4 -q -F -d "$TMP/root" "$TMP/p.ext4"
truncate -s 48M "$TMP/disk.raw"
echo 'start=2048, type=83' | sfdisk -q "$TMP/disk.raw"
dd if="$TMP/p.ext4" of="$TMP/disk.raw" bs=1M seek=1 conv=notrunc status=none
sum=$(sha256sum <"$TMP/disk.raw")

expect_rc 0 "kvm engine: appliance boots and the verdict is ok" \
	"$KEEL" verify-boot --engine kvm --expect-os debian --output json "$TMP/disk.raw"
t "kvm engine: report says kvm" grep -q '"engine":"kvm"' "$TMP/.out"
t "kvm engine: image unchanged" test "$sum" = "$(sha256sum <"$TMP/disk.raw")"
truncate -s 4M "$TMP/blank.raw"
expect_rc 3 "kvm engine: a blank disk fails" "$KEEL" verify-boot --engine kvm "$TMP/blank.raw"
finish
