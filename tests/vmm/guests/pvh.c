/* tests/vmm/guests/pvh.c - report the hvm_start_info the VMM gave us */
#include "guest.h"

void guest_main(void *boot)
{
	u64 si = (u64)boot;
	u64 map = rd64(si + 40);
	u32 n = rd32(si + 48);

	puts("PVH: magic "); put_hex(rd32(si)); puts(" version "); put_dec(rd32(si + 4)); putc('\n');
	puts("CMDLINE: "); puts((const char *)rd64(si + 24)); putc('\n');
	puts("E820: entries "); put_dec(n); putc('\n');
	for (u32 i = 0; i < n && i < 128; i++) {
		u64 e = map + 24ULL * i;

		puts("E820: "); put_hex(rd64(e)); putc(' '); put_hex(rd64(e + 8));
		putc(' '); put_dec(rd32(e + 16)); putc('\n');
	}
	if (rd32(si + 12)) {
		u64 m = rd64(si + 16);

		puts("INITRD: size "); put_dec(rd64(m + 8));
		puts(" crc "); put_hex(crc32(0, (const void *)rd64(m), rd64(m + 8))); putc('\n');
	}
}
