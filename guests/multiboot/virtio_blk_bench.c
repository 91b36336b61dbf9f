/* virtio-blk benchmark kernel (Multiboot; issue 14 item 8): runs unchanged under broiler (-k) and QEMU.
 *
 * Finds the first virtio-blk function offering the modern transport, brings it up with the toolkit's bare
 * driver (guests/multiboot/lib/virtio.c) and runs, one after the other, against the whole disk:
 *   randread  4 KiB, queue depth 1 and 32 (random 4 KiB-aligned offsets, xorshift64)
 *   randwrite 4 KiB, queue depth 1 and 32 (THE DISK IS OVERWRITTEN: give it a scratch image); each block
 *             written starts with its sector number (le64) and "bench!!\0", the rest is zeros
 *   seqread   128 KiB (in 4 KiB segments, fewer if seg_max says so), queue depth seq_qd (default 1)
 * Each test stops after `requests` requests or `ms` milliseconds, whichever comes first; time is the TSC,
 * calibrated against PIT channel 2 at start. At queue depth N the kernel keeps N requests in flight: it
 * queues them with one notify, and each time completions come in it re-queues as many and notifies once.
 *
 * Output (one line each; "bench:" lines are the parseable ones, key=value separated by single spaces):
 *   bench: setup transport=modern irq=msix capacity=<sectors> seg_max=<n> queue_size=<n> tsc_hz=<hz>
 *   bench: <test> bs=<bytes> qd=<n> requests=<completed> errors=<n> ns=<elapsed> iops=<int> mbps=<int>.<1 digit>
 *   bench: done
 * where <test> is randread, randwrite or seqread, mbps is 10^6 bytes per second, iops whole requests per
 * second. A test that cannot finish prints "bench: <test> ... FAILED <why>".
 *
 * Command-line words: requests=N (default 1000), ms=N (default 10000), irq=msix|intx|poll (default msix),
 * seq_qd=N (default 1), seed=N, tests=LIST (comma-separated test names with their qd, e.g.
 * "randread1,randread32,randwrite1,randwrite32,seqread"; default all of them).
 * Exit (isa-debug-exit, port 0xf4): 0 (status 1) when every request completed with status OK, 1 when some
 * request failed, 2 on a stall (no completion for 10 s), 3 when the device cannot be set up.
 *
 * build-with: lib/lib.c lib/irq.c lib/pci.c multiboot/lib/mb.c multiboot/lib/virtio.c
 */
#include "virtio.h"

#define VECTOR_BASE 0x60
#define SPURIOUS_VECTOR 0xff
#define STALL_MS 10000
#define MAX_QD 32
#define SEQ_BS (128 * 1024)
#define RAND_BS 4096
#define PAGE 4096

static struct virtio_dev dev;
static struct virtq *vq;
static u32 seg_max;
static u64 capacity;
static u64 rng = 0x9e3779b97f4a7c15UL;

static u64 xorshift(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static u8 buffers[MAX_QD][SEQ_BS] __attribute__((aligned(PAGE)));
static struct virtio_blk_req hdrs[MAX_QD];
static u8 statuses[MAX_QD];
static u8 slot_of[1024];               /* descriptor head -> slot */

struct test {
    const char *name, *key;
    u32 type, bs, qd;
    int random;
};

static u64 next_sector;

static int submit(const struct test *t, u32 slot)
{
    u32 sectors = t->bs / 512;
    u64 sector;
    if (t->random) {
        sector = xorshift() % (capacity / sectors) * sectors;
    } else {
        if (next_sector + sectors > capacity)
            next_sector = 0;
        sector = next_sector;
        next_sector += sectors;
    }
    if (t->type == VIRTIO_BLK_T_OUT) {  /* a stamp the host can find: the sector and "bench!!\0" */
        ((u64 *)buffers[slot])[0] = sector;
        ((u64 *)buffers[slot])[1] = 0x00212168636e6562UL;
    }
    struct virtq_buf segs[32];
    u32 nsegs = t->bs / PAGE;
    if (nsegs > seg_max)
        nsegs = seg_max;
    if (nsegs > 32)
        nsegs = 32;
    u32 seg_len = t->bs / nsegs;
    for (u32 i = 0; i < nsegs; i++)
        segs[i] = (struct virtq_buf){buffers[slot] + i * seg_len, seg_len};
    int id = virtio_blk_queue(vq, &hdrs[slot], t->type, sector, segs, (int)nsegs, &statuses[slot]);
    if (id < 0)
        return 0;
    slot_of[id] = (u8)slot;
    return 1;
}

static u32 exit_code;

static void run(const struct test *t, u64 requests, u64 ms)
{
    u32 qd = t->qd, chain = (t->bs / PAGE < seg_max ? t->bs / PAGE : seg_max) + 2;
    while (qd > 1 && qd * chain > vq->size)
        qd >>= 1;                       /* the ring must hold qd chains */
    u64 issued = 0, done = 0, errors = 0;
    u64 start = rdtsc(), end = start + tsc_hz / 1000 * ms;
    next_sector = 0;
    for (u32 s = 0; s < qd && issued < requests; s++)
        issued += (u64)submit(t, s);
    virtq_kick(&dev, vq);
    u64 deadline = tsc_deadline_ms(STALL_MS);
    const char *why = 0;
    while (done < issued) {
        int id;
        u32 requeued = 0;
        while ((id = virtq_get(vq, 0)) >= 0) {
            u32 slot = slot_of[id];
            done++;
            errors += statuses[slot] != VIRTIO_BLK_S_OK;
            if (issued < requests && !tsc_passed(end)) {
                issued += (u64)submit(t, slot);
                requeued++;
            }
        }
        if (id == -2) {
            why = "bad id in the used ring";
            break;
        }
        if (requeued) {
            virtq_kick(&dev, vq);
            deadline = tsc_deadline_ms(STALL_MS);
        }
        if (done < issued && !virtio_wait(&dev, vq, deadline)) {
            why = "stalled";
            break;
        }
    }
    u64 ticks = rdtsc() - start;
    u64 ns = ticks * 1000 / (tsc_hz / 1000000 ? tsc_hz / 1000000 : 1);
    u64 iops = ns ? done * 1000000000UL / ns : 0, mbps10 = ns ? done * t->bs * 10000UL / ns : 0;
    printf("bench: %s bs=%u qd=%u requests=%lu errors=%lu ns=%lu iops=%lu mbps=%lu.%lu\n", t->name, t->bs, qd, done,
           errors, ns, iops, mbps10 / 10, mbps10 % 10);
    if (why) {
        printf("bench: %s FAILED %s\n", t->name, why);
        exit(2);
    }
    if (errors)
        exit_code = 1;
}

static void spurious(struct irq_frame *f)
{
    (void)f;
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    static const char *const irqs[] = {"poll", "intx", "msix"};
    if (magic != MB_BOOT_MAGIC)
        return 3;
    mb_args(mbi);
    int irq = mb_arg_is("irq", "poll") ? VIRTIO_IRQ_POLL : mb_arg_is("irq", "intx") ? VIRTIO_IRQ_INTX : VIRTIO_IRQ_MSIX;
    u64 requests = mb_arg_num("requests", 1000), ms = mb_arg_num("ms", 10000);
    u32 seq_qd = (u32)mb_arg_num("seq_qd", 1);
    rng ^= mb_arg_num("seed", 0) * 0x2545f4914f6cdd1dUL;
    if (seq_qd < 1 || seq_qd > MAX_QD)
        seq_qd = 1;
    tsc_calibrate();
    idt_init();
    set_handler(SPURIOUS_VECTOR, spurious);
    pic_init(0x20, 0x28);
    lapic_init();
    if (irq != VIRTIO_IRQ_POLL)
        mb_tick_start();
    const char *err = 0;
    if (!virtio_pci_find(&dev, VIRTIO_ID_BLOCK, VIRTIO_MODERN, 0))
        err = "no modern virtio-blk function on bus 0";
    if (!err)
        err = virtio_start(&dev, VIRTIO_BLK_F_SEG_MAX);
    if (!err)
        err = virtio_irq_setup(&dev, irq, VECTOR_BASE);
    if (!err)
        err = virtq_setup(&dev, 0, 256);
    if (err) {
        printf("bench: setup FAILED %s\n", err);
        return 3;
    }
    vq = &dev.vq[0];
    virtio_driver_ok(&dev);
    capacity = virtio_cfg_read64(&dev, VIRTIO_BLK_CFG_CAPACITY);
    seg_max = dev.features & VIRTIO_BLK_F_SEG_MAX ? virtio_cfg_read(&dev, VIRTIO_BLK_CFG_SEG_MAX, 4) : 32;
    if (!seg_max)
        seg_max = 1;
    printf("bench: setup transport=modern irq=%s capacity=%lu seg_max=%u queue_size=%u tsc_hz=%lu\n", irqs[irq],
           capacity, seg_max, vq->size, tsc_hz);
    if (capacity < SEQ_BS / 512) {
        printf("bench: setup FAILED disk smaller than 128 KiB\n");
        return 3;
    }
    const struct test tests[] = {
        {"randread", "randread1", VIRTIO_BLK_T_IN, RAND_BS, 1, 1},
        {"randread", "randread32", VIRTIO_BLK_T_IN, RAND_BS, 32, 1},
        {"randwrite", "randwrite1", VIRTIO_BLK_T_OUT, RAND_BS, 1, 1},
        {"randwrite", "randwrite32", VIRTIO_BLK_T_OUT, RAND_BS, 32, 1},
        {"seqread", "seqread", VIRTIO_BLK_T_IN, SEQ_BS, seq_qd, 0},
    };
    for (u32 i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (mb_list_has(mb_arg("tests"), tests[i].key))
            run(&tests[i], requests, ms);
    mb_tick_stop();
    virtio_reset(&dev);
    printf("bench: done\n");
    return exit_code;
}
