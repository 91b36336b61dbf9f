/* Acceptance guest for the asynchronous paths (issue 3).
 *
 * For each async demo device: read IRQ_NUM, route the line (8259 PIC, or the IOAPIC for vioapic),
 * ring the doorbell K times, waiting each time for the completion interrupt, whose handler checks
 * STATUS.DONE, acknowledges it and sends EOI. Then the coalesced log: write N values with no exits
 * and check COUNT and CHECKSUM with one read each. Exit value: the number of failed checks. */
#include "broiler.h"

#define K 5
#define N_LOG 100
#define LOG 0xd0000080UL

struct dev {
    const char *name;
    int pio;          /* doorbell on a port (outw) or MMIO (writel) */
    u64 base;
    int ioapic;       /* route through the IOAPIC (edge) instead of the PIC */
    u32 irq;
    volatile u32 interrupts;
    volatile u32 bad_status;
};

static struct dev devs[] = {
    {"vpic", 1, 0x6020, 0, 0, 0, 0},
    {"vioapic", 1, 0x6040, 1, 0, 0, 0},
    {"async-pio", 1, 0x60a0, 0, 0, 0, 0},
    {"async-mmio", 0, 0xd0000040UL, 0, 0, 0, 0},
};
#define NDEV (sizeof(devs) / sizeof(devs[0]))

static u32 reg_read(struct dev *d, u32 off)
{
    return d->pio ? inl((u16)(d->base + off)) : mmio_read32(d->base + off);
}

static void reg_write(struct dev *d, u32 off, u32 v)
{
    if (d->pio)
        outl((u16)(d->base + off), v);
    else
        mmio_write32(d->base + off, v);
}

static void ring(struct dev *d)
{
    if (d->pio)
        outw((u16)d->base, 1); /* the 2-byte width the ioeventfd was registered with */
    else
        mmio_write32(d->base, 1);
}

static void handler(struct irq_frame *f)
{
    for (u32 i = 0; i < NDEV; i++) {
        struct dev *d = &devs[i];
        u32 vec = d->ioapic ? IOAPIC_VECTOR_BASE + d->irq : PIC_VECTOR_BASE + d->irq;
        if (vec != f->vector)
            continue;
        if (!(reg_read(d, 0x8) & 1))
            d->bad_status++;
        reg_write(d, 0x8, 1); /* acknowledge: DONE cleared, level line lowered */
        d->interrupts++;
        if (d->ioapic)
            lapic_eoi();
        else
            pic_eoi((u8)d->irq);
        return;
    }
    printf("interrupt on unexpected vector %lu\n", f->vector);
}

int main(void)
{
    idt_init();
    pic_init(0x20, 0x28);
    lapic_init();
    for (u32 i = 0; i < NDEV; i++) {
        struct dev *d = &devs[i];
        d->irq = reg_read(d, 0x4);
        printf("%s: IRQ_NUM %u\n", d->name, d->irq);
        if (d->ioapic) {
            set_handler((u8)(IOAPIC_VECTOR_BASE + d->irq), handler);
            ioapic_route((u8)d->irq, (u8)(IOAPIC_VECTOR_BASE + d->irq), 0, (u8)lapic_id());
        } else {
            set_handler((u8)(PIC_VECTOR_BASE + d->irq), handler);
            pic_unmask((u8)d->irq);
        }
    }
    for (u32 i = 0; i < NDEV; i++) {
        struct dev *d = &devs[i];
        for (u32 k = 0; k < K; k++) {
            ring(d);
            if (!wait_for(&d->interrupts, k + 1, 1000000))
                break;
        }
        CHECK_EQ(d->interrupts, K);
        CHECK_EQ(d->bad_status, 0);
        CHECK_EQ(reg_read(d, 0xc), K);       /* COMPLETIONS */
        CHECK_EQ(reg_read(d, 0x8) & 1, 0);   /* DONE acknowledged */
        printf("%s: %u doorbells, %u interrupts, COMPLETIONS %u\n", d->name, K, d->interrupts,
               reg_read(d, 0xc));
    }

    /* Coalesced MMIO: N writes that never exit, then one read each for COUNT and CHECKSUM. */
    mmio_write32(LOG + 0x10, 1); /* RESET */
    u32 h = 0;
    for (u32 i = 0; i < N_LOG; i++) {
        u32 v = i * 7 + 3;
        mmio_write32(LOG, v);
        h = h * 31 + v;
    }
    CHECK_EQ(mmio_read32(LOG + 0x8), N_LOG);
    CHECK_EQ(mmio_read32(LOG + 0xc), h);
    printf("coalesced-log: %u writes, checksum %x\n", N_LOG, h);
    printf("async_test: %d failures\n", check_failures);
    return check_failures;
}
