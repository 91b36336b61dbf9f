/* The C floor for `broiler bench`: the least a VMM can do per exit on this host.
 *
 * It runs the same guest (guests/bench_io.c) in the same flat64 environment as broiler, and handles
 * exits with nothing beyond what they need: OUT and MMIO writes are ignored, IN and MMIO reads get
 * zeros, the coalesced ring is emptied, a doorbell thread sets the guest's flag. Whatever broiler
 * costs above this per guest operation is broiler's (Python's) doing.
 *
 * Guest memory is not built here. broiler's own flat64 loader writes the GDT, page tables and image
 * into a memfd (broiler/bench/floor.py); this program maps that memfd privately as guest RAM, so the
 * two VMMs start from byte-identical memory and only the vCPU registers are set here (the segment
 * setup mirrors Machine.set_long_mode; the control register values come from broiler's loader).
 *
 * Built by `broiler bench` with the machine's cc into a temporary directory: cc -O2 -pthread.
 * Configuration arrives on stdin, one directive a line (numbers in C syntax):
 *
 *     mem_fd FD                 memfd with guest RAM: [0, min(SIZE, 3G)) then the rest for 4 GiB up
 *     mem SIZE
 *     state CR0 CR3 CR4 EFER GDT_BASE GDT_LIMIT RIP RSP RSP_STEP   vCPU k: RSP - k*RSP_STEP, RDI = k
 *     cpus N
 *     ctrl PORT                 the guest's batch-control port
 *     params ADDR STRIDE        vCPU k's parameter block is at ADDR + k*STRIDE (see guests/bench_io.c)
 *     ioeventfd pio|mmio ADDR LEN [reader]   an ioeventfd nobody reads (the kernel completes the write);
 *                               with "reader", a thread reads every kick, as a VMM's handler would
 *     coalesced ADDR SIZE       a coalesced MMIO zone, drained on every exit
 *     doorbell PORT             an ioeventfd whose reader thread sets vCPU 0's flag (ping-pong)
 *     batch OP ADDR N           one batch, in order, for every vCPU
 *     clock cpu                 batch times are each vCPU thread's CPU time, not wall time
 *
 * The same file also builds as a shared library (-shared -fPIC -DFLOOR_LIBRARY; broiler/bench/steps.py):
 * floor_run(config, out, out_len, hooks) runs this very loop inside the calling (Python) process, with
 * optional hooks around each vCPU thread and each KVM_RUN, so the bench can add one ingredient of a
 * Python VMM at a time (the GIL released and re-taken per exit, ...) without a second copy of the loop.
 * In that mode the loop's file descriptors and mappings are released when it returns.
 *
 * Output: one line of JSON on stdout,
 *     {"startup_ns": {...}, "batches_ns": [[cpu0, cpu1, ...], ...], "exits": N}
 * where batches_ns[i][k] is the time from the release of batch i (all vCPUs leave a barrier
 * together) to vCPU k's next control exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 8
#define MAX_BATCHES 4096
#define LOW_RAM_LIMIT 0xC0000000ULL
#define HIGH_RAM_START 0x100000000ULL
/* Parameter block (guests/bench_io.c): op u32 @0, n u64 @8, addr u64 @16, flag u32 @24. */
#define P_OP 0
#define P_N 8
#define P_ADDR 16
#define P_FLAG 24

struct batch { uint32_t op; uint64_t addr, n; };

/* What the library mode may run around the loop (each may be NULL): enter/leave once per vCPU thread
 * (e.g. PyGILState_Ensure/Release), before_run/after_run around every KVM_RUN (e.g.
 * PyEval_SaveThread/RestoreThread: exactly what Py_BEGIN/END_ALLOW_THREADS do in broiler's loop). */
struct floor_hooks {
    intptr_t (*enter)(void);
    void (*leave)(intptr_t);
    intptr_t (*before_run)(void);
    void (*after_run)(intptr_t);
};
static const struct floor_hooks no_hooks;

static struct {
    int mem_fd, cpus, coalesced_page;
    uint64_t mem, ctrl, params, stride;
    uint64_t cr0, cr3, cr4, efer, gdt_base, gdt_limit, rip, rsp, rsp_step;
    uint64_t doorbell;
    int nbatch, nzone;
    clockid_t batch_clock;
    struct batch batch[MAX_BATCHES];
    struct { int kind, reader; uint64_t addr, size; } zone[16]; /* kind: 0 ioeventfd mmio, 1 pio, 2 coalesced */
    pthread_t reader[16];
    volatile int stop_readers;
    int zone_fd[16];
    uint8_t *ram;
    int vm, vcpu_fd[MAX_CPUS];
    struct kvm_run *run[MAX_CPUS];
    pthread_barrier_t barrier;
    uint64_t t_start[MAX_CPUS];
    uint64_t times[MAX_BATCHES][MAX_CPUS];
    uint64_t exits[MAX_CPUS];
    uint64_t first_exit;
    const struct floor_hooks *hooks;
} g;

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int xioctl(int fd, unsigned long req, unsigned long arg, const char *what)
{
    int r = ioctl(fd, req, arg);
    if (r < 0)
        die(what);
    return r;
}

static void ioeventfd(int efd, uint64_t addr, uint32_t len, int pio)
{
    struct kvm_ioeventfd io = {.addr = addr, .len = len, .fd = efd,
                               .flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0};
    xioctl(g.vm, KVM_IOEVENTFD, (unsigned long)&io, "KVM_IOEVENTFD");
}

/* Reads every kick of one ioeventfd and does nothing with it: the cost a consumer adds to the vCPU. */
static void *reader_thread(void *arg)
{
    int efd = (int)(intptr_t)arg;
    uint64_t kicks;
    while (!g.stop_readers)
        if (read(efd, &kicks, sizeof kicks) < 0 && errno != EINTR)
            break;
    return NULL;
}

static void *doorbell_thread(void *arg)
{
    int efd = (int)(intptr_t)arg;
    volatile uint32_t *flag = (volatile uint32_t *)(g.ram + g.params + P_FLAG);
    uint64_t kicks;
    for (;;) {
        if (read(efd, &kicks, sizeof kicks) == sizeof kicks)
            *flag = 1;
    }
    return NULL;
}

static void read_config(FILE *in)
{
    char line[256], word[32], kind[8];
    unsigned long long a, b, c;
    while (fgets(line, sizeof line, in)) {
        if (sscanf(line, "%31s", word) != 1)
            continue;
        if (!strcmp(word, "mem_fd"))
            g.mem_fd = (int)strtol(line + 7, NULL, 0);
        else if (!strcmp(word, "mem"))
            g.mem = strtoull(line + 4, NULL, 0);
        else if (!strcmp(word, "cpus"))
            g.cpus = (int)strtol(line + 5, NULL, 0);
        else if (!strcmp(word, "ctrl"))
            g.ctrl = strtoull(line + 5, NULL, 0);
        else if (!strcmp(word, "state")) {
            char *p = line + 6;
            uint64_t *v[] = {&g.cr0, &g.cr3, &g.cr4, &g.efer, &g.gdt_base, &g.gdt_limit, &g.rip, &g.rsp,
                             &g.rsp_step};
            for (unsigned i = 0; i < sizeof v / sizeof v[0]; i++)
                *v[i] = strtoull(p, &p, 0);
        } else if (!strcmp(word, "params") && sscanf(line, "%*s %lli %lli", &a, &b) == 2) {
            g.params = a;
            g.stride = b;
        } else if (g.nzone < 16 && !strcmp(word, "ioeventfd") &&
                   sscanf(line, "%*s %7s %lli %lli", kind, &a, &b) == 3) {
            g.zone[g.nzone].kind = !strcmp(kind, "pio");
            g.zone[g.nzone].reader = strstr(line, " reader") != NULL;
            g.zone[g.nzone].addr = a;
            g.zone[g.nzone++].size = b;
        } else if (g.nzone < 16 && !strcmp(word, "coalesced") && sscanf(line, "%*s %lli %lli", &a, &b) == 2) {
            g.zone[g.nzone].kind = 2;
            g.zone[g.nzone].addr = a;
            g.zone[g.nzone++].size = b;
        } else if (!strcmp(word, "clock") && strstr(line, " cpu")) {
            g.batch_clock = CLOCK_THREAD_CPUTIME_ID;
        } else if (!strcmp(word, "doorbell") && sscanf(line, "%*s %lli", &a) == 1) {
            g.doorbell = a;
        } else if (!strcmp(word, "batch") && sscanf(line, "%*s %lli %lli %lli", &a, &b, &c) == 3) {
            if (g.nbatch == MAX_BATCHES) {
                fprintf(stderr, "floor: more than %d batches\n", MAX_BATCHES);
                exit(2);
            }
            g.batch[g.nbatch++] = (struct batch){(uint32_t)a, b, c};
        } else {
            fprintf(stderr, "floor: bad directive: %s", line);
            exit(2);
        }
    }
}

static void set_long_mode(int fd, int k)
{
    struct kvm_sregs s;
    xioctl(fd, KVM_GET_SREGS, (unsigned long)&s, "KVM_GET_SREGS");
    struct kvm_segment code = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x08, .type = 11, .present = 1,
                               .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
    struct kvm_segment data = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x10, .type = 3, .present = 1,
                               .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr0 = g.cr0, s.cr3 = g.cr3, s.cr4 = g.cr4, s.efer = g.efer;
    s.gdt.base = g.gdt_base, s.gdt.limit = (uint16_t)g.gdt_limit;
    s.idt.base = 0, s.idt.limit = 0;
    xioctl(fd, KVM_SET_SREGS, (unsigned long)&s, "KVM_SET_SREGS");
    struct kvm_regs r = {.rip = g.rip, .rsp = g.rsp - (uint64_t)k * g.rsp_step, .rflags = 2, .rdi = (uint64_t)k};
    xioctl(fd, KVM_SET_REGS, (unsigned long)&r, "KVM_SET_REGS");
    if (k > 0) { /* APs wait for INIT/SIPI under the in-kernel LAPIC: start them directly. */
        struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
        xioctl(fd, KVM_SET_MP_STATE, (unsigned long)&mp, "KVM_SET_MP_STATE");
    }
}

/* A batch boundary: record the finished batch, line up with the other vCPUs, hand out the next. */
static int control(int k, int *idx)
{
    uint64_t t = clock_ns(g.batch_clock);
    if (*idx > 0)
        g.times[*idx - 1][k] = t - g.t_start[k];
    else if (k == 0)
        g.first_exit = now_ns();
    pthread_barrier_wait(&g.barrier);
    if (*idx >= g.nbatch)
        return 0;
    uint8_t *p = g.ram + g.params + (uint64_t)k * g.stride;
    *(volatile uint64_t *)(p + P_N) = g.batch[*idx].n;
    *(volatile uint64_t *)(p + P_ADDR) = g.batch[*idx].addr;
    *(volatile uint32_t *)(p + P_OP) = g.batch[*idx].op;
    (*idx)++;
    g.t_start[k] = clock_ns(g.batch_clock);
    return 1;
}

static void *vcpu_thread(void *arg)
{
    int k = (int)(intptr_t)arg, fd = g.vcpu_fd[k], idx = 0;
    struct kvm_run *run = g.run[k];
    struct kvm_coalesced_mmio_ring *ring =
        g.coalesced_page > 0 ? (void *)((uint8_t *)run + g.coalesced_page * 4096) : NULL;
    const uint32_t ring_max = (4096 - sizeof *ring) / sizeof(struct kvm_coalesced_mmio);
    volatile uint64_t sink = 0;
    const struct floor_hooks *h = g.hooks;
    intptr_t entered = h->enter ? h->enter() : 0;
    for (;;) {
        intptr_t saved = h->before_run ? h->before_run() : 0;
        int rc = ioctl(fd, KVM_RUN, 0);
        int err = errno;
        if (h->after_run)
            h->after_run(saved);
        if (rc < 0) {
            if (err == EINTR || err == EAGAIN)
                continue;
            errno = err;
            die("KVM_RUN");
        }
        g.exits[k]++;
        if (ring) /* the ring is per VM; the bench only uses it with one vCPU */
            while (ring->first != ring->last) {
                sink += ring->coalesced_mmio[ring->first].data[0];
                ring->first = (ring->first + 1) % ring_max;
            }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.port == g.ctrl) {
                if (!control(k, &idx)) {
                    if (h->leave)
                        h->leave(entered);
                    return NULL;
                }
            } else if (run->io.direction == KVM_EXIT_IO_IN) {
                memset((uint8_t *)run + run->io.data_offset, 0, (size_t)run->io.size * run->io.count);
            }
            break;
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0, sizeof run->mmio.data);
            break;
        default:
            fprintf(stderr, "floor: vCPU %d: unexpected exit reason %u\n", k, run->exit_reason);
            exit(3);
        }
    }
}

static int floor_main(FILE *in, FILE *out, const struct floor_hooks *hooks)
{
    memset(&g, 0, sizeof g);
    g.batch_clock = CLOCK_MONOTONIC;
    g.hooks = hooks;
    read_config(in);
    if (g.cpus < 1 || g.cpus > MAX_CPUS || !g.mem) {
        fprintf(stderr, "floor: need mem and 1..%d cpus\n", MAX_CPUS);
        return 2;
    }
#ifdef FLOOR_LIBRARY
    if (g.doorbell) { /* its reader thread never ends: fine for a process, a leak in a library */
        fprintf(stderr, "floor: the library mode runs no doorbell\n");
        return 2;
    }
#endif
    uint64_t t0 = now_ns(); /* start-up: from opening /dev/kvm to the guest's first exit */
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    g.vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0) {
        uint64_t ident = 0xFFFBC000;
        xioctl(g.vm, KVM_SET_IDENTITY_MAP_ADDR, (unsigned long)&ident, "KVM_SET_IDENTITY_MAP_ADDR");
        xioctl(g.vm, KVM_SET_TSS_ADDR, 0xFFFBD000, "KVM_SET_TSS_ADDR");
    }
    xioctl(g.vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP"); /* as broiler: in-kernel irqchip + PIT */
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    xioctl(g.vm, KVM_CREATE_PIT2, (unsigned long)&pit, "KVM_CREATE_PIT2");
    uint64_t t_vm = now_ns();

    g.ram = mmap(NULL, g.mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, g.mem_fd, 0);
    if (g.ram == MAP_FAILED)
        die("mmap guest RAM");
    uint64_t low = g.mem < LOW_RAM_LIMIT ? g.mem : LOW_RAM_LIMIT;
    struct kvm_userspace_memory_region slot = {.slot = 0, .guest_phys_addr = 0, .memory_size = low,
                                               .userspace_addr = (uint64_t)g.ram};
    xioctl(g.vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&slot, "KVM_SET_USER_MEMORY_REGION");
    if (g.mem > low) {
        slot = (struct kvm_userspace_memory_region){.slot = 1, .guest_phys_addr = HIGH_RAM_START,
                                                    .memory_size = g.mem - low,
                                                    .userspace_addr = (uint64_t)g.ram + low};
        xioctl(g.vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&slot, "KVM_SET_USER_MEMORY_REGION");
    }
    uint64_t t_mem = now_ns();

    for (int i = 0; i < g.nzone; i++) {
        if (g.zone[i].kind == 2) {
            struct kvm_coalesced_mmio_zone z = {.addr = g.zone[i].addr, .size = (uint32_t)g.zone[i].size};
            xioctl(g.vm, KVM_REGISTER_COALESCED_MMIO, (unsigned long)&z, "KVM_REGISTER_COALESCED_MMIO");
        } else {
            int efd = eventfd(0, EFD_CLOEXEC);
            if (efd < 0)
                die("eventfd");
            ioeventfd(efd, g.zone[i].addr, (uint32_t)g.zone[i].size, g.zone[i].kind);
            g.zone_fd[i] = efd;
            if (g.zone[i].reader && pthread_create(&g.reader[i], NULL, reader_thread, (void *)(intptr_t)efd))
                die("pthread_create");
        }
    }
    if (g.doorbell) {
        int efd = eventfd(0, EFD_CLOEXEC);
        if (efd < 0)
            die("eventfd");
        ioeventfd(efd, g.doorbell, 4, 1);
        pthread_t t;
        if (pthread_create(&t, NULL, doorbell_thread, (void *)(intptr_t)efd))
            die("pthread_create");
        pthread_detach(t);
    }
    int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    g.coalesced_page = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_MMIO);
    for (int k = 0; k < g.cpus; k++) {
        g.vcpu_fd[k] = xioctl(g.vm, KVM_CREATE_VCPU, (unsigned long)k, "KVM_CREATE_VCPU");
        g.run[k] = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, g.vcpu_fd[k], 0);
        if (g.run[k] == MAP_FAILED)
            die("mmap kvm_run");
        set_long_mode(g.vcpu_fd[k], k);
    }
    uint64_t t_vcpu = now_ns();

    pthread_barrier_init(&g.barrier, NULL, (unsigned)g.cpus);
    pthread_t th[MAX_CPUS];
    for (int k = 0; k < g.cpus; k++)
        if (pthread_create(&th[k], NULL, vcpu_thread, (void *)(intptr_t)k))
            die("pthread_create");
    uint64_t exits = 0;
    for (int k = 0; k < g.cpus; k++) {
        pthread_join(th[k], NULL);
        exits += g.exits[k];
    }

    fprintf(out, "{\"startup_ns\": {\"vm\": %llu, \"memory\": %llu, \"vcpus\": %llu, \"first_exit\": %llu, "
           "\"total\": %llu}, \"exits\": %llu, \"batches_ns\": [",
           (unsigned long long)(t_vm - t0), (unsigned long long)(t_mem - t_vm),
           (unsigned long long)(t_vcpu - t_mem), (unsigned long long)(g.first_exit - t_vcpu),
           (unsigned long long)(g.first_exit - t0), (unsigned long long)exits);
    for (int i = 0; i < g.nbatch; i++) {
        fprintf(out, "%s[", i ? ", " : "");
        for (int k = 0; k < g.cpus; k++)
            fprintf(out, "%s%llu", k ? ", " : "", (unsigned long long)g.times[i][k]);
        fprintf(out, "]");
    }
    fprintf(out, "]}\n");
    /* A process would just exit; the library mode must give back what it took. */
    pthread_barrier_destroy(&g.barrier);
    for (int k = 0; k < g.cpus; k++) {
        munmap(g.run[k], (size_t)run_size);
        close(g.vcpu_fd[k]);
    }
    g.stop_readers = 1;
    for (int i = 0; i < g.nzone; i++) {
        if (g.zone[i].reader) {
            uint64_t one = 1;
            if (write(g.zone_fd[i], &one, sizeof one) == sizeof one)
                pthread_join(g.reader[i], NULL);
        }
        if (g.zone_fd[i] > 0)
            close(g.zone_fd[i]);
    }
    munmap(g.ram, g.mem);
    close(g.vm);
    close(kvm);
    return 0;
}

#ifdef FLOOR_LIBRARY
/* config: the directives above; out: the JSON line (NUL-terminated if it fits). 0 on success. */
int floor_run(const char *config, char *out, size_t out_len, const struct floor_hooks *hooks)
{
    FILE *in = fmemopen((void *)config, strlen(config), "r");
    FILE *o = fmemopen(out, out_len, "w");
    if (!in || !o)
        die("fmemopen");
    int rc = floor_main(in, o, hooks ? hooks : &no_hooks);
    fclose(in);
    fclose(o);
    return rc;
}
#else
int main(void)
{
    return floor_main(stdin, stdout, &no_hooks);
}
#endif
