/* broiler's optional compiled exit loop (see broiler/core/vcpu.py, "The compiled fast path").
 *
 * run(fd, run_addr, ring_addr, zones, pio_bus, mmio_bus, counts, drain) -> int
 * drain(ring_addr, pio_bus, mmio_bus) -> int
 * own_time() -> tuple of OWN_BUCKETS counts (see below)
 *
 * Loops KVM_RUN with the GIL released and handles, in C, the decode of the two exits that dominate
 * IO-heavy guests: a single (count == 1) port access of 1, 2 or 4 bytes and an MMIO access of 1, 2,
 * 4 or 8 bytes. The device is still Python: the target comes from the bus's per-address cache dict
 * (``bus.resolve(addr)`` on a miss) and its ``read(addr, size)`` / ``write(addr, size, value)`` is
 * called exactly as the Python loop calls it, so stats, tracing proxies and the unmapped/straddle
 * rules are the same on both paths. Anything else returns to Python, which handles that exit and
 * calls run() again:
 *   >= 0  the exit reason of an exit the Python loop must handle (the kvm_run page still holds it);
 *   < 0   -errno of a failed KVM_RUN (EINTR: a kick; the Python loop looks at why).
 * A coalesced ring with entries (``zones`` non-empty and first != last) is emptied first by calling
 * ``drain()`` (VcpuThread.drain_coalesced: it takes the ring's lock and calls drain() below), then the
 * exit is handled as usual.
 *
 * drain() replays the ring oldest first as ``target.replay(addr, size, value)`` on the entry's bus,
 * the call CoalescedRing.drain makes in Python; the caller holds the ring's lock. It returns the
 * number of entries replayed. An entry is consumed only once its replay returned, as in Python.
 * ``counts`` (a list of ints indexed by exit reason) gets the exits handled here, in batches (see struct loop).
 *
 * The fields are read through linux/kvm.h's struct kvm_run; the Python loop reads the same fields at
 * broiler/kvm/abi.py's RUN_* offsets. run_offsets() returns this build's offsets so a unit test can
 * check that both agree (tests/unit/test_vcpu_dispatch.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <stdatomic.h>
#include <time.h>

/* How many vCPU threads are in their Python work between two KVM_RUNs (holding or about to hold
 * the GIL). A thread back from KVM_RUN while another is busy spins briefly before taking the GIL: the
 * other releases it within about a microsecond, whereas waiting on the GIL's condition variable costs
 * a futex sleep and wake-up, which under contention made two vCPUs slower than one (docs/bench.md). */
static atomic_int python_busy;
#define SPIN_LIMIT_NS 20000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* broiler's own time per exit, sampled: from KVM_RUN's return to the next KVM_RUN call, for one exit in
 * OWN_SAMPLE_EVERY handled here (GIL hand-off, decode, bus lookup, the device's Python, the counters). Two
 * clock reads per sampled exit, none on the others. A histogram (OWN_BUCKET_NS wide buckets, the last one
 * for everything longer), so a reader can take a median that a rare preemption does not move; cumulative
 * over the process: own_time() returns the counts. */
#define OWN_SAMPLE_EVERY 64
#define OWN_BUCKET_NS 25
#define OWN_BUCKETS 400
static atomic_ullong own_hist[OWN_BUCKETS];

static void wait_for_python_work(void)
{
    if (atomic_load_explicit(&python_busy, memory_order_relaxed) == 0)
        return;
    uint64_t give_up = now_ns() + SPIN_LIMIT_NS;
    for (unsigned i = 1; atomic_load_explicit(&python_busy, memory_order_relaxed) > 0; i++) {
        __builtin_ia32_pause();
        if ((i & 63) == 0 && now_ns() > give_up)
            return;
    }
}

static PyObject *str_read, *str_write, *str_replay, *str_cache, *str_resolve;

/* The target of ``addr`` on ``bus`` through ``cache`` (the bus's cache dict), else bus.resolve(addr). */
static PyObject *lookup(PyObject *bus, PyObject *cache, PyObject *addr)
{
    PyObject *target = PyDict_GetItemWithError(cache, addr); /* borrowed */
    if (target)
        return Py_NewRef(target);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallMethodOneArg(bus, str_resolve, addr);
}

static int add_count(PyObject *counts, unsigned reason, unsigned long n)
{
    if (!n || reason >= (unsigned)PyList_GET_SIZE(counts))
        return 0;
    PyObject *old = PyList_GET_ITEM(counts, reason);
    PyObject *add = PyLong_FromUnsignedLong(n);
    PyObject *new = add ? PyNumber_Add(old, add) : NULL;
    Py_XDECREF(add);
    if (!new)
        return -1;
    PyList_SET_ITEM(counts, reason, new);
    Py_DECREF(old);
    return 0;
}

/* target.replay(addr, size, value) for one coalesced entry; ``cache`` is the bus's cache dict. 0 or -1. */
static int bus_replay(PyObject *bus, PyObject *cache, uint64_t addr, uint32_t size, uint64_t v)
{
    PyObject *a = PyLong_FromUnsignedLongLong(addr);
    if (!a)
        return -1;
    PyObject *target = lookup(bus, cache, a);
    PyObject *s = PyLong_FromUnsignedLong(size);
    PyObject *value = PyLong_FromUnsignedLongLong(v);
    PyObject *ret = NULL;
    if (target && s && value) {
        PyObject *args[4] = {target, a, s, value};
        ret = PyObject_VectorcallMethod(str_replay, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(target);
    Py_DECREF(a);
    Py_XDECREF(s);
    Py_XDECREF(value);
    if (!ret)
        return -1;
    Py_DECREF(ret);
    return 0;
}

static PyObject *drain(PyObject *self, PyObject *args)
{
    unsigned long long ring_addr;
    PyObject *pio_bus, *mmio_bus;
    if (!PyArg_ParseTuple(args, "KOO", &ring_addr, &pio_bus, &mmio_bus))
        return NULL;
    volatile struct kvm_coalesced_mmio_ring *ring = (void *)(uintptr_t)ring_addr;
    const uint32_t max = (4096 - sizeof *ring) / sizeof(struct kvm_coalesced_mmio); /* KVM_COALESCED_MMIO_MAX */
    long n = 0;
    uint32_t first = ring->first % max;
    if (ring->last >= max) /* KVM never writes that; without the check the loop would never end */
        return PyLong_FromLong(0);
    if (first == ring->last)
        return PyLong_FromLong(0);
    /* The cache dicts are taken once per drain: a bus clears its dict in place and never replaces it
     * (core/bus.py), so a replay that moves a BAR still leaves these references current. */
    PyObject *pio_cache = PyObject_GetAttr(pio_bus, str_cache);
    PyObject *mmio_cache = pio_cache ? PyObject_GetAttr(mmio_bus, str_cache) : NULL;
    PyObject *result = NULL;
    if (!mmio_cache)
        goto out;
    if (!PyDict_Check(pio_cache) || !PyDict_Check(mmio_cache)) {
        PyErr_SetString(PyExc_TypeError, "a bus's cache must be a dict");
        goto out;
    }
    while (first != ring->last) {
        volatile struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[first];
        uint32_t len = e->len;
        uint64_t v = 0;
        memcpy(&v, (const void *)e->data, len < 8 ? len : 8);
        int pio = e->pio != 0;
        if (bus_replay(pio ? pio_bus : mmio_bus, pio ? pio_cache : mmio_cache, e->phys_addr, len, v) < 0)
            goto out;
        first = (first + 1) % max;
        ring->first = first;
        n++;
    }
    result = PyLong_FromLong(n);
out:
    Py_XDECREF(pio_cache);
    Py_XDECREF(mmio_cache);
    return result;
}

/* A bus as one run() call uses it: its cache dict (taken once: core/bus.py never replaces it, only
 * clears it) and the int object of the last address seen, which a guest driving one register gets again
 * instead of a new int per exit (ints are immutable, so sharing one is safe). */
struct bus_ref {
    PyObject *bus, *cache; /* cache: a new reference, dropped by release_bus() */
    uint64_t addr;
    PyObject *addr_obj;
};

static void release_bus(struct bus_ref *b)
{
    Py_CLEAR(b->cache);
    Py_CLEAR(b->addr_obj);
}

static PyObject *addr_object(struct bus_ref *b, uint64_t addr)
{
    if (b->addr_obj && b->addr == addr)
        return Py_NewRef(b->addr_obj);
    PyObject *obj = PyLong_FromUnsignedLongLong(addr);
    if (!obj)
        return NULL;
    Py_XSETREF(b->addr_obj, Py_NewRef(obj));
    b->addr = addr;
    return obj;
}

/* What one run() call works with. Exits handled here are counted in ``pending`` and added to the Python
 * list ``counts`` every COUNT_FLUSH exits and whenever run() returns (one int addition per batch
 * instead of one per exit; a reader of the live counts sees them at most COUNT_FLUSH exits late). */
#define COUNT_FLUSH 1024
struct loop {
    PyObject *zones, *counts, *drain_ring;
    struct bus_ref pio, mmio;
    unsigned long pending[2], pending_total; /* [0]: KVM_EXIT_IO, [1]: KVM_EXIT_MMIO */
};

/* One access on a bus: data points at the value (little-endian, ``size`` bytes). 0 or -1. */
static int bus_access(struct bus_ref *b, uint64_t addr, unsigned size, int is_write, void *data)
{
    PyObject *a = addr_object(b, addr);
    if (!a)
        return -1;
    PyObject *target = lookup(b->bus, b->cache, a);
    if (!target) {
        Py_DECREF(a);
        return -1;
    }
    PyObject *s = PyLong_FromUnsignedLong(size);
    PyObject *ret = NULL;
    if (is_write) {
        uint64_t v = 0;
        memcpy(&v, data, size);
        PyObject *value = PyLong_FromUnsignedLongLong(v);
        if (value) {
            PyObject *args[4] = {target, a, s, value};
            ret = PyObject_VectorcallMethod(str_write, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(value);
        }
    } else {
        PyObject *args[3] = {target, a, s};
        ret = PyObject_VectorcallMethod(str_read, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (ret) {
            uint64_t v = PyLong_AsUnsignedLongLongMask(ret);
            if (v == (uint64_t)-1 && PyErr_Occurred()) {
                Py_CLEAR(ret);
            } else {
                memcpy(data, &v, size);
            }
        }
    }
    Py_DECREF(target);
    Py_DECREF(a);
    Py_XDECREF(s);
    if (!ret)
        return -1;
    Py_DECREF(ret);
    return 0;
}

static int flush_counts(struct loop *l)
{
    int rc = add_count(l->counts, KVM_EXIT_IO, l->pending[0]) | add_count(l->counts, KVM_EXIT_MMIO, l->pending[1]);
    l->pending[0] = l->pending[1] = l->pending_total = 0;
    return rc;
}

/* One exit, with the GIL held: Py_None to go on, NULL on an exception, else the reason for Python. */
static PyObject *handle_exit(struct kvm_run *r, volatile struct kvm_coalesced_mmio_ring *ring, struct loop *l)
{
    unsigned reason = r->exit_reason;
    if (ring && PyList_GET_SIZE(l->zones) && ring->first != ring->last) { /* older writes go first */
        PyObject *ret = PyObject_CallNoArgs(l->drain_ring);
        if (!ret)
            return NULL;
        Py_DECREF(ret);
    }
    if (reason == KVM_EXIT_IO && r->io.count == 1 && (r->io.size == 1 || r->io.size == 2 || r->io.size == 4)) {
        if (bus_access(&l->pio, r->io.port, r->io.size, r->io.direction == KVM_EXIT_IO_OUT,
                       (char *)r + r->io.data_offset) < 0)
            return NULL;
    } else if (reason == KVM_EXIT_MMIO &&
               (r->mmio.len == 1 || r->mmio.len == 2 || r->mmio.len == 4 || r->mmio.len == 8)) {
        if (bus_access(&l->mmio, r->mmio.phys_addr, r->mmio.len, r->mmio.is_write, r->mmio.data) < 0)
            return NULL;
    } else {
        return PyLong_FromLong(reason);
    }
    l->pending[reason == KVM_EXIT_MMIO]++;
    if (++l->pending_total == COUNT_FLUSH && flush_counts(l) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *run(PyObject *self, PyObject *args)
{
    int fd;
    unsigned long long run_addr, ring_addr;
    struct loop l = {0};
    if (!PyArg_ParseTuple(args, "iKKO!OOO!O", &fd, &run_addr, &ring_addr, &PyList_Type, &l.zones, &l.pio.bus,
                          &l.mmio.bus, &PyList_Type, &l.counts, &l.drain_ring))
        return NULL;
    l.pio.cache = PyObject_GetAttr(l.pio.bus, str_cache);
    l.mmio.cache = PyObject_GetAttr(l.mmio.bus, str_cache);
    if (!l.pio.cache || !l.mmio.cache || !PyDict_Check(l.pio.cache) || !PyDict_Check(l.mmio.cache)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a bus's cache must be a dict");
        release_bus(&l.pio);
        release_bus(&l.mmio);
        return NULL;
    }
    struct kvm_run *r = (struct kvm_run *)(uintptr_t)run_addr;
    volatile struct kvm_coalesced_mmio_ring *ring = (void *)(uintptr_t)ring_addr;
    unsigned tick = 0;
    uint64_t back = 0; /* when the sampled exit came back from KVM_RUN; 0: this exit is not sampled */
    for (;;) {
        int rc, err;
        Py_BEGIN_ALLOW_THREADS
        if (back) {
            uint64_t bucket = (now_ns() - back) / OWN_BUCKET_NS;
            atomic_fetch_add_explicit(&own_hist[bucket < OWN_BUCKETS ? bucket : OWN_BUCKETS - 1], 1,
                                      memory_order_relaxed);
            back = 0;
        }
        rc = ioctl(fd, KVM_RUN, 0);
        err = errno;
        if (++tick == OWN_SAMPLE_EVERY) {
            tick = 0;
            back = now_ns();
        }
        wait_for_python_work();
        Py_END_ALLOW_THREADS
        PyObject *out;
        if (rc < 0) {
            out = PyLong_FromLong(-err);
        } else {
            atomic_fetch_add_explicit(&python_busy, 1, memory_order_relaxed);
            out = handle_exit(r, ring, &l);
            atomic_fetch_sub_explicit(&python_busy, 1, memory_order_relaxed);
        }
        if (out != Py_None) {
            if (!out) { /* keep the device's exception; the counts are added beside it */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                if (flush_counts(&l) < 0)
                    PyErr_Clear();
                PyErr_Restore(type, value, tb);
            } else if (flush_counts(&l) < 0) {
                Py_CLEAR(out);
            }
            release_bus(&l.pio);
            release_bus(&l.mmio);
            return out;
        }
        Py_DECREF(out);
    }
}

static PyObject *own_time(PyObject *self, PyObject *unused)
{
    PyObject *out = PyTuple_New(OWN_BUCKETS);
    for (int i = 0; out && i < OWN_BUCKETS; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(atomic_load(&own_hist[i]));
        if (!n) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, n);
    }
    return out;
}

static PyObject *run_offsets(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}",
                         "RUN_EXIT_REASON", offsetof(struct kvm_run, exit_reason),
                         "RUN_IO_DIRECTION", offsetof(struct kvm_run, io.direction),
                         "RUN_IO_SIZE", offsetof(struct kvm_run, io.size),
                         "RUN_IO_PORT", offsetof(struct kvm_run, io.port),
                         "RUN_IO_COUNT", offsetof(struct kvm_run, io.count),
                         "RUN_IO_DATA_OFFSET", offsetof(struct kvm_run, io.data_offset),
                         "RUN_MMIO_PHYS_ADDR", offsetof(struct kvm_run, mmio.phys_addr),
                         "RUN_MMIO_DATA", offsetof(struct kvm_run, mmio.data),
                         "RUN_MMIO_LEN", offsetof(struct kvm_run, mmio.len),
                         "RUN_MMIO_IS_WRITE", offsetof(struct kvm_run, mmio.is_write));
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, "Run KVM_RUN, handling plain PIO and MMIO exits in C (see the file's comment)."},
    {"drain", drain, METH_VARARGS, "Replay the coalesced ring onto the buses (see the file's comment)."},
    {"own_time", own_time, METH_NOARGS, "Histogram of broiler's own time per exit (see the file's comment)."},
    {"run_offsets", run_offsets, METH_NOARGS, "The struct kvm_run offsets this build reads, by abi.RUN_* name."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "broiler.core._fastexit",
                                    "broiler's optional compiled exit loop", -1, methods};

PyMODINIT_FUNC PyInit__fastexit(void)
{
    str_read = PyUnicode_InternFromString("read");
    str_write = PyUnicode_InternFromString("write");
    str_replay = PyUnicode_InternFromString("replay");
    str_cache = PyUnicode_InternFromString("cache");
    str_resolve = PyUnicode_InternFromString("resolve");
    if (!str_read || !str_write || !str_replay || !str_cache || !str_resolve)
        return NULL;
    return PyModule_Create(&module);
}
