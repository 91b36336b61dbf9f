/* Guest of async_checksum.py (ports 0x720-0x73f): point the device at a 200-byte buffer, ring the
 * doorbell, sleep until the completion interrupt; check the sum it wrote back after the buffer. */
#include "broiler.h"

#define BASE 0x720
#define LEN 200
static u8 buf[LEN + 4] __attribute__((aligned(8)));
static volatile u32 irqs, status;
static u32 irq;

static void on_irq(struct irq_frame *f)
{
    (void)f;
    status = inl(BASE + 0x8);
    outl(BASE + 0x8, status); /* acknowledge: the device lowers its line */
    irqs++;
    pic_eoi((u8)irq);
}

int main(void)
{
    u32 want = 0;
    for (u32 i = 0; i < LEN; i++) {
        buf[i] = (u8)(i * 7);
        want += buf[i];
    }
    idt_init();
    pic_init(0x20, 0x28);
    irq = inl(BASE + 0x4);
    set_handler((u8)(0x20 + irq), on_irq);
    pic_unmask((u8)irq);
    outl(BASE + 0x10, (u32)(u64)buf);
    outl(BASE + 0x14, LEN);
    outw(BASE, 1); /* the doorbell: no exit, the event loop gets the kick */
    CHECK_EQ(wait_for(&irqs, 1, 100000), 1);
    CHECK_EQ(status, 1);
    CHECK_EQ(inl(BASE + 0x18), want);
    CHECK_EQ(*(volatile u32 *)(buf + LEN), want);
    CHECK_EQ(inl(BASE + 0xc), 1);
    printf("async-checksum: irq %u, sum %u\n", irq, want);
    return check_failures;
}
