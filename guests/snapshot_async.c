/* The snapshot guest for pending async work and a moved BAR (issue 18, tests/kvm/test_snapshot_guest.py).
 *
 *  1. It moves async-mmio-pci's memory BAR0 (1008:1991) to NEW_BAR (decode off around the write, as Linux
 *     does) and checks the registers answer there and no longer at the old address.
 *  2. It rings the ISA async-pio doorbell (0x60a0) and prints "waiting for async-pio" -- the test snapshots
 *     the VM now (run it with a long --async-delay) and restores it in a new process. When the completion
 *     interrupt arrives, the handler checks STATUS.DONE and acknowledges it; the guest prints the result.
 *  3. Then (after the restore) it rings the PCI doorbell at the NEW address -- an ioeventfd, so no exit --
 *     and waits for its INTx (IOAPIC, level); COMPLETIONS at the new address must be 1. A read at the old
 *     address gives all ones, and a doorbell write there must not start a job (BUSY stays clear).
 *
 * Every wait is bounded by LAPIC timer ticks, so a completion that never comes fails a check at once.
 * Exit value: the number of failed checks (0 -> status 1). */
#include "broiler.h"

#define ASYNC_PIO 0x60a0 /* +0 doorbell (2-byte write), +4 IRQ_NUM, +8 STATUS (bit 0 DONE), +0xc COMPLETIONS */
#define NEW_BAR 0xc3000000UL /* inside the PCI memory window, nothing else there */
#define DOORBELL 0x10
#define STATUS 0x14
#define COMPLETIONS 0x18
#define ST_DONE 1u
#define ST_BUSY 4u
#define TICK_VECTOR 0x30
#define LAPIC 0xfee00000UL
#define MAX_TICKS 2000u /* 20 s at 100 Hz: far more than any --async-delay the test uses */

static volatile u32 ticks, pio_done, pio_bad, pci_done, pci_spurious;
static volatile u64 pci_base; /* where async-mmio-pci's registers are now */
static u32 pio_irq;

static void tick(struct irq_frame *f)
{
    (void)f;
    ticks++;
    lapic_eoi();
}

static void async_pio_irq(struct irq_frame *f)
{
    (void)f;
    if (!(inl(ASYNC_PIO + 0x8) & ST_DONE))
        pio_bad++;
    outl(ASYNC_PIO + 0x8, ST_DONE); /* acknowledge: DONE cleared, line lowered */
    pio_done++;
    pic_eoi((u8)pio_irq);
}

/* INTx is level-triggered and KVM-PVM may deliver it twice: one that finds nothing pending is spurious. */
static void pci_intx(struct irq_frame *f)
{
    (void)f;
    u32 st = mmio_read32(pci_base + STATUS);
    if (st & ST_DONE) {
        mmio_write32(pci_base + STATUS, ST_DONE);
        pci_done++;
    } else {
        pci_spurious++;
    }
    lapic_eoi();
}

static int wait_ticks(volatile u32 *counter, u32 target)
{
    u32 until = ticks + MAX_TICKS;
    while (*counter < target && ticks < until)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    return *counter >= target;
}

static void start_ticks(void)
{
    set_handler(TICK_VECTOR, tick);
    mmio_write32(LAPIC + 0x3e0, 0x3);                    /* divide by 16 */
    mmio_write32(LAPIC + 0x320, 1u << 17 | TICK_VECTOR); /* periodic */
    mmio_write32(LAPIC + 0x380, 625000);                 /* 10 ms at KVM's 1 GHz APIC bus / 16 */
}

static u16 move_pci_bar(u64 *old)
{
    static struct pci_dev devs[32];
    int n = pci_scan_bus(0, devs, 32);
    const struct pci_dev *d = pci_find(devs, n, 0x1008, 0x1991);
    CHECK_EQ(d != 0, 1);
    CHECK_EQ(d->bar[0].kind, PCI_BAR_MEM32);
    *old = d->bar[0].addr;
    u8 line = d->irq_line;
    CHECK_EQ(line >= 16 && line < 24, 1); /* an IOAPIC-only line */
    set_handler((u8)(IOAPIC_VECTOR_BASE + line), pci_intx);
    ioapic_route(line, (u8)(IOAPIC_VECTOR_BASE + line), 1, (u8)lapic_id());
    pci_bar_move(d->bdf, 0, NEW_BAR);
    pci_base = NEW_BAR;
    CHECK_EQ(pci_bar_addr(d->bdf, 0), NEW_BAR);
    CHECK_EQ(mmio_read32(NEW_BAR + COMPLETIONS), 0);       /* the device answers at the new address */
    CHECK_EQ(mmio_read32(*old + COMPLETIONS), 0xffffffffu); /* and nothing at the old one */
    printf("async-mmio-pci: BAR0 moved from %lx to %lx, line %u\n", *old, NEW_BAR, line);
    return d->bdf;
}

static void async_pio_across_the_snapshot(void)
{
    pio_irq = inl(ASYNC_PIO + 0x4);
    CHECK_EQ(pio_irq < 16, 1);
    set_handler((u8)(PIC_VECTOR_BASE + pio_irq), async_pio_irq);
    pic_unmask((u8)pio_irq);
    outw(ASYNC_PIO, 1); /* the 2-byte width its ioeventfd was registered with */
    printf("waiting for async-pio\n");
    CHECK_EQ(wait_ticks(&pio_done, 1), 1);
    CHECK_EQ(pio_bad, 0);
    CHECK_EQ(inl(ASYNC_PIO + 0xc), 1);           /* COMPLETIONS */
    CHECK_EQ(inl(ASYNC_PIO + 0x8) & ST_DONE, 0); /* acknowledged */
    printf("async-pio: completed, COMPLETIONS %u\n", inl(ASYNC_PIO + 0xc));
}

static void moved_doorbell(u64 old)
{
    mmio_write32(NEW_BAR + DOORBELL, 1);
    CHECK_EQ(wait_ticks(&pci_done, 1), 1);
    CHECK_EQ(mmio_read32(NEW_BAR + COMPLETIONS), 1);
    printf("async-mmio-pci: doorbell at %lx completed, COMPLETIONS %u\n", NEW_BAR + DOORBELL,
           mmio_read32(NEW_BAR + COMPLETIONS));
    CHECK_EQ(mmio_read32(old + STATUS), 0xffffffffu);
    mmio_write32(old + DOORBELL, 1); /* a stale ioeventfd there would start a job: BUSY */
    for (int i = 0; i < 1000; i++)   /* each read exits, giving the event loop time to see a kick */
        CHECK_EQ(mmio_read32(NEW_BAR + STATUS) & ST_BUSY, 0);
    CHECK_EQ(mmio_read32(NEW_BAR + COMPLETIONS), 1);
    printf("async-mmio-pci: old address %lx reads all ones, its doorbell starts nothing\n", old);
}

int main(void)
{
    idt_init();
    pic_init(PIC_VECTOR_BASE, PIC_VECTOR_BASE + 8);
    lapic_init();
    start_ticks();
    u64 old;
    move_pci_bar(&old);
    async_pio_across_the_snapshot();
    moved_doorbell(old);
    printf("snapshot_async: %d failures, %u spurious INTx\n", check_failures, pci_spurious);
    return check_failures;
}
