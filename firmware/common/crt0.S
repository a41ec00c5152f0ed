/* edgeq freestanding start-up for RV32 (machine mode, no libc).
 *
 * gp and sp, mtvec -> edgeq_trap_entry, FPU on, fcsr = 0, .data copied from its load image in FLASH to RAM
 * (the simulators load the ELF by physical address, like a real board's flash), .bss cleared, counters
 * zeroed, main(), then edgeq_exit(main's return value).
 *
 * Symbols from the generated link script (firmware/common/link.ld.in): __global_pointer$, __stack_top,
 * __data_load, __data_start, __data_end, __bss_start, __bss_end.
 */
    .section .text.init, "ax", @progbits
    .globl _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    la t0, edgeq_trap_entry    /* direct mode: every trap enters edgeq_trap_entry (4-byte aligned) */
    csrw mtvec, t0
    li t0, (1 << 13)           /* mstatus.FS = Initial: enables the F/Zfh registers */
    csrs mstatus, t0
    csrwi fcsr, 0              /* round to nearest even, flags cleared */

    la t0, __data_load         /* copy .data: FLASH (load address) -> RAM (run address) */
    la t1, __data_start
    la t2, __data_end
    beq t0, t1, 2f
1:  bgeu t1, t2, 2f
    lw t3, 0(t0)
    sw t3, 0(t1)
    addi t0, t0, 4
    addi t1, t1, 4
    j 1b

2:  la t0, __bss_start         /* clear .bss */
    la t1, __bss_end
3:  bgeu t0, t1, 4f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 3b

    /* Zero the counters last so that counts start here, not at reset: QEMU's count at reset depends on
     * the host (see edgeq_io.h). Low words first so that no carry reaches the high words in between. */
4:  csrw minstret, zero
    csrw mcycle, zero
#if __riscv_xlen == 32
    csrw minstreth, zero
    csrw mcycleh, zero
#endif
    call main
    call edgeq_exit
5:  j 5b

/* Trap entry: any exception (none is expected) reports itself and stops. The faulting context's stack may
 * be what failed, so the report runs on a fresh stack at __stack_top; nothing returns from here. */
    .section .text.edgeq_trap, "ax", @progbits
    .balign 4
    .globl edgeq_trap_entry
edgeq_trap_entry:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    csrr a0, mcause
    csrr a1, mepc
    csrr a2, mtval
    call edgeq_trap
6:  j 6b
