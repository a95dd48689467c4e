/* What startup.c gives main.c: text out through semihosting (QEMU prints it). */
#ifndef BOARD_H
#define BOARD_H
#include <stdint.h>
void put_text(const char *text);
void put_hex(uint32_t value); /* 8 hex digits and a space */
void put_uint(uint32_t value);
void put_float(float value);  /* 6 decimals */
#endif
