/* edgeq firmware runtime: the trap report, and the four mem* functions a freestanding compiler may call.
 *
 * Trap report, one machine-parsable line (toolchain.run_firmware decodes it):
 *     EDGEQ TRAP mcause=XXXXXXXX mepc=XXXXXXXX mtval=XXXXXXXX
 * then edgeq_exit(EDGEQ_TRAP_EXIT_CODE). If the I/O layer itself traps while reporting (for example
 * semihosting not enabled in QEMU), the nested trap tries a bare exit, and a third one spins: the runner's
 * timeout then ends the simulator.
 */
#include <stddef.h>

#include "edgeq_io.h"

static volatile uint32_t edgeq_trap_depth;

void edgeq_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval) __attribute__((noreturn, used));

void edgeq_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval) {
    uint32_t depth = edgeq_trap_depth++;
    if (depth == 1) edgeq_exit(EDGEQ_TRAP_EXIT_CODE + 1);
    if (depth > 1)
        for (;;) __asm__ volatile("wfi");
    edgeq_puts("\nEDGEQ TRAP mcause=");
    edgeq_put_hex(mcause, 8);
    edgeq_puts(" mepc=");
    edgeq_put_hex(mepc, 8);
    edgeq_puts(" mtval=");
    edgeq_put_hex(mtval, 8);
    edgeq_puts("\n");
    edgeq_exit(EDGEQ_TRAP_EXIT_CODE);
}

/* clang may turn loops and struct copies into calls to these even with -ffreestanding. They are written
 * so that they cannot be turned into calls to themselves. */
void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *(volatile unsigned char *)d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) *(volatile unsigned char *)d++ = *s++;
    } else {
        while (n--) *(volatile unsigned char *)(d + n) = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *(volatile unsigned char *)d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}
