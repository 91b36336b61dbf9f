/* The guest toolkit's PCI half: configuration cycles (mechanism #1 and ECAM), bus enumeration, BAR
 * sizing and placement, the capability walk, MSI and MSI-X. See docs/pci.md, "Guest toolkit". */
#include "broiler.h"

int pci_mechanism = PCI_CONF1;

static u32 ones(int size)
{
    return size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
}

/* -- configuration cycles ---------------------------------------------------------------- */
u32 pci_conf1_read(u16 bdf, u16 reg, int size)
{
    if (reg > 0xff)
        return ones(size); /* mechanism #1 reaches the 256-byte header only */
    outl(PCI_CONF1_ADDR, PCI_CONF1_ENABLE | (u32)bdf << 8 | (reg & 0xfc));
    u16 port = (u16)(PCI_CONF1_DATA + (reg & 3));
    switch (size) {
    case 1: return inb(port);
    case 2: return inw(port);
    default: return inl(port);
    }
}

void pci_conf1_write(u16 bdf, u16 reg, int size, u32 value)
{
    if (reg > 0xff)
        return;
    outl(PCI_CONF1_ADDR, PCI_CONF1_ENABLE | (u32)bdf << 8 | (reg & 0xfc));
    u16 port = (u16)(PCI_CONF1_DATA + (reg & 3));
    switch (size) {
    case 1: outb(port, (u8)value); break;
    case 2: outw(port, (u16)value); break;
    default: outl(port, value); break;
    }
}

static u64 ecam_address(u16 bdf, u16 reg)
{
    return PCI_ECAM_BASE + ((u64)bdf << 12) + (reg & 0xfff);
}

u32 pci_ecam_read(u16 bdf, u16 reg, int size)
{
    if (PCI_BDF_BUS(bdf) >= PCI_ECAM_BUSES || reg > 0xfff)
        return ones(size); /* past the window: that would be someone else's MMIO */
    u64 a = ecam_address(bdf, reg);
    switch (size) {
    case 1: return mmio_read8(a);
    case 2: return mmio_read16(a);
    default: return mmio_read32(a);
    }
}

void pci_ecam_write(u16 bdf, u16 reg, int size, u32 value)
{
    if (PCI_BDF_BUS(bdf) >= PCI_ECAM_BUSES || reg > 0xfff)
        return;
    u64 a = ecam_address(bdf, reg);
    switch (size) {
    case 1: mmio_write8(a, (u8)value); break;
    case 2: mmio_write16(a, (u16)value); break;
    default: mmio_write32(a, value); break;
    }
}

u32 pci_read(u16 bdf, u16 reg, int size)
{
    return pci_mechanism == PCI_ECAM ? pci_ecam_read(bdf, reg, size) : pci_conf1_read(bdf, reg, size);
}

void pci_write(u16 bdf, u16 reg, int size, u32 value)
{
    if (pci_mechanism == PCI_ECAM)
        pci_ecam_write(bdf, reg, size, value);
    else
        pci_conf1_write(bdf, reg, size, value);
}

/* -- BARs ---------------------------------------------------------------------------------- */
u16 pci_decode_off(u16 bdf)
{
    u16 cmd = pci_read16(bdf, PCI_COMMAND);
    if (cmd & (PCI_CMD_IO | PCI_CMD_MEM))
        pci_write16(bdf, PCI_COMMAND, cmd & (u16)~(PCI_CMD_IO | PCI_CMD_MEM));
    return cmd;
}

static void decode_restore(u16 bdf, u16 cmd)
{
    if (cmd & (PCI_CMD_IO | PCI_CMD_MEM))
        pci_write16(bdf, PCI_COMMAND, cmd);
}

static int is_mem64(u32 low)
{
    return !(low & 1) && ((low >> 1) & 3) == 2;
}

int pci_bar_probe(u16 bdf, int index, struct pci_bar *bar)
{
    u16 reg = (u16)(PCI_BAR0 + 4 * index);
    memset(bar, 0, sizeof(*bar));
    u32 low = pci_read32(bdf, reg);
    int wide = index < 5 && is_mem64(low);
    u32 high = wide ? pci_read32(bdf, reg + 4) : 0;

    u16 cmd = pci_decode_off(bdf);
    pci_write32(bdf, reg, 0xffffffffu);
    u32 mask = pci_read32(bdf, reg);
    pci_write32(bdf, reg, low);
    u32 mask_high = 0xffffffffu;
    if (wide) {
        pci_write32(bdf, reg + 4, 0xffffffffu);
        mask_high = pci_read32(bdf, reg + 4);
        pci_write32(bdf, reg + 4, high);
    }
    decode_restore(bdf, cmd);

    if (mask == 0)
        return 1; /* not implemented */
    if (mask & 1) {
        u32 m = mask & ~3u;
        if (!(m >> 16))
            m |= 0xffff0000u; /* IO BARs may implement only 16 address bits */
        bar->kind = PCI_BAR_IO;
        bar->addr = low & ~3u;
        bar->size = (u32)(~m + 1);
        return 1;
    }
    bar->prefetch = (low >> 3) & 1;
    if (wide) {
        u64 m = (u64)mask_high << 32 | (mask & ~0xfu);
        bar->kind = PCI_BAR_MEM64;
        bar->addr = (u64)high << 32 | (low & ~0xfu);
        bar->size = ~m + 1;
        return 2;
    }
    bar->kind = PCI_BAR_MEM32;
    bar->addr = low & ~0xfu;
    bar->size = (u32)(~(mask & ~0xfu) + 1);
    return 1;
}

u64 pci_bar_addr(u16 bdf, int index)
{
    u16 reg = (u16)(PCI_BAR0 + 4 * index);
    u32 low = pci_read32(bdf, reg);
    if (low & 1)
        return low & ~3u;
    u64 addr = low & ~0xfu;
    if (index < 5 && is_mem64(low))
        addr |= (u64)pci_read32(bdf, reg + 4) << 32;
    return addr;
}

void pci_bar_set(u16 bdf, int index, u64 addr)
{
    u16 reg = (u16)(PCI_BAR0 + 4 * index);
    u32 low = pci_read32(bdf, reg);
    u32 type = low & 1 ? low & 3 : low & 0xf;
    pci_write32(bdf, reg, (u32)addr | type);
    if (index < 5 && is_mem64(low))
        pci_write32(bdf, reg + 4, (u32)(addr >> 32));
}

void pci_bar_move(u16 bdf, int index, u64 addr)
{
    u16 cmd = pci_decode_off(bdf);
    pci_bar_set(bdf, index, addr);
    decode_restore(bdf, cmd);
}

/* -- enumeration ----------------------------------------------------------------------------- */
static void fill(u16 bdf, struct pci_dev *d)
{
    memset(d, 0, sizeof(*d));
    u32 id = pci_read32(bdf, PCI_VENDOR_ID);
    u32 class_rev = pci_read32(bdf, PCI_REVISION);
    d->bdf = bdf;
    d->vendor = (u16)id;
    d->device = (u16)(id >> 16);
    d->revision = (u8)class_rev;
    d->class_code = class_rev >> 8;
    d->header_type = pci_read8(bdf, PCI_HEADER_TYPE);
    d->irq_pin = pci_read8(bdf, PCI_INTERRUPT_PIN);
    d->irq_line = pci_read8(bdf, PCI_INTERRUPT_LINE);
    int nbars = (d->header_type & 0x7f) == 0 ? 6 : (d->header_type & 0x7f) == 1 ? 2 : 0;
    for (int i = 0; i < nbars;)
        i += pci_bar_probe(bdf, i, &d->bar[i]);
}

int pci_scan_bus(u8 bus, struct pci_dev *devs, int max)
{
    int n = 0;
    for (u8 dev = 0; dev < 32; dev++) {
        for (u8 fn = 0; fn < 8; fn++) {
            u16 bdf = PCI_BDF(bus, dev, fn);
            if (pci_read16(bdf, PCI_VENDOR_ID) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            if (n < max)
                fill(bdf, &devs[n]);
            n++;
            if (fn == 0 && !(pci_read8(bdf, PCI_HEADER_TYPE) & 0x80))
                break; /* single-function device */
        }
    }
    return n;
}

const struct pci_dev *pci_find(const struct pci_dev *devs, int n, u16 vendor, u16 device)
{
    for (int i = 0; i < n; i++)
        if (devs[i].vendor == vendor && devs[i].device == device)
            return &devs[i];
    return 0;
}

/* -- capabilities -------------------------------------------------------------------------- */
u8 pci_find_cap(u16 bdf, u8 id)
{
    if (!(pci_read16(bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    u8 ptr = pci_read8(bdf, PCI_CAP_PTR) & 0xfc;
    for (int hops = 0; ptr >= 0x40 && hops < 48; hops++) {
        if (pci_read8(bdf, ptr) == id)
            return ptr;
        ptr = pci_read8(bdf, ptr + 1) & 0xfc;
    }
    return 0;
}

/* -- MSI ------------------------------------------------------------------------------------ */
#define MSI_CTRL_ENABLE 0x0001
#define MSI_CTRL_QSIZE 0x0070
#define MSI_CTRL_64BIT 0x0080

u8 pci_msi_enable(u16 bdf, u8 dest_apic, u8 vector)
{
    u8 cap = pci_find_cap(bdf, PCI_CAP_ID_MSI);
    if (!cap)
        return 0;
    u16 ctrl = pci_read16(bdf, cap + 2);
    pci_write32(bdf, cap + 4, MSI_ADDRESS(dest_apic));
    if (ctrl & MSI_CTRL_64BIT) {
        pci_write32(bdf, cap + 8, 0);
        pci_write16(bdf, cap + 0xc, vector);
    } else {
        pci_write16(bdf, cap + 8, vector);
    }
    pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | PCI_CMD_MASTER);
    pci_write16(bdf, cap + 2, (u16)((ctrl & ~MSI_CTRL_QSIZE) | MSI_CTRL_ENABLE)); /* one vector */
    return cap;
}

void pci_msi_disable(u16 bdf)
{
    u8 cap = pci_find_cap(bdf, PCI_CAP_ID_MSI);
    if (cap)
        pci_write16(bdf, cap + 2, pci_read16(bdf, cap + 2) & (u16)~MSI_CTRL_ENABLE);
}

/* -- MSI-X ---------------------------------------------------------------------------------- */
#define MSIX_CTRL_MASKALL 0x4000
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_ENTRY_CTRL 12

int pci_msix_init(u16 bdf, struct pci_msix *m)
{
    memset(m, 0, sizeof(*m));
    u8 cap = pci_find_cap(bdf, PCI_CAP_ID_MSIX);
    if (!cap)
        return 0;
    m->bdf = bdf;
    m->cap = cap;
    m->entries = (u16)((pci_read16(bdf, cap + 2) & 0x7ff) + 1);
    u32 table = pci_read32(bdf, cap + 4), pba = pci_read32(bdf, cap + 8);
    m->table = pci_bar_addr(bdf, (int)(table & 7)) + (table & ~7u);
    m->pba = pci_bar_addr(bdf, (int)(pba & 7)) + (pba & ~7u);
    return 1;
}

static void msix_ctrl(struct pci_msix *m, u16 bit, int on)
{
    u16 ctrl = pci_read16(m->bdf, m->cap + 2);
    pci_write16(m->bdf, m->cap + 2, on ? ctrl | bit : ctrl & (u16)~bit);
}

void pci_msix_enable(struct pci_msix *m, int on)
{
    if (on)
        pci_write16(m->bdf, PCI_COMMAND, pci_read16(m->bdf, PCI_COMMAND) | PCI_CMD_MASTER);
    msix_ctrl(m, MSIX_CTRL_ENABLE, on);
}

void pci_msix_function_mask(struct pci_msix *m, int masked)
{
    msix_ctrl(m, MSIX_CTRL_MASKALL, masked);
}

void pci_msix_set_entry(struct pci_msix *m, u16 entry, u8 dest_apic, u8 vector)
{
    u64 e = m->table + 16ul * entry;
    mmio_write32(e + 0, MSI_ADDRESS(dest_apic));
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vector);
}

u32 pci_msix_ctrl(struct pci_msix *m, u16 entry)
{
    return mmio_read32(m->table + 16ul * entry + MSIX_ENTRY_CTRL);
}

void pci_msix_mask(struct pci_msix *m, u16 entry, int masked)
{
    u64 a = m->table + 16ul * entry + MSIX_ENTRY_CTRL;
    u32 ctrl = mmio_read32(a);
    mmio_write32(a, masked ? ctrl | 1 : ctrl & ~1u);
}

int pci_msix_pending(struct pci_msix *m, u16 entry)
{
    return (int)((mmio_read64(m->pba + 8ul * (entry / 64)) >> (entry % 64)) & 1);
}

int pci_msix_setup(u16 bdf, struct pci_msix *m, u16 n, u8 dest_apic, u8 vector)
{
    if (!pci_msix_init(bdf, m) || n > m->entries)
        return 0;
    msix_ctrl(m, MSIX_CTRL_MASKALL, 1);
    pci_msix_enable(m, 1);
    for (u16 i = 0; i < n; i++) {
        pci_msix_set_entry(m, i, dest_apic, (u8)(vector + i));
        pci_msix_mask(m, i, 0);
    }
    msix_ctrl(m, MSIX_CTRL_MASKALL, 0);
    return 1;
}
