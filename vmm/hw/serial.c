/*
 * vmm/hw/serial.c - an 8250/16550A UART at 0x3f8, IRQ 4: the guest console.
 *
 * Output only: every byte written to THR goes to the console capture (log
 * file, -v terminal). Transmission is instant, so THR is always empty; the
 * THRE interrupt, which the Linux tty layer needs for userspace writes to
 * /dev/console, is pending from the moment IER enables it or a byte is
 * written, until the guest reads IIR. Loopback (MCR bit 4) mirrors the modem
 * lines into MSR so the kernel's autoconfig test passes.
 */
#include "vmm/vmm_int.h"

#include <string.h>

#define SERIAL_BASE 0x3f8
#define SERIAL_IRQ 4

#define UART_IER_RDI 0x01
#define UART_IER_THRI 0x02
#define UART_IIR_NO_INT 0x01
#define UART_IIR_THRI 0x02
#define UART_IIR_FIFO 0xc0
#define UART_LCR_DLAB 0x80
#define UART_MCR_LOOP 0x10
#define UART_LSR_THRE 0x20
#define UART_LSR_TEMT 0x40

struct vmm_serial {
	uint8_t ier, lcr, mcr, scr, fcr, dll, dlm;
	bool thre_pending;
	int irq_level;
};

static void serial_update_irq(struct vmm *vm, struct vmm_serial *s)
{
	int level = (s->ier & UART_IER_THRI) && s->thre_pending;

	if (level != s->irq_level) {
		s->irq_level = level;
		vmm_irq_line(vm, SERIAL_IRQ, level);
	}
}

static uint8_t serial_msr(const struct vmm_serial *s)
{
	if (s->mcr & UART_MCR_LOOP) {
		uint8_t m = 0;

		if (s->mcr & 0x02)
			m |= 0x10; /* RTS -> CTS */
		if (s->mcr & 0x01)
			m |= 0x20; /* DTR -> DSR */
		if (s->mcr & 0x04)
			m |= 0x40; /* OUT1 -> RI */
		if (s->mcr & 0x08)
			m |= 0x80; /* OUT2 -> DCD */
		return m;
	}
	return 0xb0; /* DCD, DSR, CTS */
}

static void serial_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
		      bool wr)
{
	struct vmm_serial *s = opaque;
	bool dlab = s->lcr & UART_LCR_DLAB;
	uint8_t v = data[0];

	if (len != 1) {
		if (!wr)
			memset(data, 0xff, len);
		return;
	}
	if (wr) {
		switch (off) {
		case 0:
			if (dlab) {
				s->dll = v;
			} else {
				if (!(s->mcr & UART_MCR_LOOP))
					vmm_console_write(vm, &v, 1);
				s->thre_pending = true;
			}
			break;
		case 1:
			if (dlab) {
				s->dlm = v;
			} else {
				/* enabling THRI with an empty THR raises the interrupt */
				if ((v & UART_IER_THRI) && !(s->ier & UART_IER_THRI))
					s->thre_pending = true;
				s->ier = v & 0x0f;
			}
			break;
		case 2:
			s->fcr = v;
			break;
		case 3:
			s->lcr = v;
			break;
		case 4:
			s->mcr = v & 0x1f;
			break;
		case 7:
			s->scr = v;
			break;
		default:
			break;
		}
	} else {
		switch (off) {
		case 0:
			data[0] = dlab ? s->dll : 0;
			break;
		case 1:
			data[0] = dlab ? s->dlm : s->ier;
			break;
		case 2:
			if ((s->ier & UART_IER_THRI) && s->thre_pending) {
				data[0] = UART_IIR_THRI;
				s->thre_pending = false;
			} else {
				data[0] = UART_IIR_NO_INT;
			}
			if (s->fcr & 1)
				data[0] |= UART_IIR_FIFO;
			break;
		case 3:
			data[0] = s->lcr;
			break;
		case 4:
			data[0] = s->mcr;
			break;
		case 5:
			data[0] = UART_LSR_THRE | UART_LSR_TEMT;
			break;
		case 6:
			data[0] = serial_msr(s);
			break;
		case 7:
			data[0] = s->scr;
			break;
		default:
			data[0] = 0xff;
			break;
		}
	}
	serial_update_irq(vm, s);
}

int vmm_serial_init(struct vmm *vm)
{
	struct vmm_serial *s = kl_calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return -ENOMEM;
	s->dll = 0x0c; /* 9600 baud, as firmware leaves it */
	rc = vmm_register_pio(vm, SERIAL_BASE, 8, serial_io, s);
	if (rc < 0) {
		kl_free(s);
		return rc;
	}
	vm->serial = s;
	return 0;
}

void vmm_serial_exit(struct vmm *vm)
{
	kl_free(vm->serial);
	vm->serial = NULL;
}
