/* edgeq I/O over HTIF (Spike's host-target interface): output on Spike's stdout, exit code to Spike.
 *
 * Spike finds the 64-bit words `tohost` and `fromhost` by their ELF symbol names and polls tohost between
 * instruction batches. A value with bit 0 set means exit with code value >> 1. An even value is the
 * address of a "magic memory" block {syscall number, arg0, arg1, arg2, ...} (eight 64-bit words) that
 * Spike's syscall proxy executes on the host: here only write(1, buf, len). Spike acknowledges by writing
 * a non-zero fromhost, which the firmware clears.
 *
 * On RV32 the 64-bit tohost is written as two 32-bit stores: the high word first (always 0 here), then
 * the low word, so Spike never sees a half-written command. Spike's polling happens every few thousand
 * instructions, so the number of instructions an edgeq_puts takes depends on where the poll falls: it is
 * repeatable from run to run, but keep I/O out of a measured region.
 */
#include "edgeq_io.h"

volatile uint64_t tohost __attribute__((section(".tohost"), aligned(8), used));
volatile uint64_t fromhost __attribute__((section(".tohost"), aligned(8), used));

#define HTIF_SYS_WRITE 64

static void htif_tohost(uint32_t value) {
    volatile uint32_t *t = (volatile uint32_t *)&tohost;
    t[1] = 0;
    t[0] = value;
}

static void htif_syscall(uint32_t which, uint32_t a0, uint32_t a1, uint32_t a2) {
    static volatile uint64_t magic[8] __attribute__((aligned(64)));
    volatile uint32_t *f = (volatile uint32_t *)&fromhost;
    magic[0] = which;
    magic[1] = a0;
    magic[2] = a1;
    magic[3] = a2;
    __asm__ volatile("fence" ::: "memory");
    htif_tohost((uint32_t)(uintptr_t)magic);
    while (f[0] == 0 && f[1] == 0) {
    }
    f[0] = 0;
    f[1] = 0;
    __asm__ volatile("fence" ::: "memory");
}

void edgeq_puts(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    if (n) htif_syscall(HTIF_SYS_WRITE, 1, (uint32_t)(uintptr_t)s, n);
}

void edgeq_exit(int code) {
    __asm__ volatile("fence" ::: "memory");
    htif_tohost(((uint32_t)code << 1) | 1);
    for (;;) {
    }
}
