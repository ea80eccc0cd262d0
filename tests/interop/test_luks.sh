#!/usr/bin/env bash
# LUKS1 volumes as images (format "luks"): what qemu-img's luks driver and
# cryptsetup write, keel reads with the passphrase, byte for byte as qemu
# reads them; what keel writes (convert -O luks, create, io), qemu-img reads
# and cryptsetup unlocks. qemu-img is the judge; cryptsetup formats real LUKS1 headers
# (keel then has to agree with qemu on every byte of the payload, written
# or not). Damaged and hostile headers are in test_qcow2_bad.sh, which
# shares the LUKS code.
. "$(dirname "$0")/../shell/lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"
cd "$TMP" || exit 1
printf 'luks pass' >pw

q_luks() { # q_luks FILE QEMU-ARGS...: a qemu tool on a LUKS file, unlocked
	local f=$1 tool=$2; shift 2
	"$tool" --object secret,id=s0,file=pw --image-opts "$@" "driver=luks,file.filename=$f,key-secret=s0"
}
q_create() { # q_create FILE SECRET-FILE [CREATE-OPTS]: a 5 MiB LUKS volume
	local f=$1 pw=$2 o=${3:-}
	retry_pbkdf2 "$f" qemu-img create -q -f luks --object "secret,id=s0,file=$pw" \
		-o "key-secret=s0,iter-time=@IT@${o:+,$o}" "$f" 5M ||
		{ bad "$f: qemu-img create failed 8 times"; return 1; }
}
luks_case() { # luks_case NAME [CREATE-OPTS]
	local n=$1 o=${2:-}
	q_create "$n.luks" pw "$o" || return
	q_luks "$n.luks" qemu-io -c "write -P 0x5a 1000 70000" -c "write -P 0x42 4M 10000" >/dev/null
	qemu-img convert --object secret,id=s0,file=pw --image-opts -O raw \
		"driver=luks,file.filename=$n.luks,key-secret=s0" "$n.ref.raw"
	t "$n: probed as luks" sh -c "'$KEEL' info '$n.luks' 2>/dev/null | grep -q 'file format: luks'"
	t "$n: keel compare with qemu-img's raw" keel compare --key-file pw "$n.ref.raw" "$n.luks"
	t "$n: reads off sector boundaries" keel io --key-file pw -c "read -P 0x5a 1001 77" \
		-c "read -P 0x42 4194305 9998" "$n.luks"
}
luks_case default
luks_case cbc-essiv cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256
luks_case xts-plain cipher-alg=aes-128,ivgen-alg=plain,hash-alg=sha512

t "convert to qcow2: qemu-img compares it equal" sh -c \
	"'$KEEL' -q convert --key-file pw -O qcow2 default.luks plain.qcow2 && qemu-img compare default.ref.raw plain.qcow2"
t "info with the key names the cipher and payload" sh -c \
	"'$KEEL' info --key-file pw default.luks | grep -q 'encryption: LUKS, aes-256 xts-plain64, sha256, key slot 0'"
t "info without the key: the header, locked" sh -c \
	"'$KEEL' info --output json default.luks 2>/dev/null | grep -q '\"locked\": *true'"
t "info without the key names the cipher" sh -c \
	"'$KEEL' info cbc-essiv.luks 2>/dev/null | grep -q 'encryption: LUKS, aes cbc-essiv:sha256, sha256, 1 of 8 key slots active; locked'"
printf 'wrong' >bad.pw
expect_err "a wrong passphrase" "default.luks: wrong passphrase: no LUKS key slot opens with it" keel info --key-file bad.pw default.luks
# qemu (secret file=) and cryptsetup (--key-file) take a key file verbatim,
# newline and all; keel cuts a final newline off, and tries it both ways
printf 'nl pass\n' >nl.pw
printf 'nl pass' >nl-cut.pw
if q_create nl.luks nl.pw; then
	t "a passphrase ending in a newline opens (qemu's secret file, verbatim)" sh -c \
		"'$KEEL' info --key-file nl.pw nl.luks | grep -q 'key slot 0'"
	qemu-img convert --object secret,id=s0,file=nl.pw --image-opts -O raw \
		"driver=luks,file.filename=nl.luks,key-secret=s0" nl.ref.raw
	t "...and convert reads what qemu reads" sh -c \
		"'$KEEL' -q convert --key-file nl.pw -O raw nl.luks nl.raw && cmp nl.raw nl.ref.raw"
	expect_err "...but not without the newline" "nl.luks: wrong passphrase" keel info --key-file nl-cut.pw nl.luks
	# convert opens its source once per thread and for measure: the
	# newline is tried once (1 failed + 1 good PBKDF2), not on each open
	t "...found once per process, not once per open" sh -c \
		"KEEL_DEBUG=1 '$KEEL' -q convert --key-file nl.pw -O qcow2 nl.luks nl-memo.qcow2 2>&1 |
		 grep -c 'PBKDF2 on a key slot' | grep -qx 2"
fi
# qemu's default PBKDF2 time is 2 s per try: one unlock per process
t "convert runs PBKDF2 once for all its opens" sh -c \
	"KEEL_DEBUG=1 '$KEEL' -q convert -j 3 --key-file pw -O qcow2 default.luks memo.qcow2 2>&1 |
	 grep -c 'PBKDF2 on a key slot' | grep -qx 1"
printf 'luks pass\n' >pw-nl
t "a key file ending in a newline opens a passphrase without one" \
	keel compare --key-file pw-nl default.ref.raw default.luks
printf 'wrong\n' >bad-nl.pw
expect_err "wrong both ways: says so" "the key file, with and without its final newline: default.luks: wrong passphrase" \
	keel info --key-file bad-nl.pw default.luks
# keel writes LUKS volumes: what qemu-img create -f luks makes by default
t "keel help formats: creating luks needs a key" sh -c \
	"'$KEEL' help formats | grep -Eq '^luks +key '"
pattern_file src.raw 5000003 # odd size: the payload rounds up to whole sectors
t "convert -O luks: qemu reads the source's bytes (holes written as zeros)" sh -c \
	"'$KEEL' -q convert --key-file pw -O luks -o iter-time=10 src.raw made.luks &&
	 qemu-img compare --object secret,id=s0,file=pw --image-opts driver=file,filename=src.raw \
		driver=luks,file.filename=made.luks,key-secret=s0"
t "...keel reads it back" keel compare --key-file pw src.raw made.luks
q=""
for it in 10 20 50 10 20; do # qemu-img's PBKDF2 self-timing fails now and then (retry_pbkdf2)
	q=$(qemu-img measure -O luks --object secret,id=s0,file=pw -o "key-secret=s0,iter-time=$it" \
		-f raw src.raw 2>/dev/null | awk '/required/ { print $3 }')
	[ -n "$q" ] && break
	sleep 1
done
t "...as large as keel measure and qemu-img measure ($q) say" sh -c \
	"k=\$('$KEEL' measure -O luks src.raw | awk '/required/ { print \$3 }') &&
	 [ \"\$k\" = '$q' ] && [ \"\$(stat -c %s made.luks)\" = \"\$k\" ]"
t "...convert --verify passes" keel -q convert --verify --key-file pw -O luks -o iter-time=10 src.raw made2.luks
expect_err "...a volume needs a passphrase" "a LUKS volume needs a passphrase" \
	keel convert -O luks src.raw nokey.luks </dev/null
t "...and nothing is left behind" sh -c "! ls nokey.luks .nokey.luks* 2>/dev/null | grep -q ."
if command -v cryptsetup >/dev/null; then
	t "cryptsetup reads keel's header" sh -c \
		"cryptsetup luksDump made.luks | grep -q 'Cipher mode:.*xts-plain64' &&
		 cryptsetup open --test-passphrase --key-file pw made.luks"
fi
t "keel create -f luks, keel io writes, qemu reads" sh -c \
	"'$KEEL' -q create -f luks --key-file pw -o iter-time=10 new.luks 1M &&
	 '$KEEL' -q io --key-file pw -c 'write -P 0x33 1000 5000' new.luks &&
	 qemu-io --object secret,id=s0,file=pw --image-opts -c 'read -P 0x33 1000 5000' \
		driver=luks,file.filename=new.luks,key-secret=s0 | grep -q '^read 5000/5000'"
cp default.luks w.luks
t "keel io writes part of a sector into qemu's volume; the rest stays" sh -c \
	"'$KEEL' -q io --key-file pw -c 'write -P 0x77 1001 3000' w.luks &&
	 qemu-io --object secret,id=s0,file=pw --image-opts -c 'read -P 0x77 1001 3000' \
		-c 'read -P 0x5a 1000 1' -c 'read -P 0x5a 4001 60000' \
		driver=luks,file.filename=w.luks,key-secret=s0 | grep -c '^read' | grep -qx 3"
cp made.luks odd.luks
truncate -s +100 odd.luks
expect_err "a payload of part sectors opens read-only only" "odd.luks: LUKS payload of 5000292 bytes is not whole 512-byte sectors" \
	keel io --key-file pw -c "write 0 512" odd.luks
t "...and reads" keel io --key-file pw -c "read 0 4k" odd.luks
# the key file verbatim, as qemu and cryptsetup take it: the same file opens it everywhere
printf 'made pass\n' >made-nl.pw
t "a key file with a final newline: qemu opens keel's volume with the same file" sh -c \
	"'$KEEL' -q convert --key-file made-nl.pw -O luks -o iter-time=10 src.raw nl-made.luks &&
	 qemu-img compare --object secret,id=s0,file=made-nl.pw --image-opts \
		driver=file,filename=src.raw driver=luks,file.filename=nl-made.luks,key-secret=s0 &&
	 '$KEEL' compare --key-file made-nl.pw src.raw nl-made.luks"
cp default.luks off.luks
python3 -c "import sys; f = open(sys.argv[1], 'r+b'); f.seek(104); f.write((1 << 31).to_bytes(4, 'big'))" off.luks
expect_err "payload offset past the end" "off.luks: LUKS payload offset 1099511627776" keel info --key-file pw off.luks

if command -v cryptsetup >/dev/null; then
	# cryptsetup's LUKS1 (no root needed to format a file); qemu and keel read it
	truncate -s 6M cs.img
	printf 'cs pass' >cs.pw
	if cryptsetup luksFormat --batch-mode --type luks1 --pbkdf-force-iterations 1000 \
		--key-file cs.pw cs.img >cs.log 2>&1; then
		qemu-io --object secret,id=s1,file=cs.pw --image-opts -c "write -P 0x6b 300000 5000" \
			"driver=luks,file.filename=cs.img,key-secret=s1" >/dev/null
		qemu-img convert --object secret,id=s1,file=cs.pw --image-opts -O raw \
			"driver=luks,file.filename=cs.img,key-secret=s1" cs.ref.raw
		t "cryptsetup LUKS1: keel reads what qemu reads (written and unwritten)" \
			keel compare --key-file cs.pw cs.ref.raw cs.img
		cryptsetup luksAddKey --batch-mode --pbkdf-force-iterations 1000 --key-file cs.pw \
			--key-slot 6 cs.img <(printf 'slot six') >/dev/null 2>&1
		printf 'slot six' >six.pw
		t "cryptsetup LUKS1: key slot 6 opens" sh -c "'$KEEL' info --key-file six.pw cs.img | grep -q 'key slot 6'"
		truncate -s 20M cs2.img
		if cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
			--key-file cs.pw cs2.img >/dev/null 2>&1; then
			expect_err "LUKS2 is refused by name" "cs2.img: LUKS version 2; keel reads version 1" keel info --key-file cs.pw cs2.img
		fi
	else
		bad "cryptsetup luksFormat failed"; sed 's/^/    # /' cs.log
	fi
else
	echo "SKIP: cryptsetup not installed (apt-get install cryptsetup-bin): its LUKS1 images untested"
fi
finish
