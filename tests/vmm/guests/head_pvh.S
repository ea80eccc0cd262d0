/*
 * tests/vmm/guests/head_pvh.S - a PVH ELF guest: the XEN_ELFNOTE_PHYS32_ENTRY
 * note names pvh_start, entered in 32-bit protected mode with paging off and
 * EBX = struct hvm_start_info. It checks the magic, builds an identity map of
 * the first 1 GiB, enters long mode and calls guest_main(start_info).
 */
	.section .note.pvh, "a"
	.align 4
	.long 4			/* namesz */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start

	.section .text.head, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cmpl $0x336ec578, (%ebx)
	je 1f
	/* bad magic: report 'M' and reset */
	mov $0x3f8, %dx
	mov $'M', %al
	out %al, %dx
	mov $0xfe, %al
	out %al, $0x64
	hlt
1:	mov %ebx, %esi
	/* PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB */
	lea pml4, %edi
	lea pdpt, %eax
	or $3, %eax
	mov %eax, (%edi)
	lea pdpt, %edi
	lea pd, %eax
	or $3, %eax
	mov %eax, (%edi)
	lea pd, %edi
	xor %ecx, %ecx
2:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax
	mov %eax, (%edi,%ecx,8)
	inc %ecx
	cmp $512, %ecx
	jb 2b
	lea pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x20, %eax		/* PAE */
	mov %eax, %cr4
	mov $0xc0000080, %ecx
	rdmsr
	or $0x100, %eax		/* LME */
	wrmsr
	lgdt gdt_desc
	mov %cr0, %eax
	or $0x80000001, %eax	/* PG | PE */
	mov %eax, %cr0
	ljmp $0x08, $long_mode
	.code64
long_mode:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi
	call guest_main
	jmp guest_reset

	.section .rodata
	.align 8
gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* 0x08: 64-bit code */
	.quad 0x00cf93000000ffff	/* 0x10: data */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.bss
	.align 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4096
	.align 16
stack:	.skip 16384
stack_top:
