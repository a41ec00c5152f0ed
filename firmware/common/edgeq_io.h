/* edgeq firmware I/O: one small interface, one implementation per runner.
 *
 *   semihost.c  QEMU (Arm-style semihosting over RISC-V; output on QEMU's stderr)
 *   htif.c      Spike (HTIF tohost/fromhost; output on Spike's stdout)
 *   host        this header alone, when compiled for the host (not __riscv, or -DEDGEQ_HOST): stdio
 *
 * Counters: edgeq_instret() and edgeq_cycles() read minstret/mcycle (64 bits, also on RV32). crt0.S zeroes
 * both just before main(), so on QEMU (-icount shift=0,sleep=off) and Spike the values are exact and repeat
 * from run to run. The documented way to measure is a delta taken with the same call sequence:
 *
 *     uint64_t t0 = edgeq_instret();
 *     kernel(...);                  // keep I/O out of the measured region: Spike's HTIF polling and the
 *     uint64_t n = edgeq_instret() - t0;   // semihosting trap add instructions that are not the kernel's
 *
 * Put the measured code in a noinline function so the compiler cannot move it across the two reads.
 * On QEMU mcycle == minstret (one instruction per virtual ns with shift=0); on Spike too (one IPC).
 * Real cores count real cycles; both counters must exist as M-mode CSRs (crt0 writes them).
 */
#ifndef EDGEQ_IO_H
#define EDGEQ_IO_H
#include <stdint.h>

#define EDGEQ_TRAP_EXIT_CODE 3 /* exit code of a firmware that took an unexpected trap */

#if defined(EDGEQ_HOST) || !defined(__riscv)
/* Host build (the backend's host check): the same C sources, stdio instead of a runner. */
#include <stdio.h>
#include <stdlib.h>

static inline void edgeq_puts(const char *s) { fputs(s, stdout); }
static inline void edgeq_put_hex(uint32_t v, int digits) {
    digits = digits < 1 ? 1 : digits > 8 ? 8 : digits;
    printf("%0*x", digits, (unsigned)(digits == 8 ? v : v & ((1u << (4 * digits)) - 1)));
}
static inline __attribute__((noreturn)) void edgeq_exit(int code) {
    fflush(stdout);
    exit(code);
}
static inline uint64_t edgeq_instret(void) { return 0; } /* no instruction counts on the host */
static inline uint64_t edgeq_cycles(void) { return 0; }

#else
void edgeq_puts(const char *s);                /* write a NUL-terminated string to the host */
void edgeq_exit(int code) __attribute__((noreturn)); /* stop the simulator with this exit code */

#if __riscv_xlen == 32
/* Read a 64-bit counter as hi, lo, hi again: retry if lo wrapped in between. */
#define EDGEQ_READ_CSR64(lo, hi)                                                                        \
    do {                                                                                                \
        uint32_t h1_, l_, h2_;                                                                          \
        do {                                                                                            \
            __asm__ volatile("csrr %0, " #hi "\n\tcsrr %1, " #lo "\n\tcsrr %2, " #hi                    \
                             : "=r"(h1_), "=r"(l_), "=r"(h2_)                                           \
                             :                                                                          \
                             : "memory");                                                               \
        } while (h1_ != h2_);                                                                           \
        edgeq_v_ = ((uint64_t)h1_ << 32) | l_;                                                          \
    } while (0)
#else
#define EDGEQ_READ_CSR64(lo, hi) __asm__ volatile("csrr %0, " #lo : "=r"(edgeq_v_) : : "memory")
#endif

/* Instructions retired since main() was entered (minstret, zeroed by crt0). */
static inline uint64_t edgeq_instret(void) {
    uint64_t edgeq_v_;
    EDGEQ_READ_CSR64(minstret, minstreth);
    return edgeq_v_;
}

/* Cycles since main() was entered (mcycle, zeroed by crt0). */
static inline uint64_t edgeq_cycles(void) {
    uint64_t edgeq_v_;
    EDGEQ_READ_CSR64(mcycle, mcycleh);
    return edgeq_v_;
}
#endif

#if !(defined(EDGEQ_HOST) || !defined(__riscv))
/* Write the low `digits` hex digits of v (1..8): one implementation for every I/O layer, over edgeq_puts. */
static inline void edgeq_put_hex(uint32_t v, int digits) {
    char buf[9];
    if (digits < 1) digits = 1;
    if (digits > 8) digits = 8;
    for (int i = digits - 1; i >= 0; i--) {
        buf[i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    }
    buf[digits] = 0;
    edgeq_puts(buf);
}
#endif

/* Write a 64-bit counter as 16 hex digits. */
static inline void edgeq_put_hex64(uint64_t v) {
    edgeq_put_hex((uint32_t)(v >> 32), 8);
    edgeq_put_hex((uint32_t)v, 8);
}
#endif
