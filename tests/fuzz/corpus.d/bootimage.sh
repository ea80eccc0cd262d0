#!/usr/bin/env bash
# seeds for fuzz_bootimage: the test guests (a fake bzImage and a PVH ELF)
# and the head of the appliance's kernel when it is built
out=$1/bootimage
mkdir -p "$out"
g=${BUILD:-build}/tests/vmm/guests
[ -f "$g/boot.bin" ] && cp "$g/boot.bin" "$out/bzimage"
[ -f "$g/pvh.elf" ] && cp "$g/pvh.elf" "$out/pvh-elf"
a=${BUILD:-build}/appliance
[ -f "$a/vmlinuz" ] && head -c 65536 "$a/vmlinuz" >"$out/vmlinuz-head"
[ -f "$a/vmlinux" ] && head -c 65536 "$a/vmlinux" >"$out/vmlinux-head"
exit 0
