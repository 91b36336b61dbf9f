/* An experiment, not part of broiler: what the smallest compiled fast path would buy.
 *
 * A CPython extension whose loop does KVM_RUN (GIL released), decodes the exit in C and calls the
 * device's Python ``write(offset, size, value)`` / ``read(offset, size)`` directly; only the bench's
 * control port goes back to Python code of its own. One PIO and one MMIO device, no stats: the least
 * Python a sync exit can cost. `broiler bench --breakdown` builds it when Python's headers are
 * there (step "compiled") and skips it otherwise.
 *
 *     loop(fd, run_addr, ctrl_port, control, pio_base, pio_size, pio_dev, mmio_base, mmio_size, mmio_dev)
 *     -> None once control(0) returns False
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

static PyObject *loop(PyObject *self, PyObject *args)
{
    int fd, ctrl;
    unsigned long long run_addr, pio_base, pio_size, mmio_base, mmio_size;
    PyObject *control, *pio_dev, *mmio_dev;
    if (!PyArg_ParseTuple(args, "iKiOKKOKKO", &fd, &run_addr, &ctrl, &control, &pio_base, &pio_size, &pio_dev,
                          &mmio_base, &mmio_size, &mmio_dev))
        return NULL;
    struct kvm_run *run = (struct kvm_run *)(uintptr_t)run_addr;
    PyObject *pw = PyObject_GetAttrString(pio_dev, "write"), *pr = PyObject_GetAttrString(pio_dev, "read");
    PyObject *mw = PyObject_GetAttrString(mmio_dev, "write"), *mr = PyObject_GetAttrString(mmio_dev, "read");
    PyObject *zero = PyLong_FromLong(0);
    PyObject *result = NULL;
    if (!pw || !pr || !mw || !mr)
        goto out;
    for (;;) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = ioctl(fd, KVM_RUN, 0);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            PyErr_SetFromErrno(PyExc_OSError);
            goto out;
        }
        PyObject *ret = NULL;
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == ctrl) {
            ret = PyObject_CallOneArg(control, zero);
            if (!ret)
                goto out;
            int go_on = PyObject_IsTrue(ret);
            Py_DECREF(ret);
            if (!go_on)
                break;
            continue;
        }
        if (run->exit_reason == KVM_EXIT_IO && run->io.port >= pio_base && run->io.port < pio_base + pio_size
            && run->io.count == 1 && run->io.size == 4) {
            uint32_t *data = (uint32_t *)((char *)run + run->io.data_offset);
            PyObject *a[3] = {PyLong_FromUnsignedLong(run->io.port - pio_base), PyLong_FromLong(4), NULL};
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                a[2] = PyLong_FromUnsignedLong(*data);
                ret = PyObject_Vectorcall(pw, a, 3, NULL);
            } else {
                ret = PyObject_Vectorcall(pr, a, 2, NULL);
                if (ret)
                    *data = (uint32_t)PyLong_AsUnsignedLongMask(ret);
            }
            Py_XDECREF(a[0]), Py_XDECREF(a[1]), Py_XDECREF(a[2]);
        } else if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr >= mmio_base
                   && run->mmio.phys_addr < mmio_base + mmio_size && run->mmio.len == 4) {
            uint32_t *data = (uint32_t *)run->mmio.data;
            PyObject *a[3] = {PyLong_FromUnsignedLongLong(run->mmio.phys_addr - mmio_base), PyLong_FromLong(4), NULL};
            if (run->mmio.is_write) {
                a[2] = PyLong_FromUnsignedLong(*data);
                ret = PyObject_Vectorcall(mw, a, 3, NULL);
            } else {
                ret = PyObject_Vectorcall(mr, a, 2, NULL);
                if (ret)
                    *data = (uint32_t)PyLong_AsUnsignedLongMask(ret);
            }
            Py_XDECREF(a[0]), Py_XDECREF(a[1]), Py_XDECREF(a[2]);
        } else {
            PyErr_Format(PyExc_RuntimeError, "fastpath: unexpected exit %u", run->exit_reason);
            goto out;
        }
        if (!ret)
            goto out;
        Py_DECREF(ret);
    }
    result = Py_NewRef(Py_None);
out:
    Py_XDECREF(pw), Py_XDECREF(pr), Py_XDECREF(mw), Py_XDECREF(mr), Py_XDECREF(zero);
    return result;
}

static PyMethodDef methods[] = {{"loop", loop, METH_VARARGS, "the compiled exit loop (bench experiment)"},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "broiler_fastpath", NULL, -1, methods};
PyMODINIT_FUNC PyInit_broiler_fastpath(void) { return PyModule_Create(&module); }
