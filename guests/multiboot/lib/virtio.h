/* A bare virtio driver for the Multiboot kernels (virtio 1.2: §2.7 split virtqueues, §4.1 virtio over
 * PCI with its legacy interface, §5.2 block). The same kernel runs under broiler and QEMU.
 *
 *   struct virtio_dev d;
 *   virtio_pci_find(&d, VIRTIO_ID_BLOCK, VIRTIO_MODERN, 0)  bus 0: 1af4:1040+type, or 1000-103f with
 *                                                             subsystem ID = type (legacy/transitional)
 *   virtio_start(&d, features)        reset, ACKNOWLEDGE, DRIVER, negotiate (VERSION_1 on the modern
 *                                     transport), FEATURES_OK and its re-read check
 *   virtio_irq_setup(&d, mode, vec)   MSI-X (entry 0 config -> vec, entry 1+q -> vec+1+q), INTx (IOAPIC
 *                                     pin = interrupt line, level) or polling
 *   virtq_setup(&d, q, max)           rings in guest RAM; MSI-X vector per queue
 *   virtio_driver_ok(&d)
 *   virtq_add(...) x N; virtq_kick(); virtio_wait(); virtq_get()
 *
 * Errors come back as a short string (0 = fine) for the kernel to print. One device per kernel takes
 * interrupts (the handlers find it through a static pointer). Waits are bounded: in the interrupt modes
 * they halt, woken by the device or by mb_tick_start's tick, and give up at a TSC deadline. */
#ifndef BROILER_VIRTIO_H
#define BROILER_VIRTIO_H

#include "mb.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2

/* Device status (§2.1). */
#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER 2
#define VIRTIO_S_DRIVER_OK 4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_NEEDS_RESET 0x40
#define VIRTIO_S_FAILED 0x80

/* Reserved feature bits (§6). */
#define VIRTIO_F_INDIRECT_DESC (1UL << 28)
#define VIRTIO_F_EVENT_IDX (1UL << 29)
#define VIRTIO_F_VERSION_1 (1UL << 32)

#define VIRTIO_NO_VECTOR 0xffff

enum { VIRTIO_ANY = 0, VIRTIO_MODERN = 1, VIRTIO_LEGACY = 2 };   /* transports */
enum { VIRTIO_IRQ_POLL = 0, VIRTIO_IRQ_INTX = 1, VIRTIO_IRQ_MSIX = 2 };

/* Split virtqueue (§2.7). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};
struct vring_avail {
    u16 flags, idx, ring[];
};
struct vring_used_elem {
    u32 id, len;
};
struct vring_used {
    u16 flags, idx;
    struct vring_used_elem ring[];
};

struct virtq {
    u16 index, size;                    /* size 0: not set up */
    struct vring_desc *desc;
    struct vring_avail *avail;
    volatile struct vring_used *used;
    u16 free_head, num_free;
    u16 avail_idx;                      /* ours; published to avail->idx by virtq_kick */
    u16 last_used;
    u16 vector;                         /* MSI-X table entry, or VIRTIO_NO_VECTOR */
    u64 notify;                         /* modern: the doorbell's address */
    volatile u32 irqs;                  /* interrupts taken for this queue */
    u32 irqs_seen;                      /* what virtio_wait has already consumed */
    u32 kicks;                          /* notifications written */
};

struct virtq_buf {
    void *addr;
    u32 len;
};

#define VIRTIO_MAX_QUEUES 4

struct virtio_dev {
    u16 bdf, device_id, type;
    u8 transport;                       /* VIRTIO_MODERN or VIRTIO_LEGACY */
    u8 irq_mode;                        /* VIRTIO_IRQ_* */
    u8 has_modern, has_legacy;          /* what the function offers */
    u8 intx_line, vector_base;
    u64 common, isr, devcfg, notify_base; /* modern: MMIO addresses of the structures */
    u32 notify_mult;
    u16 io;                             /* legacy: IO BAR0 */
    u64 offered, features;              /* the device's features; the negotiated ones */
    struct pci_msix msix;
    volatile u32 config_irqs, spurious_irqs;
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

int virtio_pci_find(struct virtio_dev *d, u16 type, int transport, int nth); /* 1 if found */
const char *virtio_start(struct virtio_dev *d, u64 driver_features);
const char *virtio_irq_setup(struct virtio_dev *d, int mode, u8 vector_base);
const char *virtq_setup(struct virtio_dev *d, u16 index, u16 max_size);
void virtio_driver_ok(struct virtio_dev *d);
u8 virtio_status(struct virtio_dev *d);
void virtio_set_status(struct virtio_dev *d, u8 status);
void virtio_reset(struct virtio_dev *d);
u16 virtio_num_queues(struct virtio_dev *d);          /* modern only; legacy: 0 (unknown) */

/* Device configuration space (the device-specific part), little-endian; 64-bit reads are retried
 * until config_generation is stable (modern). */
u32 virtio_cfg_read(struct virtio_dev *d, u32 off, int size);
u64 virtio_cfg_read64(struct virtio_dev *d, u32 off);

/* Returns the head descriptor (the request's id), -1 when the ring lacks n_out + n_in descriptors.
 * Device-readable buffers first, then device-writable ones. Not visible to the device before
 * virtq_kick. */
int virtq_add(struct virtq *q, const struct virtq_buf *bufs, int n_out, int n_in);
void virtq_kick(struct virtio_dev *d, struct virtq *q);          /* publish avail->idx, notify once */
int virtq_get(struct virtq *q, u32 *len);                        /* next used id, -1 if none */
/* 1 when a used entry is waiting (and, in the interrupt modes, an interrupt came for the queue since
 * the last call), 0 at the deadline. */
int virtio_wait(struct virtio_dev *d, struct virtq *q, u64 deadline);

/* -- virtio-blk (§5.2) ------------------------------------------------------------------------- */
#define VIRTIO_BLK_F_SIZE_MAX (1UL << 1)
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_GEOMETRY (1UL << 4)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define VIRTIO_BLK_F_TOPOLOGY (1UL << 10)

#define VIRTIO_BLK_CFG_CAPACITY 0           /* le64, 512-byte sectors */
#define VIRTIO_BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_CFG_SEG_MAX 12
#define VIRTIO_BLK_CFG_BLK_SIZE 20

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_ID_BYTES 20

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

struct virtio_blk_req {
    u32 type, reserved;
    u64 sector;
};

/* One request: header, the data segments (device-readable for T_OUT, device-writable otherwise),
 * one status byte. *status is set to 0xff first so an unanswered request is visible. Returns the id
 * or -1 (ring full). */
int virtio_blk_queue(struct virtq *q, struct virtio_blk_req *hdr, u32 type, u64 sector,
                     const struct virtq_buf *segs, int nsegs, u8 *status);

#endif
