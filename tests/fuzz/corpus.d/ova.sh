#!/usr/bin/env bash
# tests/fuzz/corpus.d/ova.sh OUTDIR WORKDIR - seeds for fuzz_ova: small OVA
# packages (raw and, when qemu-img is there, streamOptimized VMDK disks),
# their descriptors and manifests, each behind the selector byte the target
# reads first (0 = package, 200 = descriptor, 228 = manifest).
set -eu
mkdir -p "$1/ova" "$2/ova"
# absolute: the seeds are written after the cd below
out=$(cd "$1/ova" && pwd)
w=$(cd "$2/ova" && pwd)
cd "$w"
head -c 65536 /dev/urandom >d1.img
dd if=/dev/zero of=d1.img bs=4096 seek=4 count=4 conv=notrunc status=none
fmt=img
url=http://example.com/raw
if command -v qemu-img >/dev/null; then
	qemu-img convert -f raw -O vmdk -o subformat=streamOptimized d1.img d1.vmdk
	fmt=vmdk
	url=http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized
fi
cp d1.img d2.img
cat >vm.ovf <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="f1" ovf:href="d1.$fmt" ovf:size="$(stat -c %s d1.$fmt)"/>
    <File ovf:id="f2" ovf:href="d2.img" ovf:size="65536" ovf:chunkSize="32768"/>
  </References>
  <DiskSection><Info>d</Info>
    <Disk ovf:diskId="a" ovf:fileRef="f1" ovf:capacity="65536" ovf:format="$url"/>
    <Disk ovf:diskId="b" ovf:fileRef="f2" ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^10"/>
  </DiskSection>
  <VirtualSystem ovf:id="v"><Info>x</Info><Name>v</Name>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:ResourceType xmlns:rasd="r">3</rasd:ResourceType><rasd:VirtualQuantity xmlns:rasd="r">2</rasd:VirtualQuantity></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
XML
split -b 32768 -d -a 9 d2.img d2.img.
: >vm.mf
for f in vm.ovf d1.$fmt d2.img.000000000 d2.img.000000001; do
	echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)" >>vm.mf
done
tar --format=ustar -cf pkg.tar vm.ovf vm.mf d1.$fmt d2.img.000000000 d2.img.000000001
tar --format=ustar -cf nomf.tar vm.ovf d1.$fmt
seed() { { printf "\\$(printf '%03o' "$1")"; cat "$2"; } >"$out/$3"; }
seed 0 pkg.tar pkg
seed 0 nomf.tar nomf
seed 200 vm.ovf ovf
seed 228 vm.mf mf
