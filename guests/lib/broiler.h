/* The guest toolkit: port and MMIO access, serial output, exit, small checks. */
#ifndef BROILER_GUEST_H
#define BROILER_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

#define DEBUG_EXIT_PORT 0xf4
#define COM1 0x3f8

void putc(char c);
void puts(const char *s);          /* no newline added */
void put_hex(u64 v);               /* 0x-prefixed, no padding */
void put_dec(u64 v);
void printf(const char *fmt, ...); /* %s %c %d %u %x %lx %lu %ld %p %% only */
void exit(u32 value) __attribute__((noreturn));     /* status (value << 1) | 1 */
void poweroff(void) __attribute__((noreturn));      /* status 0: "Shutdown" to port 0x8900 */

/* Checks: count failures, print the failing line, keep going. */
extern int check_failures;
#define CHECK_EQ(got, want) check_eq((u64)(got), (u64)(want), #got, __LINE__)
void check_eq(u64 got, u64 want, const char *what, int line);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* -- interrupts (lib/irq.c, lib/isr.S) -------------------------------------------------- */
struct irq_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler_t)(struct irq_frame *f);

void idt_init(void);                            /* all 256 vectors; unhandled ones exit(0x7f) */
void set_handler(u8 vector, irq_handler_t fn);
static inline void sti(void) { __asm__ volatile("sti"); }
static inline void cli(void) { __asm__ volatile("cli"); }
static inline void cpu_relax(void) { __asm__ volatile("pause"); }

#define PIC_VECTOR_BASE 0x20                    /* IRQ n -> vector 0x20 + n with pic_init(0x20, 0x28) */
void pic_init(u8 master_base, u8 slave_base);   /* everything masked except the cascade */
void pic_unmask(u8 irq);
void pic_mask(u8 irq);
void pic_eoi(u8 irq);

#define IOAPIC_VECTOR_BASE 0x40                 /* our convention: IOAPIC pin n -> vector 0x40 + n */
void lapic_init(void);
void lapic_eoi(void);
u32 lapic_id(void);
void ioapic_route(u8 pin, u8 vector, int level, u8 dest_apic);
void ioapic_mask(u8 pin);
/* Halt with interrupts on until *counter >= target; returns 0 if max_halts wake-ups pass first. */
int wait_for(volatile u32 *counter, u32 target, u64 max_halts);

#endif
