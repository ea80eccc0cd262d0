#!/usr/bin/env bash
# tests/interop/test_ova.sh - OVA packages in and out.
#
# Reading: packages built here with GNU tar (disks made by qemu-img when
# its vmdk driver exists, else raw disks) are served without extraction,
# selected with @N / @diskId / @file / --disk, checked against their
# manifest (tampering is refused and leaves no output), split disks
# (ovf:chunkSize) read as one. Writing (needs keel's vmdk driver):
# qcow2 -> ova -> qcow2 round trip, member order, xmllint well-formedness
# and XPath structure, the manifest against sha256sum/sha1sum.
. "$(dirname "$0")/../shell/lib.sh"
command -v xmllint >/dev/null || skip "xmllint (libxml2-utils) not installed"
cd "$TMP"

have_vmdk=0
keel help formats | awk '$1 == "vmdk" && $2 == "yes"' | grep -q . && have_vmdk=1
have_qcow2=0
keel help formats | awk '$1 == "qcow2" && $2 == "yes"' | grep -q . && have_qcow2=1

pattern_file d1.raw $((6 * 1048576 + 512 * 3))
pattern_file d2.raw $((2 * 1048576))
dd if=/dev/urandom of=d2.raw bs=4096 count=10 seek=7 conv=notrunc status=none

# ---------------------------------------------------------------- reading
mkpkg() { # mkpkg OUT ALGO FMT : vm.ovf + vm.mf + two disks
	local out=$1 algo=$2 fmt=$3 ext url
	if [ "$fmt" = vmdk ]; then
		ext=vmdk
		url="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
		qemu-img convert -f raw -O vmdk -o subformat=streamOptimized d1.raw pd1.$ext
		qemu-img convert -f raw -O vmdk -o subformat=streamOptimized d2.raw pd2.$ext
	else
		ext=img
		url="http://example.com/raw"
		cp d1.raw pd1.$ext
		cp d2.raw pd2.$ext
	fi
	cat >vm.ovf <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="f1" ovf:href="pd1.$ext" ovf:size="$(stat -c %s pd1.$ext)"/>
    <File ovf:id="f2" ovf:href="pd2.$ext" ovf:size="$(stat -c %s pd2.$ext)"/>
  </References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="boot" ovf:fileRef="f1" ovf:capacity="$(stat -c %s d1.raw)" ovf:format="$url"/>
    <Disk ovf:diskId="data" ovf:fileRef="f2" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="$url"/>
  </DiskSection>
  <VirtualSystem ovf:id="t"><Info>vm</Info><Name>two-disks</Name></VirtualSystem>
</Envelope>
XML
	: >vm.mf
	for f in vm.ovf pd1.$ext pd2.$ext; do
		echo "$algo($f)= $("$(echo "$algo" | tr A-Z a-z)sum" "$f" | cut -d' ' -f1)" >>vm.mf
	done
	tar --format=ustar -cf "$out" vm.ovf vm.mf pd1.$ext pd2.$ext
}
rfmt=raw
[ "$have_vmdk" = 1 ] && rfmt=vmdk
mkpkg two.ova SHA256 "$rfmt"
mkpkg two1.ova SHA1 "$rfmt"

t "info lists the disks" sh -c "'$KEEL' info two.ova | grep -q 'disk 2: id=data'"
t "info names the manifest" sh -c "'$KEEL' info two.ova | grep -q 'manifest: vm.mf (SHA256'"
t "info --output json" sh -c "'$KEEL' info --output json two.ova | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"format\"] == \"ova\"'"
if [ "$rfmt" = vmdk ]; then
	t "disk 1 by default" keel compare d1.raw two.ova
	t "disk 2 by number" keel compare d2.raw two.ova@2
	t "disk 2 by id" keel compare d2.raw two.ova@data
	t "disk 2 by file name" keel compare d2.raw two.ova@pd2.vmdk
	t "SHA1 manifest" keel compare d2.raw two1.ova@2
	t "convert --disk 2" keel convert --disk 2 -O raw two.ova out2.raw
	t "converted disk 2 matches" qemu-img compare -q -f raw -F raw d2.raw out2.raw
else
	# raw disks inside: the served bytes are the members themselves
	t "disk 1 by default" keel compare d1.raw two.ova
	t "disk 2 by number" keel compare d2.raw two.ova@2
	t "disk 2 by id" keel compare d2.raw two.ova@data
	t "disk 2 by file name" keel compare d2.raw two.ova@pd2.img
	t "SHA1 manifest" keel compare d2.raw two1.ova@2
	t "convert --disk 2" keel convert --disk 2 -O raw two.ova out2.raw
	t "converted disk 2 matches" cmp d2.raw out2.raw
fi
expect_err "unknown disk selector" "no disk" keel convert -O raw two.ova@9 x.raw
t "no output after a bad selector" test ! -e x.raw

# tampering: one byte of disk 1 changed inside the tar
off=$(python3 - <<'PY'
import tarfile
with tarfile.open('two.ova') as t:
    m = t.getmember([n for n in t.getnames() if n.startswith('pd1')][0])
    print(m.offset_data + m.size // 2)
PY
)
cp two.ova bad.ova
printf '\x42' | dd of=bad.ova bs=1 seek="$off" conv=notrunc status=none
t "a tampered package still lists" keel info bad.ova
expect_err "tampered disk is rejected" "does not match its digest" keel convert -O raw bad.ova bad.raw
t "no output from a tampered package" test ! -e bad.raw
t "no temporary from a tampered package" sh -c "! ls -a | grep -q 'bad.raw.keel-tmp'"
t "the untouched disk of it still converts" keel convert -O raw bad.ova@2 bad2.raw
cp two.ova badovf.ova
python3 - <<'PY'
import tarfile
with tarfile.open('badovf.ova') as t:
    m = t.getmember('vm.ovf')
    off = m.offset_data + 60
with open('badovf.ova', 'r+b') as f:
    f.seek(off); c = f.read(1); f.seek(off); f.write(bytes([c[0] ^ 0x20]))
PY
expect_err "tampered descriptor is rejected" "digest" keel info badovf.ova

# a manifest that omits the disk
grep -v pd1 vm.mf >vm.mf.new && mv vm.mf.new vm.mf
tar --format=ustar -cf nolist.ova vm.ovf vm.mf pd1.* pd2.*
expect_err "disk missing from the manifest is refused" "not listed" keel convert -O raw nolist.ova nl.raw

# a disk split into chunks (ovf:chunkSize)
f1=$(ls pd1.*)
split -b 1048576 -d -a 9 "$f1" "$f1."
sz=$(stat -c %s "$f1")
sed "s|ovf:href=\"$f1\" ovf:size=\"$sz\"|ovf:href=\"$f1\" ovf:size=\"$sz\" ovf:chunkSize=\"1048576\"|" vm.ovf >vmc.ovf
mv vmc.ovf vm.ovf
tar --format=ustar -cf chunked.ova vm.ovf "$f1".0* pd2.*
t "chunked disk reads as one" keel compare d1.raw chunked.ova
t "not an OVA: a plain tar is not probed as one" sh -c "tar -cf plain.tar d2.raw && ! '$KEEL' info plain.tar | grep -q 'format: ova'"

# ---------------------------------------------------------------- writing
if [ "$have_vmdk" != 1 ]; then
	echo "# no vmdk driver: OVA writing not tested"
	finish
	exit $?
fi
srcfmt=raw
cp d1.raw src.img
if [ "$have_qcow2" = 1 ]; then
	qemu-img convert -f raw -O qcow2 d1.raw src.img
	srcfmt=qcow2
fi
t "convert -O ova" keel convert -f "$srcfmt" -O ova -o name=web1,cpus=2,memory=2048 src.img web1.ova
t "tar members in OVF order" test "$(tar -tf web1.ova | tr '\n' ' ')" = "web1.ovf web1.mf web1-disk1.vmdk "
t "USTAR headers" sh -c "dd if=web1.ova bs=1 skip=257 count=6 status=none | od -c | grep -q 'u   s   t   a   r  \\\\0'"
mkdir x && tar -C x -xf web1.ova
t "descriptor is well-formed XML" xmllint --noout x/web1.ovf
xp() { xmllint --xpath "$1" x/web1.ovf 2>/dev/null; }
N='*[local-name()'
t "XPath: References/File size = disk member size" \
	test "$(xp "string(/$N='Envelope']/$N='References']/$N='File']/@*[local-name()='size'])")" = "$(stat -c %s x/web1-disk1.vmdk)"
t "XPath: DiskSection capacity and streamOptimized format" \
	sh -c "test \"\$(xmllint --xpath \"string(//*[local-name()='Disk']/@*[local-name()='format'])\" x/web1.ovf)\" = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized'"
t "XPath: vmx hardware family" sh -c "xmllint --xpath \"string(//*[local-name()='VirtualSystemType'])\" x/web1.ovf | grep -q '^vmx-[0-9][0-9]\$'"
t "XPath: 2 CPUs" test "$(xp "string(//$N='Item'][$N='ResourceType']=3]/$N='VirtualQuantity'])")" = 2
t "XPath: 2048 MiB" test "$(xp "string(//$N='Item'][$N='ResourceType']=4]/$N='VirtualQuantity'])")" = 2048
t "XPath: SCSI controller" test "$(xp "string(//$N='Item'][$N='ResourceType']=6]/$N='ResourceSubType'])")" = lsilogic
t "XPath: the disk hangs off the controller" test "$(xp "string(//$N='Item'][$N='ResourceType']=17]/$N='HostResource'])")" = ovf:/disk/vmdisk1
t "XPath: every section has Info" test "$(xp "count(//$N='DiskSection' or local-name()='VirtualSystem' or local-name()='VirtualHardwareSection' or local-name()='OperatingSystemSection' or local-name()='NetworkSection'][not($N='Info'])])")" = 0
t "XPath: section order References, DiskSection, NetworkSection, VirtualSystem" \
	test "$(xp "concat(local-name(/$N='Envelope']/*[1]),local-name(/$N='Envelope']/*[2]),local-name(/$N='Envelope']/*[3]),local-name(/$N='Envelope']/*[4]))")" = ReferencesDiskSectionNetworkSectionVirtualSystem
(cd x && sed -E 's/^SHA256\(([^)]*)\)= ([0-9a-f]+)$/\2  \1/' web1.mf >sums)
t "manifest verifies with sha256sum -c" sh -c "cd x && sha256sum -c --strict sums"
t "manifest covers descriptor and disk" test "$(wc -l <x/web1.mf)" = 2
t "qemu-img reads the extracted disk" qemu-img compare -q -f raw -F vmdk d1.raw x/web1-disk1.vmdk
t "qemu-img check of the extracted disk" qemu-img check -q -f vmdk x/web1-disk1.vmdk
if [ "$have_qcow2" = 1 ]; then
	t "round trip ova -> qcow2" keel convert -O qcow2 web1.ova back.qcow2
	t "round trip identical (qemu-img compare)" qemu-img compare -q -f qcow2 -F qcow2 src.img back.qcow2
else
	t "round trip ova -> raw" keel convert -O raw web1.ova back.raw
	t "round trip identical" keel compare src.img back.raw
fi
t "keel info on our OVA" sh -c "'$KEEL' info web1.ova | grep -q 'vm name: web1'"
t "-o manifest=sha1" keel convert -f "$srcfmt" -O ova -o manifest=sha1,network=none,controller=sata src.img old.ova
t "SHA1 lines" sh -c "tar -xOf old.ova old.mf | grep -q '^SHA1(old.ovf)= [0-9a-f]\{40\}\$'"
t "SHA1 package reads back" keel compare src.img old.ova
t "chunked output (chunk_size)" keel convert -f "$srcfmt" -O ova -o chunk_size=64K src.img ch.ova
t "chunk members" sh -c "tar -tf ch.ova | grep -q 'ch-disk1.vmdk.000000001'"
t "chunked output reads back" keel compare src.img ch.ova
t "--verify for ova" keel convert --verify -f "$srcfmt" -O ova src.img ver.ova
KEEL_FAKE_TIME=1700000000 KEEL_FAKE_UUID=7 "$KEEL" convert -j 1 -f "$srcfmt" -O ova -o name=j src.img j1.ova >/dev/null
KEEL_FAKE_TIME=1700000000 KEEL_FAKE_UUID=7 "$KEEL" convert -j 4 -f "$srcfmt" -O ova -o name=j src.img j4.ova >/dev/null
t "ova: -j 1 and -j 4 byte-identical" cmp j1.ova j4.ova
# several disks in one package, on two IDE controllers
pattern_file e2.raw $((3 * 1048576))
t "three disks in one OVA" keel convert -O ova -o name=multi,controller=ide src.img e2.raw d2.raw multi.ova
t "three disk members in order" test "$(tar -tf multi.ova | tr '\n' ' ')" = "multi.ovf multi.mf multi-disk1.vmdk multi-disk2.vmdk multi-disk3.vmdk "
t "info lists three disks" sh -c "'$KEEL' info multi.ova | grep -q 'disks: 3'"
t "disk 2 selected by number" keel compare e2.raw multi.ova@2
t "disk 3 selected by id" keel compare d2.raw multi.ova@vmdisk3
t "disk 3 by --disk" keel convert --disk 3 -O raw multi.ova m3.raw
t "disk 3 content" keel compare d2.raw m3.raw
mkdir xm && tar -C xm -xf multi.ova
t "multi: descriptor well-formed" xmllint --noout xm/multi.ovf
t "multi: two IDE controllers" test "$(xmllint --xpath "count(//*[local-name()='Item'][*[local-name()='ResourceType']=5])" xm/multi.ovf)" = 2
t "multi: three disk items" test "$(xmllint --xpath "count(//*[local-name()='Item'][*[local-name()='ResourceType']=17])" xm/multi.ovf)" = 3
(cd xm && sed -E 's/^SHA256\(([^)]*)\)= ([0-9a-f]+)$/\2  \1/' multi.mf >sums)
t "multi: manifest verifies" sh -c "cd xm && sha256sum -c --strict sums"
expect_err "too many disks for IDE" "more than" keel convert -O ova -o controller=ide src.img src.img src.img src.img src.img five.ova
expect_rc 2 "several sources only for ova (usage error)" keel convert -O raw src.img e2.raw x.raw
expect_err "bad OVA option" "cpus" keel convert -f "$srcfmt" -O ova -o cpus=0 src.img e.ova
t "no output after a bad option" test ! -e e.ova
finish
