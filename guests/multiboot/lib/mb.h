/* The Multiboot kernels' own toolkit (guests/multiboot/lib), on top of guests/lib/broiler.h: the
 * Multiboot information block, command-line words, TSC timing and a LAPIC-timer watchdog for waits.
 * A kernel asks for it (and for guests/lib's lib.c, irq.c, pci.c) with a "build-with:" line in its
 * header comment; guests/build.py links only what that line names. */
#ifndef BROILER_MB_H
#define BROILER_MB_H

#include "broiler.h"

#define MB_BOOT_MAGIC 0x2BADB002

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4], mmap_length, mmap_addr, drives_length, drives_addr, config_table;
    u32 boot_loader_name, apm_table;
};

/* Command line: "<kernel path> word word=value ...". mb_args keeps a pointer to it. */
void mb_args(const struct mb_info *mbi);
const char *mb_cmdline(void);
const char *mb_arg(const char *name);           /* the text after "name=" (or after "name"), 0 if absent */
int mb_arg_is(const char *name, const char *value); /* name=value present */
/* key is one of the comma-separated words of list (read up to its first space); a NULL list (the argument
 * absent) holds every key. */
int mb_list_has(const char *list, const char *key);
u64 mb_arg_num(const char *name, u64 dflt);     /* decimal, K/M/G suffixes */

/* Time. tsc_hz is measured against PIT channel 2 by tsc_calibrate (median of three 50 ms windows). */
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (u64)hi << 32 | lo;
}
extern u64 tsc_hz;
u64 tsc_calibrate(void);                        /* sets and returns tsc_hz */
static inline u64 tsc_deadline_ms(u64 ms) { return rdtsc() + tsc_hz / 1000 * ms; }
static inline int tsc_passed(u64 deadline) { return (long)(rdtsc() - deadline) >= 0; }

/* A periodic LAPIC timer tick (vector MB_TICK_VECTOR, roughly every 10 ms) so that "sti; hlt" waits
 * always wake up again and can check their deadline. Needs idt_init() and lapic_init() first. */
#define MB_TICK_VECTOR 0xee
void mb_tick_start(void);
void mb_tick_stop(void);

#endif
