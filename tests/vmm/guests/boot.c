/* tests/vmm/guests/boot.c - report the boot protocol data the VMM gave us */
#include "guest.h"

void guest_main(void *boot)
{
	u64 zp = (u64)boot;
	u32 cmd = rd32(zp + 0x228);
	u32 rd = rd32(zp + 0x218), rdlen = rd32(zp + 0x21c);
	u8 n = rd8(zp + 0x1e8);

	puts("BOOT: zero page "); put_hex(zp); putc('\n');
	puts("BOOT: hdr "); puts(rd32(zp + 0x202) == 0x53726448 ? "HdrS" : "bad");
	puts(" flag "); put_hex(rd16(zp + 0x1fe));
	puts(" loader "); put_hex(rd8(zp + 0x210)); putc('\n');
	puts("CMDLINE: "); puts((const char *)(u64)cmd); putc('\n');
	puts("E820: entries "); put_dec(n); putc('\n');
	for (u8 i = 0; i < n && i < 128; i++) {
		u64 e = zp + 0x2d0 + 20ULL * i;

		puts("E820: "); put_hex(rd64(e)); putc(' '); put_hex(rd64(e + 8));
		putc(' '); put_dec(rd32(e + 16)); putc('\n');
	}
	if (rdlen) {
		puts("INITRD: size "); put_dec(rdlen);
		puts(" crc "); put_hex(crc32(0, (const void *)(u64)rd, rdlen)); putc('\n');
	}
}
