/* virtio-blk acceptance kernel (Multiboot): runs unchanged under broiler (-k) and QEMU (-kernel).
 *
 * Finds the first virtio-blk function on bus 0, brings it up with the toolkit's bare driver
 * (guests/multiboot/lib/virtio.c) and then, printing one line per step and one "ok N ..." line per check:
 *   - reads capacity, seg_max and blk_size from the device configuration;
 *   - writes a known pattern to four sector ranges (sector 0 x8, 16 x2, capacity/2 x4, capacity-1 x1)
 *     as scatter lists (header + several data segments + status), all four in flight, one notify;
 *   - reads them back with a different segmentation, compares, and checks the bytes between segments
 *     were left alone;
 *   - FLUSH (when VIRTIO_BLK_F_FLUSH is offered), GET_ID (prints the serial);
 *   - a read at sector capacity and a write straddling the end must end with status IOERR;
 *   - with ro=1: the device must offer VIRTIO_BLK_F_RO, the pattern must already be on the disk (the
 *     host wrote it), and a write must end with IOERR. Without ro=1 the device must not offer RO.
 * The pattern: 32-bit little-endian word k (0..127) of sector s is
 *   (s * 0x9e3779b1) ^ (k * 0x01000193) ^ 0x62726f69   (mod 2^32)
 * Everything else on the disk is left untouched (the host checks that too).
 *
 * Command-line words (after the kernel path):
 *   transport=modern|legacy|any   which interface of the function to drive (default any: modern if offered)
 *   irq=msix|intx|poll            completion by MSI-X (vector per queue + config), INTx (IOAPIC, level;
 *                                 ISR read-to-clear) or polling the used ring (default msix)
 *   ro=1                          expect a read-only device (see above)
 *   expect_serial=TEXT            GET_ID must return TEXT
 *   expect_sectors=N              capacity must be N
 * Exit (isa-debug-exit, port 0xf4): 0 when every check passed (process status 1), else the number of
 * the first failing check at once (status 2N+1); 0x7f on an unexpected exception or interrupt. Every
 * wait is bounded by a TSC deadline, so a device that never answers fails a check instead of hanging.
 *
 * build-with: lib/lib.c lib/irq.c lib/pci.c multiboot/lib/mb.c multiboot/lib/virtio.c
 */
#include "virtio.h"

#define VECTOR_BASE 0x60
#define SPURIOUS_VECTOR 0xff
#define TIMEOUT_MS 10000
#define SECTOR 512
#define GAP 64                          /* bytes between segments: canaries in the read buffer */
#define CANARY 0xcc

static int check_no;

static void check(int ok, const char *what, u64 got, u64 want)
{
    ++check_no;
    if (ok) {
        printf("ok %d %s\n", check_no, what);
        return;
    }
    printf("FAIL %d %s: got %lx want %lx\n", check_no, what, got, want);
    exit((u32)check_no);                /* at once: the next steps depend on this one */
}
/* A precondition of the step under way: silent when it holds, else it fails as the next check. */
static void must(int ok, const char *what, u64 got)
{
    if (ok)
        return;
    printf("FAIL %d %s: got %lx\n", check_no + 1, what, got);
    exit((u32)check_no + 1);
}
/* A step that reports an error string (0 = done). */
static void check_ok(const char *err, const char *what)
{
    ++check_no;
    if (!err) {
        printf("ok %d %s\n", check_no, what);
        return;
    }
    printf("FAIL %d %s: %s\n", check_no, what, err);
    exit((u32)check_no);
}
#define EXPECT(what, got, want)                                                                   \
    do {                                                                                            \
        u64 g_ = (u64)(got), w_ = (u64)(want);                                                      \
        check(g_ == w_, what, g_, w_);                                                              \
    } while (0)

static u32 pattern(u64 sector, u32 k)
{
    return (u32)(sector * 0x9e3779b1u) ^ (k * 0x01000193u) ^ 0x62726f69u;
}

static struct virtio_dev dev;
static struct virtq *vq;

/* Waits until n requests came back (and, with interrupts, at least one interrupt for them). */
static void complete(int n, u32 irqs_before, const char *what)
{
    u64 deadline = tsc_deadline_ms(TIMEOUT_MS);
    int done = 0;
    while (done < n) {
        int id;
        while ((id = virtq_get(vq, 0)) >= 0)
            done++;
        must(id != -2, "used ring returns valid ids", (u64)id);
        if (done >= n)
            break;
        if (!virtio_wait(&dev, vq, deadline)) {
            printf("%s: timeout: %d of %d done, used idx %d, interrupts %d\n", what, done, n,
                   vq->used->idx, vq->irqs);
            must(0, "requests complete before the deadline", (u64)done);
        }
    }
    if (dev.irq_mode != VIRTIO_IRQ_POLL) {
        while (vq->irqs == irqs_before && !tsc_passed(deadline))
            __asm__ volatile("sti; hlt; cli" ::: "memory");
        must(vq->irqs != irqs_before, "completions raised an interrupt", vq->irqs - irqs_before);
        vq->irqs_seen = vq->irqs;
    }
}

/* One request and its completion; returns the status byte. */
static u8 one(u32 type, u64 sector, void *buf, u32 len, const char *what)
{
    static struct virtio_blk_req hdr;
    static u8 status;
    struct virtq_buf seg = {buf, len};
    u32 irqs = vq->irqs;
    int id = virtio_blk_queue(vq, &hdr, type, sector, &seg, len ? 1 : 0, &status);
    must(id >= 0, "request fits in the ring", (u64)id);
    virtq_kick(&dev, vq);
    complete(1, irqs, what);
    printf("%s: sector=%lu len=%u status=%u\n", what, sector, len, status);
    return status;
}

/* The four ranges and how their data is cut into segments (in sectors), for writing and reading. */
struct range {
    u32 sectors;
    u8 wsegs[4], rsegs[4];
};
static const struct range ranges[4] = {
    {8, {1, 3, 4, 0}, {6, 2, 0, 0}},
    {2, {1, 1, 0, 0}, {2, 0, 0, 0}},
    {4, {1, 1, 1, 1}, {1, 3, 0, 0}},
    {1, {1, 0, 0, 0}, {1, 0, 0, 0}},
};
static u64 range_start[4];

static u8 wbuf[16 * 1024] __attribute__((aligned(4096)));
static u8 rbuf[16 * 1024] __attribute__((aligned(4096)));

/* Queues the four ranges at once (one notify); segments are cut from buf with GAP bytes between. */
static void batch(u32 type, u8 *buf, u32 seg_max)
{
    static struct virtio_blk_req hdrs[4];
    static u8 status[4];
    u8 *p = buf + GAP;
    int segs_total = 0;
    u32 kicks = vq->kicks, irqs = vq->irqs;
    const char *what = type == VIRTIO_BLK_T_OUT ? "write" : "read";
    for (int r = 0; r < 4; r++) {
        struct virtq_buf segs[4];
        const u8 *cut = type == VIRTIO_BLK_T_OUT ? ranges[r].wsegs : ranges[r].rsegs;
        int n = 0;
        u64 s = range_start[r];
        for (int i = 0; i < 4 && cut[i]; i++)
            n++;
        if ((u32)n > seg_max) {           /* the device takes fewer segments: one per request */
            cut = (const u8[4]){(u8)ranges[r].sectors, 0, 0, 0};
            n = 1;
        }
        for (int i = 0; i < n; i++) {
            u32 len = cut[i] * SECTOR;
            segs[i] = (struct virtq_buf){p, len};
            if (type == VIRTIO_BLK_T_OUT) {
                u32 *w = (u32 *)p;
                for (u32 j = 0; j < cut[i]; j++, s++)
                    for (u32 k = 0; k < SECTOR / 4; k++)
                        *w++ = pattern(s, k);
            }
            p += len + GAP;
        }
        segs_total += n;
        int id = virtio_blk_queue(vq, &hdrs[r], type, range_start[r], segs, n, &status[r]);
        must(id >= 0, "request fits in the ring", (u64)id);
    }
    virtq_kick(&dev, vq);
    printf("%s: 4 requests, %d data segments, %u notify, in flight together\n", what, segs_total,
           vq->kicks - kicks);
    must(vq->kicks - kicks <= 1, "one notify for the whole batch", vq->kicks - kicks);
    complete(4, irqs, what);
    for (int r = 0; r < 4; r++) {
        printf("%s: sector=%lu sectors=%u status=%u\n", what, range_start[r], ranges[r].sectors, status[r]);
        EXPECT(type == VIRTIO_BLK_T_OUT ? "write status OK" : "read status OK", status[r], VIRTIO_BLK_S_OK);
    }
}

/* Compares what the read batch brought in with the pattern, and the canaries between segments. */
static void verify_read(u32 seg_max)
{
    u8 *p = rbuf + GAP;
    u32 bad_words = 0, bad_canaries = 0;
    for (int i = 0; i < GAP; i++)
        bad_canaries += rbuf[i] != CANARY;
    for (int r = 0; r < 4; r++) {
        const u8 *cut = ranges[r].rsegs;
        int n = 0;
        u64 s = range_start[r];
        for (int i = 0; i < 4 && cut[i]; i++)
            n++;
        if ((u32)n > seg_max) {
            cut = (const u8[4]){(u8)ranges[r].sectors, 0, 0, 0};
            n = 1;
        }
        for (int i = 0; i < n; i++) {
            const u32 *w = (const u32 *)p;
            for (u32 j = 0; j < cut[i]; j++, s++)
                for (u32 k = 0; k < SECTOR / 4; k++)
                    bad_words += *w++ != pattern(s, k);
            p += cut[i] * SECTOR;
            for (int g = 0; g < GAP; g++)
                bad_canaries += *p++ != CANARY;
        }
    }
    EXPECT("read data matches the pattern (words differing)", bad_words, 0);
    EXPECT("device wrote only into the segments (canaries changed)", bad_canaries, 0);
}

static void spurious(struct irq_frame *f)
{
    (void)f;                            /* no EOI for the spurious vector */
}

static int mode_arg(const char *name, const char *const *names, int n, int dflt)
{
    if (!mb_arg(name))
        return dflt;
    for (int i = 0; i < n; i++)
        if (mb_arg_is(name, names[i]))
            return i;
    printf("bad %s= on the command line\n", name);
    check(0, "command line understood", 0, 1);
    return dflt;
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    static const char *const transports[] = {"any", "modern", "legacy"};
    static const char *const irqs[] = {"poll", "intx", "msix"};
    EXPECT("Multiboot magic", magic, MB_BOOT_MAGIC);
    mb_args(mbi);
    printf("virtio-blk-test: cmdline=%s\n", mb_cmdline());
    int transport = mode_arg("transport", transports, 3, VIRTIO_ANY);
    int irq = mode_arg("irq", irqs, 3, VIRTIO_IRQ_MSIX);
    int ro = (int)mb_arg_num("ro", 0);
    tsc_calibrate();
    idt_init();
    set_handler(SPURIOUS_VECTOR, spurious);
    pic_init(0x20, 0x28);               /* every 8259 line masked: INTx goes through the IOAPIC */
    lapic_init();
    if (irq != VIRTIO_IRQ_POLL)
        mb_tick_start();

    int found = virtio_pci_find(&dev, VIRTIO_ID_BLOCK, transport, 0);
    if (!found)
        printf("virtio-blk: no function with transport=%s on bus 0\n", transports[transport]);
    check(found, "virtio-blk function found", 0, 1);
    printf("virtio-blk: slot=%u device_id=%x transport=%s (offers modern=%d legacy=%d)\n", PCI_BDF_DEV(dev.bdf),
           dev.device_id, transports[dev.transport], dev.has_modern, dev.has_legacy);
    const char *err = virtio_start(&dev, VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_RO |
                                             VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SIZE_MAX);
    check_ok(err, "reset and feature negotiation");
    printf("virtio-blk: features offered=%lx negotiated=%lx\n", dev.offered, dev.features);
    if (dev.transport == VIRTIO_MODERN)
        EXPECT("VERSION_1 negotiated", dev.features & VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1);
    err = virtio_irq_setup(&dev, irq, VECTOR_BASE);
    check_ok(err, "interrupt setup");
    err = virtq_setup(&dev, 0, 256);
    check_ok(err, "queue 0 set up");
    vq = &dev.vq[0];
    virtio_driver_ok(&dev);
    EXPECT("status after DRIVER_OK", virtio_status(&dev),
           VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_DRIVER_OK |
               (dev.transport == VIRTIO_MODERN ? VIRTIO_S_FEATURES_OK : 0));

    u64 capacity = virtio_cfg_read64(&dev, VIRTIO_BLK_CFG_CAPACITY);
    u32 seg_max = dev.features & VIRTIO_BLK_F_SEG_MAX ? virtio_cfg_read(&dev, VIRTIO_BLK_CFG_SEG_MAX, 4) : 0;
    u32 blk_size = dev.features & VIRTIO_BLK_F_BLK_SIZE ? virtio_cfg_read(&dev, VIRTIO_BLK_CFG_BLK_SIZE, 4) : 0;
    printf("virtio-blk: capacity=%lu seg_max=%u blk_size=%u queue_size=%u irq=%s", capacity, seg_max, blk_size,
           vq->size, irqs[irq]);
    if (irq == VIRTIO_IRQ_MSIX)
        printf(" msix_entries=%u config_vector=0 queue_vector=%u", dev.msix.entries, vq->vector);
    if (irq == VIRTIO_IRQ_INTX)
        printf(" intx_line=%u", dev.intx_line);
    printf("\n");
    EXPECT("capacity", capacity, mb_arg_num("expect_sectors", capacity));
    check(capacity >= 64, "capacity >= 64 sectors", capacity, 64);
    if (!seg_max)
        seg_max = 4;                    /* not offered: no limit stated; our requests use at most 4 */
    range_start[0] = 0;
    range_start[1] = 16;
    range_start[2] = capacity / 2;
    range_start[3] = capacity - 1;

    int is_ro = (dev.offered & VIRTIO_BLK_F_RO) != 0;
    printf("virtio-blk: read-only=%d\n", is_ro);
    EXPECT("VIRTIO_BLK_F_RO offered exactly when ro=1", is_ro, ro != 0);

    if (!ro)
        batch(VIRTIO_BLK_T_OUT, wbuf, seg_max);
    memset(rbuf, CANARY, sizeof(rbuf));
    batch(VIRTIO_BLK_T_IN, rbuf, seg_max);
    verify_read(seg_max);

    if (dev.features & VIRTIO_BLK_F_FLUSH)
        EXPECT("FLUSH status OK", one(VIRTIO_BLK_T_FLUSH, 0, 0, 0, "flush"), VIRTIO_BLK_S_OK);
    else
        printf("flush: VIRTIO_BLK_F_FLUSH not offered\n");

    static char serial[VIRTIO_BLK_ID_BYTES + 1];
    EXPECT("GET_ID status OK", one(VIRTIO_BLK_T_GET_ID, 0, serial, VIRTIO_BLK_ID_BYTES, "get-id"),
             VIRTIO_BLK_S_OK);
    printf("virtio-blk: serial=%s\n", serial);
    const char *want = mb_arg("expect_serial");
    if (want) {
        u32 i = 0;
        while (want[i] && want[i] != ' ' && i < VIRTIO_BLK_ID_BYTES && serial[i] == want[i])
            i++;
        check((!want[i] || want[i] == ' ') && (i == VIRTIO_BLK_ID_BYTES || !serial[i]), "serial as expected", i, 0);
    }

    EXPECT("read at sector=capacity: IOERR", one(VIRTIO_BLK_T_IN, capacity, rbuf, SECTOR, "read-past-end"),
             VIRTIO_BLK_S_IOERR);
    memset(wbuf, 0xee, 2 * SECTOR);
    if (!ro)
        EXPECT("write straddling the end: IOERR",
                 one(VIRTIO_BLK_T_OUT, capacity - 1, wbuf, 2 * SECTOR, "write-past-end"), VIRTIO_BLK_S_IOERR);
    else
        EXPECT("write to a read-only device: IOERR", one(VIRTIO_BLK_T_OUT, 0, wbuf, SECTOR, "write-ro"),
                 VIRTIO_BLK_S_IOERR);

    printf("virtio-blk: kicks=%u queue_interrupts=%u config_interrupts=%u spurious=%u\n", vq->kicks, vq->irqs,
           dev.config_irqs, dev.spurious_irqs);
    if (irq == VIRTIO_IRQ_POLL)
        EXPECT("no interrupts while polling", vq->irqs, 0);
    mb_tick_stop();
    virtio_reset(&dev);
    printf("virtio-blk-test: PASSED\n");
    return 0;
}
