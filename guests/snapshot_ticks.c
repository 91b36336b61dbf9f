/* The snapshot timer guest (issue 18): two periodic interrupts, each counted on a port from its handler, so a
 * test sees 1, 2, 3, ... per timer. The LAPIC timer (vector 0x30, periodic, ~100 Hz) writes port 0x7000; the
 * PIT (channel 0, mode 2, ~100 Hz, IRQ 0 through the 8259 PIC) writes port 0x7004. After a restore both must
 * go on counting: the LAPIC's timer, the PIT and the PIC came back from the snapshot. Halts between ticks;
 * never returns: the test ends the VM. */
#include "broiler.h"

#define LAPIC_TICK_PORT 0x7000
#define PIT_TICK_PORT 0x7004
#define LAPIC_TIMER_VECTOR 0x30
#define LAPIC 0xfee00000UL
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_DIVIDE 0x3e0
#define LVT_PERIODIC (1u << 17)
#define PIT_DIVISOR 11932 /* 1193182 Hz / 11932: ~100 Hz */

static volatile u32 lapic_ticks, pit_ticks;

static void lapic_tick(struct irq_frame *f)
{
    (void)f;
    outl(LAPIC_TICK_PORT, ++lapic_ticks);
    lapic_eoi();
}

static void pit_tick(struct irq_frame *f)
{
    (void)f;
    outl(PIT_TICK_PORT, ++pit_ticks);
    pic_eoi(0);
}

int main(void)
{
    idt_init();
    set_handler(LAPIC_TIMER_VECTOR, lapic_tick);
    set_handler(PIC_VECTOR_BASE + 0, pit_tick);
    pic_init(PIC_VECTOR_BASE, PIC_VECTOR_BASE + 8);
    lapic_init();
    mmio_write32(LAPIC + LAPIC_TIMER_DIVIDE, 0x3); /* divide by 16 */
    mmio_write32(LAPIC + LAPIC_LVT_TIMER, LVT_PERIODIC | LAPIC_TIMER_VECTOR);
    mmio_write32(LAPIC + LAPIC_TIMER_INITIAL, 625000); /* 10 ms at KVM's 1 GHz APIC bus / 16 */
    outb(0x43, 0x34);                                  /* channel 0, lobyte/hibyte, mode 2 */
    outb(0x40, PIT_DIVISOR & 0xff);
    outb(0x40, PIT_DIVISOR >> 8);
    pic_unmask(0);
    sti();
    for (;;)
        __asm__ volatile("hlt");
}
