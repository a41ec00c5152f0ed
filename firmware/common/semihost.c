/* edgeq I/O over Arm-style semihosting on RISC-V (QEMU: -semihosting-config enable=on,target=native).
 * Output appears on QEMU's stderr. The trap sequence must be three uncompressed instructions:
 * slli x0,x0,0x1f; ebreak; srai x0,x0,7. Each call costs a few instructions (the semihosting ebreak is
 * counted), so keep I/O out of a measured region. */
#include "edgeq_io.h"

static long semihost(long op, const void *arg) {
    register long a0 __asm__("a0") = op;
    register const void *a1 __asm__("a1") = arg;
    __asm__ volatile(".option push\n.option norvc\nslli x0, x0, 0x1f\nebreak\nsrai x0, x0, 7\n.option pop"
                     : "+r"(a0)
                     : "r"(a1)
                     : "memory");
    return a0;
}

void edgeq_puts(const char *s) { semihost(0x04 /* SYS_WRITE0 */, s); }

void edgeq_exit(int code) {
    uint32_t block[2] = {0x20026 /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
    semihost(0x20 /* SYS_EXIT_EXTENDED */, block);
    for (;;) {
    }
}
