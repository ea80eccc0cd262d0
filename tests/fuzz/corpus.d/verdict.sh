#!/usr/bin/env bash
# seeds for fuzz_verdict: appliance console transcripts (ok, fail, noisy)
out=$1/verdict
mkdir -p "$out"
printf 'KEEL-APPLIANCE: init 3.43\nKEEL-APPLIANCE: table dos\nVERDICT: {"verdict":"ok","reasons":[],"warnings":[],"disk":{"size":67108864,"ro":"1","ptable":"dos","mbr_boot_code":false},"partitions":[{"name":"vda1","start":1048576,"size":66060288,"type":"0x83","fstype":"ext4","fsck":"clean","mounted":true,"esp":false,"os":"debian","kernel":"/boot/vmlinuz","initrd":"/boot/initrd.img","efi":""}],"os":{"id":"debian","name":"Debian GNU/Linux 12 (bookworm)","version":"12","partition":"vda1"},"boot":{"kernel":"vda1:/boot/vmlinuz","initrd":"vda1:/boot/initrd.img","efi":""},"uptime":6.31}\n[    6.328279] reboot: Restarting system\n' >"$out/ok"
printf 'KEEL-APPLIANCE: init 2.1\r\nVERDICT: {"verdict":"fail","reasons":["no-partition-table","fsck-errors: /dev/vda1 (ext4) \\u00e9\\"x\\""],"uptime":3.0}\r\n' >"$out/fail"
printf 'VERDICT: [1,2,{"a":[true,false,null,-1.5e3]}]\n' >"$out/array"
