/* edgeq freestanding start-up for RV32 (machine mode, no libc): stack, FPU on, .bss cleared, main(). */
    .section .text.init
    .globl _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    li t0, (1 << 13)          /* mstatus.FS = Initial: enables the F/Zfh registers */
    csrs mstatus, t0
    csrwi fcsr, 0             /* round to nearest even, flags cleared */
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 1b
2:  call main
    call edgeq_exit
3:  j 3b
