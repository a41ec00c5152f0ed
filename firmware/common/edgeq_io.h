/* edgeq firmware I/O: one small interface, one implementation per runner (semihosting for QEMU). */
#ifndef EDGEQ_IO_H
#define EDGEQ_IO_H
#include <stdint.h>

void edgeq_puts(const char *s);               /* write a NUL-terminated string to the host */
void edgeq_exit(int code) __attribute__((noreturn));
void edgeq_put_hex(uint32_t v, int digits);    /* write v as `digits` hex digits */

static inline uint32_t edgeq_instret(void) {
    uint32_t v;
    __asm__ volatile("csrr %0, minstret" : "=r"(v));
    return v;
}
#endif
