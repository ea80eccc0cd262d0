/*
 * vmm/hw/legacy.c - the few PC ports a kernel touches besides the UART:
 * - 0x60/0x64 i8042: status reads "empty", command 0xFE (pulse the reset
 *   line) resets the guest, which is how `reboot=k` leaves the VM;
 * - 0x70/0x71 CMOS/RTC: the current UTC time in BCD, status registers of an
 *   idle 24-hour clock, so the rtc_cmos probe finds a sane clock;
 * - 0x80 (POST codes) and 0xed (I/O delay): ignored.
 * Everything else is unclaimed (reads all ones, writes ignored).
 */
#include "vmm/vmm_int.h"

#include <string.h>
#include <time.h>

struct vmm_legacy {
	uint8_t cmos_index;
	uint8_t cmos[128];
};

static void i8042_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
		     bool wr)
{
	if (!wr) {
		memset(data, 0, len); /* no data, input buffer empty */
		return;
	}
	if (off == 4 && data[0] == 0xfe)
		vmm_request_stop(vm, VMM_EXIT_RESET, "i8042 reset (0xfe to port 0x64)");
}

static uint8_t bcd(int v)
{
	return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static void cmos_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
		    bool wr)
{
	struct vmm_legacy *l = opaque;
	time_t now;
	struct tm tm;

	(void)vm;
	if (len != 1) {
		if (!wr)
			memset(data, 0xff, len);
		return;
	}
	if (off == 0) {
		if (wr)
			l->cmos_index = data[0] & 0x7f; /* bit 7 is NMI disable */
		else
			data[0] = 0xff;
		return;
	}
	if (wr) {
		l->cmos[l->cmos_index] = data[0];
		return;
	}
	now = time(NULL);
	gmtime_r(&now, &tm);
	switch (l->cmos_index) {
	case 0x00: data[0] = bcd(tm.tm_sec); break;
	case 0x02: data[0] = bcd(tm.tm_min); break;
	case 0x04: data[0] = bcd(tm.tm_hour); break;
	case 0x06: data[0] = bcd(tm.tm_wday + 1); break;
	case 0x07: data[0] = bcd(tm.tm_mday); break;
	case 0x08: data[0] = bcd(tm.tm_mon + 1); break;
	case 0x09: data[0] = bcd(tm.tm_year % 100); break;
	case 0x32: data[0] = bcd(19 + tm.tm_year / 100); break;
	case 0x0a: data[0] = 0x26; break; /* no update in progress */
	case 0x0b: data[0] = 0x02; break; /* 24 h, BCD */
	case 0x0c: data[0] = 0x00; break;
	case 0x0d: data[0] = 0x80; break; /* battery good */
	default: data[0] = l->cmos[l->cmos_index]; break;
	}
}

static void ignore_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
		      bool wr)
{
	if (!wr)
		memset(data, 0, len);
}

int vmm_legacy_init(struct vmm *vm)
{
	struct vmm_legacy *l = kl_calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	vm->legacy = l;
	/* 0x61 (port B) is the in-kernel PIT's speaker port and never exits */
	KL_TRY(vmm_register_pio(vm, 0x60, 5, i8042_io, NULL));
	KL_TRY(vmm_register_pio(vm, 0x70, 2, cmos_io, l));
	KL_TRY(vmm_register_pio(vm, 0x80, 1, ignore_io, NULL));
	KL_TRY(vmm_register_pio(vm, 0xed, 1, ignore_io, NULL));
	return 0;
}

void vmm_legacy_exit(struct vmm *vm)
{
	kl_free(vm->legacy);
	vm->legacy = NULL;
}
