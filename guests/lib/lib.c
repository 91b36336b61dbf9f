#include "broiler.h"
#include <stdarg.h>

int check_failures;

void putc(char c)
{
    /* Transmit-holding-register-empty; broiler's UART always has it, real ones may not. */
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (u8)c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void put_hex(u64 v)
{
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts(&buf[i]);
}

void put_dec(u64 v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

void printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putc(*fmt);
            continue;
        }
        fmt++;
        int is_long = 0;
        if (*fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': puts(va_arg(ap, const char *)); break;
        case 'c': putc((char)va_arg(ap, int)); break;
        case 'd': {
            long v = is_long ? va_arg(ap, long) : va_arg(ap, int);
            if (v < 0) { putc('-'); v = -v; }
            put_dec((u64)v);
            break;
        }
        case 'u': put_dec(is_long ? va_arg(ap, u64) : va_arg(ap, u32)); break;
        case 'x': put_hex(is_long ? va_arg(ap, u64) : va_arg(ap, u32)); break;
        case 'p': put_hex((u64)va_arg(ap, void *)); break;
        case '%': putc('%'); break;
        default: putc('?'); break;
        }
    }
    va_end(ap);
}

void exit(u32 value)
{
    outl(DEBUG_EXIT_PORT, value);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void poweroff(void)
{
    for (const char *p = "Shutdown"; *p; p++)
        outb(0x8900, (u8)*p);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void check_eq(u64 got, u64 want, const char *what, int line)
{
    if (got == want)
        return;
    check_failures++;
    printf("FAIL line %d: %s = %lx, want %lx\n", line, what, got, want);
    exit((u32)check_failures);         /* at once: later steps may depend on this one and hang */
}

void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
