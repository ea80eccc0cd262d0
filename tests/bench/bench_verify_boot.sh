#!/usr/bin/env bash
# tests/bench/bench_verify_boot.sh - verify-boot wall time and peak RSS.
#
# With hardware KVM: keel's kvm engine vs QEMU (KVM) with the same kernel,
# initramfs and image. Without (kvm_pvm, no /dev/kvm): the qemu engine with
# keel's tuned appliance boot (PVH vmlinux, acpi=off, quiet, legacy virtio)
# vs a default QEMU boot of the same appliance and image (pc machine with
# ACPI, bzImage, modern virtio, no quiet). Peak RSS is the largest sum of
# RSS over the process tree (keel + QEMU), sampled every 20 ms.
#   RUNS=3 KEEL=build/keel tests/bench/bench_verify_boot.sh
set -u
: "${KEEL:=$PWD/build/keel}"
RUNS=${RUNS:-3}
APP=${KEEL_APPLIANCE_DIR:-$(dirname "$KEEL")/appliance}
export KEEL_APPLIANCE_DIR=$APP
[ -r "$APP/initrd.cpio" ] || { echo "SKIP: appliance not built (make appliance)"; exit 77; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 not installed"; exit 77; }
T=$(mktemp -d /tmp/bench-vb.XXXXXX)
trap 'rm -rf "$T"' EXIT

mkdir -p "$T/root/etc" "$T/root/boot"
printf 'ID=debian\nPRETTY_NAME="Debian GNU/Linux 12"\n' >"$T/root/etc/os-release"
echo k >"$T/root/boot/vmlinuz-bench"
echo i >"$T/root/boot/initrd.img-bench"
truncate -s 63M "$T/p.ext4"
mkfs.ext4 -q -F -d "$T/root" "$T/p.ext4"
truncate -s 64M "$T/disk.raw"
echo 'start=2048, type=83' | sfdisk -q "$T/disk.raw"
dd if="$T/p.ext4" of="$T/disk.raw" bs=1M seek=1 conv=notrunc status=none

# measure LABEL CMD...: wall seconds to exit and peak tree RSS (MiB); appends to $T/LABEL
measure() {
	local label=$1; shift
	python3 - "$T/$label" "$@" <<'PY'
import os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
def tree_rss(root):
    pids, total = {root}, 0
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            st = open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()
            if int(st[1]) in pids or int(d) == root:
                pids.add(int(d))
        except OSError:
            pass
    for p in pids:
        try:
            for l in open(f'/proc/{p}/status'):
                if l.startswith('VmRSS:'):
                    total += int(l.split()[1])
        except OSError:
            pass
    return total
t0 = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
peak = 0
while p.poll() is None:
    peak = max(peak, tree_rss(p.pid))
    time.sleep(0.02)
wall = time.monotonic() - t0
outp = p.stdout.read().decode(errors='replace')
ok = 'VERDICT: {"verdict":"ok"' in outp or '"passed":true' in outp
with open(out, 'a') as f:
    f.write(f'{wall:.3f} {peak/1024:.1f} {int(ok)}\n')
PY
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
summary() { # LABEL -> "wall rss ok/runs"
	echo "$(cut -d' ' -f1 "$T/$1" | median) $(cut -d' ' -f2 "$T/$1" | median) $(awk '{ s += $3 } END { print s "/" NR }' "$T/$1")"
}

hw_kvm=0
if [ -w "${KEEL_KVM_DEV:-/dev/kvm}" ] && [ ! -e /sys/module/kvm_pvm ]; then hw_kvm=1; fi
for i in $(seq "$RUNS"); do
	if [ $hw_kvm = 1 ]; then
		measure keel "$KEEL" verify-boot --engine kvm --timeout 900 --output json "$T/disk.raw"
		measure base qemu-system-x86_64 -machine pc,accel=kvm,acpi=off -cpu host -m 256 \
			-nodefaults -no-user-config -display none -no-reboot -serial stdio \
			-kernel "$APP/vmlinux" -initrd "$APP/initrd.cpio" \
			-append 'console=ttyS0 quiet acpi=off pci=conf1 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp no_timer_check rdinit=/init' \
			-drive file="$T/disk.raw",format=raw,if=none,id=d0,readonly=on \
			-device virtio-blk-pci,drive=d0,disable-modern=on
	else
		measure keel "$KEEL" verify-boot --engine qemu --timeout 900 --output json "$T/disk.raw"
		# QEMU's defaults: pc machine with ACPI and firmware, the bzImage, no quiet
		measure base qemu-system-x86_64 -machine pc,accel=tcg -m 256 -nodefaults \
			-no-user-config -display none -no-reboot -serial stdio \
			-kernel "$APP/vmlinuz" -initrd "$APP/initrd.cpio" \
			-append "console=ttyS0 panic=-1 rdinit=/init" \
			-drive file="$T/disk.raw",format=raw,if=virtio,readonly=on
	fi
done
read -r kw kr kok <<<"$(summary keel)"
read -r bw br bok <<<"$(summary base)"
if [ $hw_kvm = 1 ]; then
	kname="keel verify-boot --engine kvm"; bname="qemu-system-x86_64 (KVM, same kernel/initrd/image)"
else
	kname="keel verify-boot --engine qemu (PVH vmlinux, acpi=off, quiet)"
	bname="qemu default boot (pc+ACPI, bzImage, no quiet)"
fi
printf '%-64s wall %6.2f s  peak RSS %7.1f MiB  verdict ok %s\n' "$kname" "$kw" "$kr" "$kok"
printf '%-64s wall %6.2f s  peak RSS %7.1f MiB  verdict ok %s\n' "$bname" "$bw" "$br" "$bok"
awk -v a="$kw" -v b="$bw" -v c="$kr" -v d="$br" \
	'BEGIN { printf "ratio keel/baseline: wall %.2fx, peak RSS %.2fx (median of '"$RUNS"' runs)\n", a / b, c / d }'
