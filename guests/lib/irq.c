/* The guest toolkit's interrupt half: IDT, handlers, 8259 PIC, local APIC and IOAPIC. */
#include "broiler.h"

struct idt_entry {
    u16 offset_lo;
    u16 selector;
    u8 ist;
    u8 type_attr;
    u16 offset_mid;
    u32 offset_hi;
    u32 zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];
extern char isr_stubs[];
#define STUB_SIZE 16

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        u64 addr = (u64)isr_stubs + (u64)v * STUB_SIZE;
        idt[v].offset_lo = (u16)addr;
        idt[v].selector = 0x08;
        idt[v].ist = 0;
        idt[v].type_attr = 0x8e; /* present, DPL0, 64-bit interrupt gate */
        idt[v].offset_mid = (u16)(addr >> 16);
        idt[v].offset_hi = (u32)(addr >> 32);
        idt[v].zero = 0;
    }
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
}

void set_handler(u8 vector, irq_handler_t fn)
{
    handlers[vector] = fn;
}

void isr_dispatch(struct irq_frame *f)
{
    if (handlers[f->vector]) {
        handlers[f->vector](f);
        return;
    }
    printf("unexpected %s %lu at rip %lx (error %lx)\n", f->vector < 32 ? "exception" : "interrupt",
           f->vector, f->rip, f->error);
    exit(0x7f);
}

/* -- 8259 PIC ---------------------------------------------------------------------------- */
#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1

void pic_init(u8 master_base, u8 slave_base)
{
    outb(PIC1_CMD, 0x11); /* ICW1: edge, cascade, ICW4 */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, master_base);
    outb(PIC2_DATA, slave_base);
    outb(PIC1_DATA, 0x04); /* slave on IRQ2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01); /* 8086 mode */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xfb); /* everything masked but the cascade */
    outb(PIC2_DATA, 0xff);
}

void pic_unmask(u8 irq)
{
    u16 port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) & (u8)~(1u << (irq & 7)));
}

void pic_mask(u8 irq)
{
    u16 port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) | (u8)(1u << (irq & 7)));
}

void pic_eoi(u8 irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, 0x20);
    outb(PIC1_CMD, 0x20);
}

/* -- local APIC and IOAPIC (identity-mapped MMIO) ---------------------------------------- */
#define LAPIC 0xfee00000UL
#define IOAPIC 0xfec00000UL

void lapic_init(void)
{
    mmio_write32(LAPIC + 0x80, 0);            /* TPR: accept everything */
    mmio_write32(LAPIC + 0xf0, 0x100 | 0xff); /* SVR: enable, spurious vector 0xff */
}

void lapic_eoi(void)
{
    mmio_write32(LAPIC + 0xb0, 0);
}

u32 lapic_id(void)
{
    return mmio_read32(LAPIC + 0x20) >> 24;
}

static void ioapic_write(u32 reg, u32 value)
{
    mmio_write32(IOAPIC, reg);
    mmio_write32(IOAPIC + 0x10, value);
}

void ioapic_route(u8 pin, u8 vector, int level, u8 dest_apic)
{
    ioapic_write(0x10 + 2u * pin + 1, (u32)dest_apic << 24);
    ioapic_write(0x10 + 2u * pin, vector | (level ? 1u << 15 : 0)); /* fixed, physical, high, unmasked */
}

void ioapic_mask(u8 pin)
{
    ioapic_write(0x10 + 2u * pin, 1u << 16);
}

int wait_for(volatile u32 *counter, u32 target, u64 max_halts)
{
    for (u64 i = 0; i < max_halts; i++) {
        if (*counter >= target)
            return 1;
        /* sti; hlt is atomic: an interrupt arriving between the two still wakes the hlt. */
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    }
    return *counter >= target;
}
