/* Guest of pci_doubler.py: find 1234:11e0, enable MSI to this CPU, ask the device to double 21 and
 * wait for the MSI; exit value 0 when RESULT is 42 and exactly one interrupt came. */
#include "broiler.h"

#define VECTOR 0x60
static volatile u32 irqs;

static void on_msi(struct irq_frame *f)
{
    (void)f;
    irqs++;
    lapic_eoi();
}

int main(void)
{
    struct pci_dev devs[32];
    int n = pci_scan_bus(0, devs, 32);
    const struct pci_dev *d = pci_find(devs, n, 0x1234, 0x11e0);
    CHECK_EQ(d != 0, 1);
    u64 bar = d->bar[0].addr;
    printf("pci-doubler at %x, BAR0 %lx\n", d->bdf, bar);
    idt_init();
    lapic_init();
    set_handler(VECTOR, on_msi);
    CHECK_EQ(pci_msi_enable(d->bdf, (u8)lapic_id(), VECTOR) != 0, 1);
    mmio_write32(bar + 0x0, 21);
    mmio_write32(bar + 0x8, 1);
    CHECK_EQ(wait_for(&irqs, 1, 1000), 1);
    CHECK_EQ(mmio_read32(bar + 0x4), 42);
    CHECK_EQ(mmio_read32(bar + 0xc), 1);
    printf("pci-doubler: 21 doubled is %u, %u interrupt\n", mmio_read32(bar + 0x4), irqs);
    return check_failures;
}
