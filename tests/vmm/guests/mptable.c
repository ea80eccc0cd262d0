/* tests/vmm/guests/mptable.c - find and check the MP table, list its entries */
#include "guest.h"

static u8 sum(u64 a, u32 n)
{
	u8 s = 0;

	while (n--)
		s = (u8)(s + rd8(a++));
	return s;
}

void guest_main(void *boot)
{
	u64 fp = 0, cfg, p, end;
	u16 count;

	(void)boot;
	for (u64 a = 0xf0000; a < 0x100000; a += 16)
		if (rd32(a) == 0x5f504d5f) { /* "_MP_" */
			fp = a;
			break;
		}
	if (!fp) {
		puts("MP: not found\n");
		return;
	}
	puts("MP: floating "); put_hex(fp); puts(" sum "); put_dec(sum(fp, 16)); putc('\n');
	cfg = rd32(fp + 4);
	count = rd16(cfg + 34);
	puts("MP: config "); put_hex(cfg); puts(" sig "); puts(rd32(cfg) == 0x504d4350 ? "PCMP" : "bad");
	puts(" sum "); put_dec(sum(cfg, rd16(cfg + 4))); puts(" entries "); put_dec(count);
	puts(" lapic "); put_hex(rd32(cfg + 36)); putc('\n');
	p = cfg + 44;
	end = cfg + rd16(cfg + 4);
	for (u16 i = 0; i < count && p < end; i++) {
		u8 t = rd8(p);

		if (t == 0) {
			puts("MP: cpu "); put_dec(rd8(p + 1)); puts(" flags "); put_dec(rd8(p + 3));
			putc('\n');
			p += 20;
			continue;
		}
		if (t == 1) {
			puts("MP: bus "); put_dec(rd8(p + 1)); putc(' ');
			for (int k = 0; k < 3; k++)
				putc((char)rd8(p + 2 + k));
			putc('\n');
		} else if (t == 2) {
			puts("MP: ioapic "); put_dec(rd8(p + 1)); putc(' '); put_hex(rd32(p + 4));
			putc('\n');
		} else if (t == 3) {
			puts("MP: int bus "); put_dec(rd8(p + 4)); puts(" irq "); put_hex(rd8(p + 5));
			puts(" pin "); put_dec(rd8(p + 7)); putc('\n');
		} else if (t == 4) {
			puts("MP: lint type "); put_dec(rd8(p + 1)); puts(" lint "); put_dec(rd8(p + 7));
			putc('\n');
		} else {
			puts("MP: unknown entry\n");
			break;
		}
		p += 8;
	}
	puts("MP: done\n");
}
