/* Bare-metal start-up for a Cortex-M4F on QEMU's mps2-an386: vector table, FPU on, zeroed .bss,
 * main(), then a semihosting exit with main's status. Output goes through semihosting. */
#include <stdint.h>
#include <string.h>

#include "board.h"

extern uint32_t __stack_top, __bss_start__, __bss_end__;
int main(void);

static int semihost(int operation, void *argument) {
    register int r0 __asm__("r0") = operation;
    register void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void put_text(const char *text) { semihost(0x04, (void *)text); } /* SYS_WRITE0 */

void put_hex(uint32_t value) {
    char text[10];
    for (int i = 0; i < 8; i++) text[i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 15];
    text[8] = ' ';
    text[9] = 0;
    put_text(text);
}

void put_uint(uint32_t value) {
    char text[11], *end = text + sizeof text - 1;
    *end = 0;
    do *--end = (char)('0' + value % 10);
    while (value /= 10);
    put_text(end);
}

/* value with 6 decimals, e.g. -0.012345 (no printf on bare metal) */
void put_float(float value) {
    char text[24], *end = text + sizeof text - 1;
    *end = 0;
    int negative = value < 0;
    unsigned long long scaled = (unsigned long long)((negative ? -value : value) * 1e6f + 0.5f);
    for (int digit = 0; digit < 7 || scaled; digit++, scaled /= 10) {
        if (digit == 6) *--end = '.';
        *--end = (char)('0' + scaled % 10);
    }
    if (negative) *--end = '-';
    put_text(end);
}

void reset_handler(void) {
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n isb");
    memset(&__bss_start__, 0, (char *)&__bss_end__ - (char *)&__bss_start__);
    uint32_t status[2] = {0x20026, (uint32_t)main()}; /* ADP_Stopped_ApplicationExit */
    semihost(0x20, status);                            /* SYS_EXIT_EXTENDED */
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void *const vectors[16] = {
    &__stack_top, (void *)reset_handler};
