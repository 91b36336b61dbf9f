/* A hostile guest with a seed: random port, MMIO, PCI-configuration and DMA accesses, and string IO
 * (issue 13). Every vCPU runs its own xorshift64* stream (seed ^ cpu) for ROUNDS steps:
 *
 *   - IN/OUT of 1, 2 or 4 bytes to a random port (0-0xFFFF), now and then `rep insb/outsb` of up to
 *     64 bytes into a scratch buffer;
 *   - MMIO reads and writes of 1, 2, 4 or 8 bytes anywhere in the PCI hole, or near a device;
 *   - configuration reads and writes by CF8/CFC and ECAM (buses 0-1, any device, any register);
 *   - DMA programming of the four DMA demos (wherever their BAR0 decodes now) with random
 *     addresses, lengths and directions, then a ring of the doorbell.
 *
 * What it leaves alone, because it would end or break *this* guest rather than test broiler: the
 * ports that end the run (0xF4 debug exit, 0x92 and the i8042 resets, 0x8900 shutdown, ACPI PM at
 * 0x600), COM1 (it prints its verdict there), the in-kernel LAPIC/IOAPIC pages and KVM's TSS pages,
 * configuration writes at or above 0x40 (enabling MSI/MSI-X with a random message could send this
 * IDT-less guest an NMI), and DMA into its own code, stack and page tables (DMA into RAM goes to
 * [SCRATCH, RAM end) or outside RAM). Interrupts stay disabled throughout.
 *
 * The seed and the vCPU count live in `fuzz_seed` below, after an 8-byte marker, so a test can patch
 * the image (flat64 has no command line). Exit value: 0x2A once every vCPU finished and the sync
 * demo's read-only registers still hold their values (status 85); a failed check exits 1.
 */
#include "broiler.h"

#define ROUNDS 6000
#define SCRATCH 0x400000UL                      /* DMA into RAM lands in [SCRATCH, RAM end) */
#define SCRATCH_SPAN 0x400000UL
#define SYNC_PIO 0x6060
#define HOLE 0xc0000000UL
#define DONE_VALUE 0x2a

/* Marker, seed, vCPU count: found and patched by tests/kvm/test_fuzz_guest.py. */
volatile u64 fuzz_seed[3] __attribute__((used)) = {0x4445455345565a46UL /* "FZVESEED" */, 0x9e3779b97f4a7c15UL, 1};

static volatile u32 finished;
static u8 buffers[2][64];
static const u32 dma_ids[4] = {0x19890309, 0x19911024, 0x19911026, 0x19911004};
static u16 dma_bdf[4];                          /* slots never move */

struct rng { u64 s; };

static u64 next(struct rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dUL;
}

static int port_is_off_limits(u32 port, u32 size)
{
    u32 end = port + size;
    return (port < 0xf5 && end > 0xf4) || (port < 0x93 && end > 0x92) || (port < 0x65 && end > 0x60) ||
           (port < 0x8902 && end > 0x8900) || (port < 0x606 && end > 0x600) || (port < 0x400 && end > 0x3f8);
}

static u64 hole_address(struct rng *r)
{
    u64 a = HOLE + (next(r) & 0x3fffffff);
    if (a >= 0xfec00000UL) /* IOAPIC, LAPIC, KVM's TSS: fold into the demo page instead */
        a = 0xd0000000UL + (a & 0xfff);
    if ((next(r) & 3) == 0) /* half the time near something that decodes: demos, BARs, ECAM */
        a = (next(r) & 1 ? 0xd0000000UL : 0xc2000000UL + (next(r) & 0xfffff)) + (a & 0xff);
    return a;
}

static void random_pio(struct rng *r, u8 *buffer)
{
    u64 v = next(r);
    u32 size = 1u << (v & 3) % 3, port = (u32)(v >> 8) & 0xffff;
    if ((v >> 32 & 7) == 0) /* near the demos and PCI IO BARs, where something answers */
        port = (v >> 40 & 1 ? 0x6000 : 0x6200) + (port & 0x3ff);
    if (port_is_off_limits(port, v >> 6 & 1 ? 64 : size))
        return;
    if (v >> 6 & 1) {
        u64 count = (v >> 24) & 63;
        u16 p = (u16)port;
        if (v >> 7 & 1)
            __asm__ volatile("rep insb" : "+D"(buffer), "+c"(count) : "d"(p) : "memory");
        else
            __asm__ volatile("rep outsb" : "+S"(buffer), "+c"(count) : "d"(p) : "memory");
        return;
    }
    int write = v >> 5 & 1;
    u32 value = (u32)(v >> 16);
    if (size == 1) write ? outb((u16)port, (u8)value) : (void)inb((u16)port);
    if (size == 2) write ? outw((u16)port, (u16)value) : (void)inw((u16)port);
    if (size == 4) write ? outl((u16)port, value) : (void)inl((u16)port);
}

static void random_mmio(struct rng *r)
{
    u64 a = hole_address(r), v = next(r);
    int write = v & 1, size = 1 << (v >> 1 & 3);
    if (a >= PCI_ECAM_BASE && a < PCI_ECAM_BASE + 0x1000000 && (a & 0xfff) + size > 0x40)
        write = 0; /* capabilities: see the top of the file */
    switch (size | write << 4) {
    case 1: (void)mmio_read8(a); break;
    case 2: (void)mmio_read16(a); break;
    case 4: (void)mmio_read32(a); break;
    case 8: (void)mmio_read64(a); break;
    case 0x11: mmio_write8(a, (u8)v); break;
    case 0x12: mmio_write16(a, (u16)v); break;
    case 0x14: mmio_write32(a, (u32)v); break;
    case 0x18: mmio_write64(a, v); break;
    }
}

static void random_config(struct rng *r)
{
    u64 v = next(r);
    u16 bdf = PCI_BDF(v & 1 ? 0 : (v >> 1) & 1, (v >> 2) & 31, (v >> 7 & 7) == 7 ? 1 : 0);
    int size = 1 << (v >> 10 & 3) % 3;
    u16 reg = (u16)((v >> 12) & 0xff) & (u16)~(size - 1);
    u32 value = (u32)(v >> 32);
    if ((v >> 20 & 3) == 0) /* BAR sizing and COMMAND, what enumeration does */
        reg = (v >> 22 & 1) ? PCI_COMMAND : (u16)(PCI_BAR0 + 4 * ((v >> 23) % 6)), size = (reg == PCI_COMMAND) ? 2 : 4;
    pci_mechanism = v >> 30 & 1 ? PCI_ECAM : PCI_CONF1;
    if ((v >> 31 & 1) && reg + size <= 0x40)
        pci_write(bdf, reg, size, (v >> 24 & 3) == 0 ? 0xffffffffu : value);
    else
        (void)pci_read(bdf, reg, size);
}

static u32 ram_target(struct rng *r)
{
    u64 v = next(r);
    switch (v & 3) {
    case 0: return (u32)(SCRATCH + (v >> 8) % SCRATCH_SPAN);
    case 1: return (u32)(SCRATCH + SCRATCH_SPAN - ((v >> 8) & 0xff));       /* the end of RAM */
    case 2: return (u32)(HOLE + (v >> 8 & 0x3fffffff));                      /* no RAM at all */
    default: return (u32)(SCRATCH + SCRATCH_SPAN + (v >> 8 & 0xffffff));     /* past RAM */
    }
}

static void random_dma(struct rng *r)
{
    u64 v = next(r);
    u16 bdf = dma_bdf[v & 3];
    u32 bar = bdf ? pci_ecam_read(bdf, PCI_BAR0, 4) : 0;
    if (!(bar & 1) || (bar & ~3u) < 0x1000)
        return;
    u16 io = (u16)(bar & ~3u);
    u32 dir = (v >> 2 & 7) == 0 ? (u32)(v >> 8) : (v >> 5 & 1); /* now and then a bad direction */
    u32 ram = ram_target(r), dev = (u32)(next(r) & 0x1fffff);
    u32 len = v >> 6 & 1 ? (u32)(v >> 16 & 0xfff) : (u32)(v >> 32);
    outl(io + 0x0, dir == 1 ? ram : dev); /* SRC: guest RAM for DIR 1, the device buffer for DIR 0 */
    outl(io + 0x4, dir == 1 ? dev : ram);
    outl(io + 0x8, dir);
    outl(io + 0xc, len);
    outw(io + 0x10, 1);
    (void)inl(io + 0x14);
    outl(io + 0x14, 7);
}

static void fuzz(u64 cpu)
{
    struct rng r = {fuzz_seed[1] ^ (cpu + 1) * 0x9e3779b97f4a7c15UL};
    for (u32 i = 0; i < ROUNDS; i++) {
        switch (next(&r) % 8) {
        case 0: case 1: case 2: random_pio(&r, buffers[cpu & 1]); break;
        case 3: case 4: case 5: random_mmio(&r); break;
        case 6: random_config(&r); break;
        default: random_dma(&r); break;
        }
    }
}

static void find_dma_devices(void)
{
    for (u8 dev = 1; dev < 32; dev++)
        for (int i = 0; i < 4; i++)
            if (pci_ecam_read(PCI_BDF(0, dev, 0), 0, 4) == dma_ids[i])
                dma_bdf[i] = PCI_BDF(0, dev, 0);
}

int main(u64 cpu)
{
    find_dma_devices(); /* by ECAM: another vCPU's CF8 writes cannot redirect it */
    fuzz(cpu);
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    if (cpu)
        for (;;)
            __asm__ volatile("hlt");
    /* The BSP ends the run once every vCPU is done (bounded: a lost AP fails the check, no hang). */
    for (u64 spins = 0; finished < fuzz_seed[2] && spins < 20000000UL; spins++)
        cpu_relax();
    CHECK_EQ(finished, fuzz_seed[2]);
    CHECK_EQ(inl(SYNC_PIO + 0x8), 0x10); /* read-only registers survived */
    CHECK_EQ(inl(SYNC_PIO + 0xc), 0x40);
    printf("fuzz: seed %lx, %u vCPU(s) done\n", fuzz_seed[1], finished);
    exit(DONE_VALUE);
}
