/* A bare virtio-over-PCI driver: modern and legacy transports, split rings, MSI-X / INTx / polling.
 * See virtio.h. Facts from the virtio 1.2 spec, §2.7, §4.1 and §5.2. */
#include "virtio.h"

/* Modern common configuration structure (§4.1.4.3), offsets. */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX_CONFIG 0x10
#define CC_NUM_QUEUES 0x12
#define CC_STATUS 0x14
#define CC_GENERATION 0x15
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_MSIX 0x1a
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOTIFY_OFF 0x1e
#define CC_Q_DESC 0x20
#define CC_Q_DRIVER 0x28
#define CC_Q_DEVICE 0x30

/* Vendor-specific PCI capability (§4.1.4): cfg_type at +3, bar +4, offset +8, length +12; the notify
 * capability adds notify_off_multiplier at +16. */
#define PCI_CAP_ID_VNDR 0x09
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_ISR 3
#define VIRTIO_PCI_CAP_DEVICE 4

/* Legacy interface (§4.1.4.10): IO BAR0 registers. */
#define LG_HOST_FEATURES 0
#define LG_GUEST_FEATURES 4
#define LG_QUEUE_PFN 8
#define LG_QUEUE_NUM 12
#define LG_QUEUE_SEL 14
#define LG_QUEUE_NOTIFY 16
#define LG_STATUS 18
#define LG_ISR 19
#define LG_MSIX_CONFIG 20
#define LG_MSIX_QUEUE 22
#define LG_CONFIG 20                    /* the device config; 24 while MSI-X is enabled */
#define LG_CONFIG_MSIX 24

#define barrier() __asm__ volatile("" ::: "memory")
#define mb() __asm__ volatile("mfence" ::: "memory")

/* -- probe ----------------------------------------------------------------------------------- */
static int modern_caps(struct virtio_dev *d)
{
    u16 bdf = d->bdf;
    if (!(pci_read16(bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    u8 ptr = pci_read8(bdf, PCI_CAP_PTR) & 0xfc;
    u8 found = 0;
    for (int hops = 0; ptr >= 0x40 && hops < 48; hops++) {
        u32 head = pci_read32(bdf, ptr);        /* id, next, cap_len, cfg_type */
        u8 type = (u8)(head >> 24);
        if ((head & 0xff) == PCI_CAP_ID_VNDR && type >= 1 && type <= 4 && !(found & (1 << type))) {
            u8 bar = pci_read8(bdf, ptr + 4);
            u64 base = bar < 6 ? pci_bar_addr(bdf, bar) : 0;
            u32 low = bar < 6 ? pci_read32(bdf, (u16)(PCI_BAR0 + 4 * bar)) : 1;
            if (!(low & 1) && base && base < 0x100000000UL) { /* a memory BAR inside the identity map */
                u64 addr = base + pci_read32(bdf, ptr + 8);
                found |= (u8)(1 << type);
                if (type == VIRTIO_PCI_CAP_COMMON)
                    d->common = addr;
                else if (type == VIRTIO_PCI_CAP_NOTIFY) {
                    d->notify_base = addr;
                    d->notify_mult = pci_read32(bdf, ptr + 16);
                } else if (type == VIRTIO_PCI_CAP_ISR)
                    d->isr = addr;
                else
                    d->devcfg = addr;
            }
        }
        ptr = (u8)(head >> 8) & 0xfc;
    }
    return found == 0x1e;                       /* common, notify, ISR and device config */
}

int virtio_pci_find(struct virtio_dev *d, u16 type, int transport, int nth)
{
    for (u8 slot = 0; slot < 32; slot++) {
        u16 bdf = PCI_BDF(0, slot, 0);
        u32 id = pci_read32(bdf, PCI_VENDOR_ID);
        if ((u16)id != VIRTIO_VENDOR)
            continue;
        u16 dev = (u16)(id >> 16);
        u16 dtype = dev >= 0x1040 && dev <= 0x107f ? dev - 0x1040
                    : dev <= 0x103f                 ? pci_read16(bdf, PCI_SUBSYSTEM_VENDOR + 2)
                                                    : 0xffff;
        if (dtype != type)
            continue;
        memset(d, 0, sizeof(*d));
        d->bdf = bdf;
        d->device_id = dev;
        d->type = type;
        u32 bar0 = pci_read32(bdf, PCI_BAR0);
        d->has_legacy = dev <= 0x103f && (bar0 & 1) && (bar0 & ~3u);
        d->io = (u16)(bar0 & ~3u);
        d->has_modern = (u8)modern_caps(d);
        if (transport == VIRTIO_MODERN ? !d->has_modern
            : transport == VIRTIO_LEGACY ? !d->has_legacy
                                         : !d->has_modern && !d->has_legacy)
            continue;
        if (nth-- > 0)
            continue;
        d->transport = transport == VIRTIO_ANY ? (d->has_modern ? VIRTIO_MODERN : VIRTIO_LEGACY) : (u8)transport;
        for (int q = 0; q < VIRTIO_MAX_QUEUES; q++)
            d->vq[q].vector = VIRTIO_NO_VECTOR;
        return 1;
    }
    return 0;
}

/* -- status and features ---------------------------------------------------------------------- */
static int modern(struct virtio_dev *d) { return d->transport == VIRTIO_MODERN; }

u8 virtio_status(struct virtio_dev *d)
{
    return modern(d) ? mmio_read8(d->common + CC_STATUS) : inb((u16)(d->io + LG_STATUS));
}

void virtio_set_status(struct virtio_dev *d, u8 status)
{
    if (modern(d))
        mmio_write8(d->common + CC_STATUS, status);
    else
        outb((u16)(d->io + LG_STATUS), status);
}

void virtio_reset(struct virtio_dev *d)
{
    virtio_set_status(d, 0);
    u64 deadline = tsc_deadline_ms(1000);
    while (virtio_status(d) && !tsc_passed(deadline)) /* a device may take a while to reset */
        cpu_relax();
}

u16 virtio_num_queues(struct virtio_dev *d)
{
    return modern(d) ? mmio_read16(d->common + CC_NUM_QUEUES) : 0;
}

const char *virtio_start(struct virtio_dev *d, u64 driver_features)
{
    pci_write16(d->bdf, PCI_COMMAND,
                (u16)((pci_read16(d->bdf, PCI_COMMAND) | PCI_CMD_IO | PCI_CMD_MEM | PCI_CMD_MASTER)));
    virtio_reset(d);
    if (virtio_status(d))
        return "device did not reset (status stays non-zero)";
    virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE);
    virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER);
    if (modern(d)) {
        mmio_write32(d->common + CC_DFSELECT, 0);
        u64 lo = mmio_read32(d->common + CC_DF);
        mmio_write32(d->common + CC_DFSELECT, 1);
        d->offered = lo | (u64)mmio_read32(d->common + CC_DF) << 32;
        if (!(d->offered & VIRTIO_F_VERSION_1))
            return "modern device does not offer VIRTIO_F_VERSION_1";
        d->features = d->offered & (driver_features | VIRTIO_F_VERSION_1);
        mmio_write32(d->common + CC_GFSELECT, 0);
        mmio_write32(d->common + CC_GF, (u32)d->features);
        mmio_write32(d->common + CC_GFSELECT, 1);
        mmio_write32(d->common + CC_GF, (u32)(d->features >> 32));
        virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
        if (!(virtio_status(d) & VIRTIO_S_FEATURES_OK)) {
            virtio_set_status(d, VIRTIO_S_FAILED);
            return "device cleared FEATURES_OK";
        }
    } else {
        d->offered = inl((u16)(d->io + LG_HOST_FEATURES));
        d->features = d->offered & driver_features & 0xffffffffUL; /* no FEATURES_OK in legacy */
        outl((u16)(d->io + LG_GUEST_FEATURES), (u32)d->features);
    }
    return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    virtio_set_status(d, (u8)(virtio_status(d) | VIRTIO_S_DRIVER_OK));
}

/* -- device configuration ----------------------------------------------------------------------- */
static u32 cfg_read(struct virtio_dev *d, u32 off, int size)
{
    if (modern(d)) {
        u64 a = d->devcfg + off;
        return size == 1 ? mmio_read8(a) : size == 2 ? mmio_read16(a) : mmio_read32(a);
    }
    int msix = d->msix.cap && (pci_read16(d->bdf, d->msix.cap + 2) & 0x8000);
    u16 p = (u16)(d->io + (msix ? LG_CONFIG_MSIX : LG_CONFIG) + off);
    return size == 1 ? inb(p) : size == 2 ? inw(p) : inl(p);
}

u32 virtio_cfg_read(struct virtio_dev *d, u32 off, int size)
{
    return cfg_read(d, off, size);
}

u64 virtio_cfg_read64(struct virtio_dev *d, u32 off)
{
    for (int tries = 0;; tries++) {
        u8 gen = modern(d) ? mmio_read8(d->common + CC_GENERATION) : 0;
        u64 v = cfg_read(d, off, 4) | (u64)cfg_read(d, off + 4, 4) << 32;
        if (!modern(d) || tries > 8 || gen == mmio_read8(d->common + CC_GENERATION))
            return v;
    }
}

/* -- interrupts ------------------------------------------------------------------------------------ */
static struct virtio_dev *irq_dev;

static void msix_handler(struct irq_frame *f)
{
    struct virtio_dev *d = irq_dev;
    u32 entry = (u32)(f->vector - d->vector_base);
    if (entry == 0)
        d->config_irqs++;
    else if (entry <= VIRTIO_MAX_QUEUES)
        d->vq[entry - 1].irqs++;
    lapic_eoi();
}

static void intx_handler(struct irq_frame *f)
{
    (void)f;
    struct virtio_dev *d = irq_dev;
    /* Reading the ISR acknowledges it and lowers the line (read-to-clear). */
    u8 isr = modern(d) ? mmio_read8(d->isr) : inb((u16)(d->io + LG_ISR));
    if (isr & 1)
        for (int q = 0; q < VIRTIO_MAX_QUEUES; q++)
            d->vq[q].irqs++;
    if (isr & 2)
        d->config_irqs++;
    if (!isr)
        d->spurious_irqs++; /* a shared line, or KVM-PVM's second delivery of a level interrupt */
    lapic_eoi();
}

const char *virtio_irq_setup(struct virtio_dev *d, int mode, u8 vector_base)
{
    d->irq_mode = (u8)mode;
    d->vector_base = vector_base;
    irq_dev = d;
    if (mode == VIRTIO_IRQ_MSIX) {
        if (!pci_msix_init(d->bdf, &d->msix))
            return "no MSI-X capability";
        u16 n = d->msix.entries < 1 + VIRTIO_MAX_QUEUES ? d->msix.entries : 1 + VIRTIO_MAX_QUEUES;
        if (n < 2)
            return "MSI-X table has fewer than 2 entries";
        if (d->msix.table >= 0x100000000UL)
            return "MSI-X table above 4 GiB";
        for (u16 i = 0; i < n; i++)
            set_handler((u8)(vector_base + i), msix_handler);
        pci_msix_setup(d->bdf, &d->msix, n, (u8)lapic_id(), vector_base);
        if (modern(d)) {
            mmio_write16(d->common + CC_MSIX_CONFIG, 0);
            if (mmio_read16(d->common + CC_MSIX_CONFIG) != 0)
                return "device refused MSI-X vector 0 for config changes";
        } else {
            outw((u16)(d->io + LG_MSIX_CONFIG), 0);
            if (inw((u16)(d->io + LG_MSIX_CONFIG)) != 0)
                return "device refused MSI-X vector 0 for config changes";
        }
    } else if (mode == VIRTIO_IRQ_INTX) {
        u8 line = pci_read8(d->bdf, PCI_INTERRUPT_LINE);
        if (!pci_read8(d->bdf, PCI_INTERRUPT_PIN) || line == 0 || line >= 24)
            return "no INTx line";
        d->intx_line = line;
        set_handler(vector_base, intx_handler);
        pci_write16(d->bdf, PCI_COMMAND, pci_read16(d->bdf, PCI_COMMAND) & (u16)~PCI_CMD_INTX_DISABLE);
        ioapic_route(line, vector_base, 1, (u8)lapic_id()); /* PCI INTx: level, active high */
    }
    return 0;
}

/* -- virtqueues ------------------------------------------------------------------------------------ */
static u8 ring_pool[64 * 1024] __attribute__((aligned(4096)));
static u64 ring_used;

/* The legacy layout (used ring on the next 4 KiB boundary) satisfies the modern alignments too. */
static u64 ring_bytes(u16 size, u64 *used_off)
{
    *used_off = ((u64)size * 16 + 6 + 2u * size + 4095) & ~4095UL;
    return *used_off + ((6 + 8u * size + 4095) & ~4095UL);
}

const char *virtq_setup(struct virtio_dev *d, u16 index, u16 max_size)
{
    if (index >= VIRTIO_MAX_QUEUES)
        return "queue index beyond VIRTIO_MAX_QUEUES";
    struct virtq *q = &d->vq[index];
    u16 size;
    if (modern(d)) {
        mmio_write16(d->common + CC_Q_SELECT, index);
        size = mmio_read16(d->common + CC_Q_SIZE);
        if (size && max_size && size > max_size) {
            while (size > max_size)         /* the driver may pick any smaller power of 2 */
                size >>= 1;
        }
    } else {
        outw((u16)(d->io + LG_QUEUE_SEL), index);
        size = inw((u16)(d->io + LG_QUEUE_NUM)); /* legacy: the device's size, take it or leave it */
    }
    if (!size)
        return "queue not available (size 0)";
    if (size & (size - 1))
        return "queue size not a power of 2";
    u64 used_off, bytes = ring_bytes(size, &used_off);
    if (ring_used + bytes > sizeof(ring_pool))
        return "queue too large for the ring pool";
    u8 *mem = ring_pool + ring_used;
    ring_used += bytes;
    memset(mem, 0, bytes);
    q->index = index;
    q->size = size;
    q->desc = (struct vring_desc *)mem;
    q->avail = (struct vring_avail *)(mem + 16ul * size);
    q->used = (volatile struct vring_used *)(mem + used_off);
    for (u16 i = 0; i < size; i++)
        q->desc[i].next = (u16)(i + 1);
    q->free_head = 0;
    q->num_free = size;
    q->avail_idx = q->last_used = 0;
    q->irqs = q->irqs_seen = q->kicks = 0;
    q->avail->flags = d->irq_mode == VIRTIO_IRQ_POLL ? VRING_AVAIL_F_NO_INTERRUPT : 0;
    q->vector = VIRTIO_NO_VECTOR;
    if (d->irq_mode == VIRTIO_IRQ_MSIX) {
        if ((u32)index + 1 >= d->msix.entries)
            return "no MSI-X table entry for this queue";
        q->vector = (u16)(index + 1);
    }
    if (modern(d)) {
        u64 c = d->common;
        mmio_write16(c + CC_Q_SIZE, size);
        if (q->vector != VIRTIO_NO_VECTOR) {
            mmio_write16(c + CC_Q_MSIX, q->vector);
            if (mmio_read16(c + CC_Q_MSIX) != q->vector)
                return "device refused the queue's MSI-X vector";
        }
        mmio_write32(c + CC_Q_DESC, (u32)(u64)q->desc);
        mmio_write32(c + CC_Q_DESC + 4, (u32)((u64)q->desc >> 32));
        mmio_write32(c + CC_Q_DRIVER, (u32)(u64)q->avail);
        mmio_write32(c + CC_Q_DRIVER + 4, (u32)((u64)q->avail >> 32));
        mmio_write32(c + CC_Q_DEVICE, (u32)(u64)q->used);
        mmio_write32(c + CC_Q_DEVICE + 4, (u32)((u64)q->used >> 32));
        q->notify = d->notify_base + (u64)mmio_read16(c + CC_Q_NOTIFY_OFF) * d->notify_mult;
        mmio_write16(c + CC_Q_ENABLE, 1);
    } else {
        if (q->vector != VIRTIO_NO_VECTOR) {
            outw((u16)(d->io + LG_MSIX_QUEUE), q->vector);
            if (inw((u16)(d->io + LG_MSIX_QUEUE)) != q->vector)
                return "device refused the queue's MSI-X vector";
        }
        outl((u16)(d->io + LG_QUEUE_PFN), (u32)((u64)q->desc >> 12));
    }
    return 0;
}

int virtq_add(struct virtq *q, const struct virtq_buf *bufs, int n_out, int n_in)
{
    int n = n_out + n_in;
    if (n <= 0 || n > q->num_free)
        return -1;
    u16 head = q->free_head, i = head, last = head;
    for (int k = 0; k < n; k++) {
        struct vring_desc *dsc = &q->desc[i];
        dsc->addr = (u64)bufs[k].addr;
        dsc->len = bufs[k].len;
        dsc->flags = (u16)((k >= n_out ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
        last = i;
        i = dsc->next;                      /* the free list is linked through next already */
    }
    q->free_head = q->desc[last].next;
    q->num_free = (u16)(q->num_free - n);
    q->avail->ring[q->avail_idx & (q->size - 1)] = head;
    q->avail_idx++;
    return head;
}

void virtq_kick(struct virtio_dev *d, struct virtq *q)
{
    barrier();                              /* ring entries before the index (x86 keeps store order) */
    ((volatile struct vring_avail *)q->avail)->idx = q->avail_idx;
    mb();                                   /* the index before reading used->flags */
    if (q->used->flags & VRING_USED_F_NO_NOTIFY)
        return;
    q->kicks++;
    if (modern(d))
        mmio_write16(q->notify, q->index);
    else
        outw((u16)(d->io + LG_QUEUE_NOTIFY), q->index);
}

int virtq_get(struct virtq *q, u32 *len)
{
    if (q->last_used == q->used->idx)
        return -1;
    barrier();
    volatile struct vring_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
    u32 id = e->id;
    if (len)
        *len = e->len;
    if (id >= q->size)
        return -2;                          /* the device returned a bad id */
    q->last_used++;
    u16 i = (u16)id, n = 1;
    while ((q->desc[i].flags & VRING_DESC_F_NEXT) && n < q->size) {
        i = q->desc[i].next;
        n++;
    }
    q->desc[i].next = q->free_head;
    q->free_head = (u16)id;
    q->num_free = (u16)(q->num_free + n);
    return (int)id;
}

int virtio_wait(struct virtio_dev *d, struct virtq *q, u64 deadline)
{
    for (;;) {
        u32 irqs = q->irqs;
        if (q->last_used != q->used->idx && (d->irq_mode == VIRTIO_IRQ_POLL || irqs != q->irqs_seen)) {
            q->irqs_seen = irqs;
            return 1;
        }
        if (tsc_passed(deadline))
            return 0;
        if (d->irq_mode == VIRTIO_IRQ_POLL)
            cpu_relax();
        else
            __asm__ volatile("sti; hlt; cli" ::: "memory"); /* sti;hlt is atomic: no wake-up is lost */
    }
}

/* -- virtio-blk ------------------------------------------------------------------------------------ */
#define BLK_MAX_SEGS 64

int virtio_blk_queue(struct virtq *q, struct virtio_blk_req *hdr, u32 type, u64 sector,
                     const struct virtq_buf *segs, int nsegs, u8 *status)
{
    struct virtq_buf bufs[BLK_MAX_SEGS + 2];
    if (nsegs < 0 || nsegs > BLK_MAX_SEGS)
        return -1;
    hdr->type = type;
    hdr->reserved = 0;
    hdr->sector = sector;
    *status = 0xff;
    bufs[0] = (struct virtq_buf){hdr, sizeof(*hdr)};
    for (int i = 0; i < nsegs; i++)
        bufs[1 + i] = segs[i];
    bufs[1 + nsegs] = (struct virtq_buf){status, 1};
    int out = type == VIRTIO_BLK_T_OUT ? 1 + nsegs : 1;
    return virtq_add(q, bufs, out, nsegs + 2 - out);
}
