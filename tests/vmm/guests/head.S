/*
 * tests/vmm/guests/head.S - a fake bzImage for the VMM tests: a real-mode
 * setup sector carrying the boot protocol header (2.15, 64-bit entry), then
 * the "protected-mode kernel" linked at 1 MiB whose 64-bit entry is at
 * +0x200, as the 64-bit boot protocol defines. RSI = the zero page.
 */
	.section .setup, "a"
	.org 0x1f1
	.byte 1			/* setup_sects */
	.word 0			/* root_flags */
	.long 0			/* syssize */
	.word 0			/* ram_size */
	.word 0			/* vid_mode */
	.word 0			/* root_dev */
	.word 0xaa55		/* boot_flag */
	.byte 0xeb, 0x66	/* jump: header ends at 0x268 */
	.ascii "HdrS"		/* 0x202 */
	.word 0x020f		/* version */
	.long 0			/* realmode_swtch */
	.word 0			/* start_sys_seg */
	.word 0			/* kernel_version */
	.byte 0			/* type_of_loader */
	.byte 0x01		/* loadflags: LOADED_HIGH */
	.word 0			/* setup_move_size */
	.long 0x100000		/* code32_start */
	.long 0			/* ramdisk_image */
	.long 0			/* ramdisk_size */
	.long 0			/* bootsect_kludge */
	.word 0			/* heap_end_ptr */
	.byte 0, 0		/* ext_loader_ver, ext_loader_type */
	.long 0			/* cmd_line_ptr */
	.long 0x0fffffff	/* initrd_addr_max */
	.long 0x200000		/* kernel_alignment */
	.byte 0, 0		/* relocatable_kernel, min_alignment */
	.word 0x0001		/* xloadflags: XLF_KERNEL_64 */
	.long 2047		/* cmdline_size */
	.long 0			/* hardware_subarch */
	.quad 0			/* hardware_subarch_data */
	.long 0, 0		/* payload_offset, payload_length */
	.quad 0			/* setup_data */
	.quad 0x100000		/* pref_address */
	.long 0x200000		/* init_size */
	.long 0			/* handover_offset */
	.org 1024

	.section .text.head, "ax"
	.code32
startup_32:
	hlt
	jmp startup_32
	.org 0x200
	.code64
	.globl startup_64
startup_64:
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi
	call guest_main
	jmp guest_reset

	.bss
	.align 16
stack:
	.skip 16384
stack_top:
