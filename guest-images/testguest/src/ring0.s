# Ring 0 of the test guest: everything that must run at CPL 0, and nothing else.
#
# Guest ring 0 is emulated instruction by instruction on the development machines (PVM,
# about 2,400 times slower than ring 3), and that emulator cannot run xsave, int3, popcnt,
# VEX or SSE code. So this file is plain integer code, kept short, and every table it
# needs (page tables, GDT, TSSes, IDT) is built by the assembler and the linker: the CPU
# executes no instruction to fill them. src/ring0.rs owns the constants that appear here
# in braces, passed as named operands of global_asm!.
#
# Intel syntax. `#` starts a comment (`;` would separate statements).
#
# Ring-0 instruction budget (instructions executed):
#   BSP boot, _start to ring 3 ..................... 28
#   AP, real-mode trampoline ....................... 15
#   AP, 64-bit entry to ring 3 ..................... 26
#   interrupt (vector >= 32) ........................ 7 (inc, jmp, push, mov, mov, pop, iretq)
#   port I/O gate (one in or out from ring 3) ....... 2 (in/out, iretq), plus 14 under
#                                                     PVM, which turns `int n` into #UD
#   park gate ...................................... 2 (cli, hlt), plus the same 14 under PVM
#   exception report ............................... ~1,500 (only on the way to a failed run)

# ---------------------------------------------------------------------------------------
# BSP entry. The VMM enters here in 64-bit mode, CPL 0, interrupts off, RSI = boot_params.
# ---------------------------------------------------------------------------------------
.section .text.entry, "ax"
.globl _start
_start:
    lgdt [rip + tg_gdtr]
    lidt [rip + tg_idtr]
    lea rax, [rip + tg_pml4]
    mov cr3, rax
    # CR4 = PAE | OSFXSR | OSXMMEXCPT and CR0 = PG | PE | MP | ET | NE (EM and TS clear):
    # ring-3 Rust uses SSE. Constants, so whatever else the VMM left set is gone too.
    mov eax, {CR4}
    mov cr4, rax
    mov eax, {CR0}
    mov cr0, rax
    # CPU 0's kernel stack, also its TSS RSP0 (see tg_tss).
    lea rsp, [rip + {KSTACK_SIZE} + tg_percpu]
    mov eax, {KERNEL_DS}
    mov ds, eax
    mov es, eax
    mov ss, eax
    # Reload CS from our GDT: the boot CS (0x10) is our kernel data selector.
    push {KERNEL_CS}
    lea rax, [rip + 1f]
    push rax
    retfq
1:  mov eax, {TSS0_SEL}
    ltr ax
    mov rdi, rsi
    lea rsi, [rip + {BSP_STACK_SIZE} - 8 + tg_bsp_stack]
    lea rdx, [rip + {bsp_main}]
    # fall through

# Drop to ring 3: RIP = rdx, RSP = rsi, first argument rdi, RFLAGS = IOPL 3 | IF.
# (IOPL 3 lets ring 3 do port I/O on hardware KVM; PVM ignores it, hence the I/O gates.)
# The stack pointer is 8 below a 16-byte boundary, as after a `call`.
tg_enter_user:
    push {USER_DS}
    push rsi
    push {USER_RFLAGS}
    push {USER_CS}
    push rdx
    iretq

# ---------------------------------------------------------------------------------------
# AP 64-bit entry: the far jump at the end of the trampoline lands here. Interrupts are
# off (INIT cleared IF) and stay off until iretq.
# ---------------------------------------------------------------------------------------
.globl tg_ap_entry64
tg_ap_entry64:
    mov eax, {KERNEL_DS}
    mov ds, eax
    mov es, eax
    mov ss, eax
    # CPU index: the BSP is 0, APs count up from 1 in the order they get here.
    mov eax, 1
    lock xadd dword ptr [rip + {next_cpu}], eax
    cmp eax, {MAX_CPUS}
    jae tg_park
    mov ecx, eax
    shl ecx, 4
    add ecx, {TSS0_SEL}
    ltr cx
    lidt [rip + tg_idtr]
    mov edi, eax
    imul eax, eax, {PERCPU_SIZE}
    lea rsp, [rax + {KSTACK_SIZE} + tg_percpu]
    # AP n's user stack is slot n-1 of tg_ap_stacks; its top is tg_ap_stacks + n * size.
    imul esi, edi, {AP_STACK_SIZE}
    lea rsi, [rsi - 8 + tg_ap_stacks]
    lea rdx, [rip + {ap_main}]
    jmp tg_enter_user

# Halt for good, interrupts off: an AP beyond MAX_CPUS (it has no stack, TSS or
# counters), or a CPU that reported an exception.
tg_park:
    cli
    hlt
    jmp tg_park

# ---------------------------------------------------------------------------------------
# Interrupt and exception stubs: one per vector, 16 bytes apart, so the IDT gate of
# vector v is the gate of vector 0 plus v * 16 (see tg_idt).
#
# Every vector >= 32 comes from ring 3 (ring 0 never runs with IF set), so the CPU has
# switched to RSP0 and pushed 5 quadwords: the CPU's interrupt counters start right at
# RSP0 (struct PerCpu in src/ring0.rs), at [rsp + 40 + 8 * v].
# ---------------------------------------------------------------------------------------
.section .text.tg_isr, "ax"
.balign 16
.globl tg_isr_stubs
tg_isr_stubs:
.set .Lv, 0
.rept 256
    .balign 16
    .if .Lv == 6
        # #UD: maybe an `int n` PVM did not deliver (see tg_ud).
        jmp tg_ud
    .elseif .Lv < 32
        # Exceptions: make every frame look alike (vector, error code, CPU frame).
        .if (.Lv == 8) || ((.Lv >= 10) && (.Lv <= 14)) || (.Lv == 17) || (.Lv == 21) || (.Lv == 29) || (.Lv == 30)
        .else
            push 0
        .endif
        push .Lv
        jmp tg_fault
    .elseif .Lv == {PARK_VECTOR}
        # DPL-3 gate: a ring-3 CPU with nothing left to do halts here for good,
        # without burning a host CPU (IF is clear: only INIT or NMI wake it).
    2:  cli
        hlt
        jmp 2b
    # Port I/O gates (DPL 3): dx = port, al/ax/eax = value. Ring 3 cannot do port I/O
    # itself under PVM, which grants guest ring 3 no IOPL (see src/port.rs).
    .elseif .Lv == {INB_VECTOR}
        in al, dx
        iretq
    .elseif .Lv == {INW_VECTOR}
        in ax, dx
        iretq
    .elseif .Lv == {INL_VECTOR}
        in eax, dx
        iretq
    .elseif .Lv == {OUTB_VECTOR}
        out dx, al
        iretq
    .elseif .Lv == {OUTW_VECTOR}
        out dx, ax
        iretq
    .elseif .Lv == {OUTL_VECTOR}
        out dx, eax
        iretq
    .elseif .Lv == {SPURIOUS_VECTOR}
        # A spurious interrupt is not in service: no EOI.
        inc qword ptr [rsp + 40 + .Lv * 8]
        iretq
    .else
        inc qword ptr [rsp + 40 + .Lv * 8]
        jmp tg_irq_eoi
    .endif
    .set .Lv, .Lv + 1
.endr
.balign 16
.globl tg_isr_stubs_end
tg_isr_stubs_end:

# #UD. PVM does not deliver `int n` from ring 3 to the gate: it raises #UD at the `int`
# instead. When the faulting instruction is `int n` (CD n) for one of the DPL-3 gates,
# resume as the gate would have: return address past the int, then gate n's stub (the
# frame is the same). Anything else is a real #UD.
tg_ud:
    push rax
    mov rax, [rsp + 8]
    cmp byte ptr [rax], 0xcd
    jne 9f
    movzx eax, byte ptr [rax + 1]
    cmp eax, {PARK_VECTOR}
    jb 9f
    cmp eax, {OUTL_VECTOR}
    ja 9f
    add qword ptr [rsp + 8], 2
    shl eax, 4
    lea rax, [rax + tg_isr_stubs]
    # Restore rax (the I/O gates' operand) and leave the stub's address for ret.
    xchg rax, [rsp]
    ret
9:  pop rax
    push 0
    push 6
    jmp tg_fault

tg_irq_eoi:
    push rax
    mov eax, {LAPIC_EOI}
    mov dword ptr [rax], 0
    pop rax
    iretq

# Exception: print one line on the serial port and end the VM with status {FAULT_STATUS}.
# Stack: [rbx] vector, [rbx + 8] error code, [rbx + 16] RIP.
tg_fault:
    mov rbx, rsp
    lea rsi, [rip + tg_msg_vector]
    call tg_puts
    # Vector < 32: at most two decimal digits.
    mov eax, [rbx]
    mov cl, 10
    div cl
    test al, al
    jz 3f
    push rax
    add al, 0x30
    call tg_putc
    pop rax
3:  mov al, ah
    add al, 0x30
    call tg_putc
    lea rsi, [rip + tg_msg_rip]
    call tg_puts
    mov rax, [rbx + 16]
    call tg_puthex
    lea rsi, [rip + tg_msg_err]
    call tg_puts
    mov rax, [rbx + 8]
    call tg_puthex
    lea rsi, [rip + tg_msg_cr2]
    call tg_puts
    mov rax, cr2
    call tg_puthex
    mov al, 0x0a
    call tg_putc
    mov eax, {FAULT_STATUS}
    out {EXIT_PORT}, eax
    jmp tg_park

# Print the NUL-terminated string at rsi. Clobbers rax, rcx, rdx, rsi.
tg_puts:
    mov al, [rsi]
    test al, al
    jz 4f
    call tg_putc
    inc rsi
    jmp tg_puts
4:  ret

# Print rax as 16 hex digits. Clobbers rax, rcx, rdx, r8, r9.
tg_puthex:
    mov r8, rax
    mov r9d, 16
5:  rol r8, 4
    mov eax, r8d
    and eax, 0xf
    add al, 0x30
    cmp al, 0x39
    jbe 6f
    add al, 0x27
6:  call tg_putc
    dec r9d
    jnz 5b
    ret

# Print al once the UART can take it, or after a bounded wait. Clobbers ah, ecx, edx.
tg_putc:
    mov ah, al
    mov ecx, 0x10000
    mov edx, {SERIAL_LSR}
7:  in al, dx
    test al, 0x20
    jnz 8f
    dec ecx
    jnz 7b
8:  mov edx, {SERIAL_THR}
    mov al, ah
    out dx, al
    ret

.section .rodata.tg_fault, "a"
tg_msg_vector: .asciz "TESTGUEST FAULT vector="
tg_msg_rip: .asciz " rip=0x"
tg_msg_err: .asciz " err=0x"
tg_msg_cr2: .asciz " cr2=0x"

# ---------------------------------------------------------------------------------------
# AP trampoline, 16-bit real mode. Ring 3 copies these bytes to {TRAMPOLINE_ADDR} before
# it sends SIPI with vector {TRAMPOLINE_ADDR} >> 12: the AP starts at CS:IP = vector*256:0,
# so data is addressed relative to tg_trampoline_start and jumps are absolute.
# Real mode straight to long mode: paging and protection are turned on in one CR0 write.
# ---------------------------------------------------------------------------------------
.section .rodata.tg_trampoline, "a"
.code16
.balign 16
.globl tg_trampoline_start
tg_trampoline_start:
    cli
    mov ax, cs
    mov ds, ax
    # lgdt with the operand-size prefix (0x66), which the assembler will not emit for
    # us: a 32-bit GDT base, not 24 bits.
    .byte 0x66
    lgdt [.Ltramp_gdtr_off]
    mov eax, {CR4}
    mov cr4, eax
    mov eax, offset tg_pml4
    mov cr3, eax
    mov ecx, {MSR_EFER}
    mov eax, {EFER_LME}
    xor edx, edx
    wrmsr
    mov eax, {CR0}
    mov cr0, eax
    # ljmpl KERNEL_CS:tg_ap_entry64 (66 EA ptr16:32), spelled out as bytes.
    .byte 0x66, 0xea
    .long tg_ap_entry64
    .word {KERNEL_CS}
.balign 4
.Ltramp_gdtr:
    .word tg_gdt_end - tg_gdt - 1
    .long tg_gdt
.set .Ltramp_gdtr_off, .Ltramp_gdtr - tg_trampoline_start
.globl tg_trampoline_end
tg_trampoline_end:
.code64

# ---------------------------------------------------------------------------------------
# Descriptor tables.
# ---------------------------------------------------------------------------------------
.section .data.tg_tables, "aw"
.balign 16
.globl tg_gdt
tg_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        # 0x08: code, 64-bit, DPL 0
    .quad 0x00cf92000000ffff        # 0x10: data, DPL 0
    .quad 0x00cff2000000ffff        # 0x18: data, DPL 3
    .quad 0x00affa000000ffff        # 0x20: code, 64-bit, DPL 3
    # From 0x28, one 16-byte descriptor per CPU: available 64-bit TSS (type 9, present),
    # limit 103. A descriptor splits the base into bit fields, which only the linker can
    # fill in: link.ld defines __tg_tss_base_bits, CPU 0's base scattered into place. The
    # TSSes are {TSS_STRIDE} bytes apart and link.ld checks that no base carries out of
    # bits 0..23, so CPU n's descriptor is CPU 0's plus (n * stride) << 16.
    .set .Li, 0
    .rept {MAX_CPUS}
        .quad __tg_tss_base_bits + ((.Li * {TSS_STRIDE}) << 16) + (0x89 << 40) + 103
        .quad 0
        .set .Li, .Li + 1
    .endr
.globl tg_gdt_end
tg_gdt_end:

.balign 8
    .word 0, 0, 0
tg_gdtr:
    .word tg_gdt_end - tg_gdt - 1
    .quad tg_gdt

# 256 interrupt gates (type 0xE: IF cleared on entry), selector {KERNEL_CS}, DPL 0 except
# the gates ring 3 may `int`: park ({PARK_VECTOR}) and port I/O ({INB_VECTOR}..{OUTL_VECTOR}), DPL 3. A gate splits the handler address
# into bit fields: link.ld defines __tg_gate_offset_bits, vector 0's stub address
# scattered into place, and checks the stubs stay within one 64 KiB block, so vector v's
# gate is vector 0's plus v * 16.
.balign 16
.globl tg_idt
tg_idt:
    .set .Li, 0
    .rept 256
        .if (.Li == {PARK_VECTOR}) || ((.Li >= {INB_VECTOR}) && (.Li <= {OUTL_VECTOR}))
            .quad __tg_gate_offset_bits + .Li * 16 + (0xee << 40) + ({KERNEL_CS} << 16)
        .else
            .quad __tg_gate_offset_bits + .Li * 16 + (0x8e << 40) + ({KERNEL_CS} << 16)
        .endif
        .quad 0
        .set .Li, .Li + 1
    .endr
tg_idt_end:

.balign 8
    .word 0, 0, 0
tg_idtr:
    .word tg_idt_end - tg_idt - 1
    .quad tg_idt

# One 104-byte TSS per CPU, {TSS_STRIDE} bytes apart. RSP0 (at offset 4) is the top of
# the CPU's kernel stack, which is also where its interrupt counters start. The I/O map
# base (offset 102) points past the limit: no I/O bitmap (ring 3 has IOPL 3 anyway).
.balign 128
.globl tg_tss
tg_tss:
    .set .Li, 0
    .rept {MAX_CPUS}
        .long 0
        .quad tg_percpu + .Li * {PERCPU_SIZE} + {KSTACK_SIZE}
        .fill 11, 8, 0
        .word 0
        .word 104
        .fill {TSS_STRIDE} - 104, 1, 0
        .set .Li, .Li + 1
    .endr
.globl tg_tss_end
tg_tss_end:

# ---------------------------------------------------------------------------------------
# Page tables: identity map of 0..{MAPPED_GIB} GiB with 2 MiB pages, all user-accessible
# and writable, accessed and dirty preset (nothing for the CPU to write back). The 32-bit
# MMIO hole, 3..4 GiB, is uncached (PCD | PWT). 2 MiB and not 1 GiB pages: a 1 GiB page
# mapped to user mode triple-faults under PVM.
# ---------------------------------------------------------------------------------------
.section .data.tg_pagetables, "aw"
.balign 4096
.globl tg_pml4
tg_pml4:
    .quad tg_pdpt + 0x27            # present, writable, user, accessed
    .fill 511, 8, 0
tg_pdpt:
    .set .Li, 0
    .rept {MAPPED_GIB}
        .quad tg_pd + .Li * 4096 + 0x27
        .set .Li, .Li + 1
    .endr
    .fill 512 - {MAPPED_GIB}, 8, 0
tg_pd:
    .set .Li, 0
    .rept {MAPPED_GIB} * 512
        .if (.Li >> 9) == 3
            .quad (.Li << 21) | 0xff   # present, writable, user, PWT, PCD, A, D, 2 MiB
        .else
            .quad (.Li << 21) | 0xe7   # present, writable, user, A, D, 2 MiB
        .endif
        .set .Li, .Li + 1
    .endr

# ---------------------------------------------------------------------------------------
# Stacks and per-CPU data. Zero-filled: the VMM's fresh guest memory is zero, so this
# costs ring 0 nothing.
# ---------------------------------------------------------------------------------------
.section .bss.tg_stacks, "aw", @nobits
.balign 4096
.globl tg_bsp_stack
tg_bsp_stack:
    .space {BSP_STACK_SIZE}
.globl tg_ap_stacks
tg_ap_stacks:
    .space ({MAX_CPUS} - 1) * {AP_STACK_SIZE}
.balign 64
.globl tg_percpu
tg_percpu:
    .space {MAX_CPUS} * {PERCPU_SIZE}
