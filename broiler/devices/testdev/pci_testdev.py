"""QEMU's pci-testdev (1b36:0005), as kvm-unit-tests' ``pci_testdev()`` drives it (issue 5 item 4).

Identity: vendor 0x1B36 (Red Hat), device 0x0005, revision 0, class code 0x00FF00 (base 0x00, subclass 0xff:
what QEMU 7.2 reports), interrupt pin 0. BAR0 is 4 KiB of memory and BAR1 256 bytes of ports; both decode the
same window, byte-wide.

Six tests, ``t = type * 3 + k`` with type 0 = mmio (BAR0) / 1 = portio (BAR1) and k 0 = no-eventfd,
1 = wildcard-eventfd, 2 = datamatch-eventfd. Writing k to +0 through a BAR stops the current test and
starts test type*3+k (its count restarts at 0); k >= 3 leaves no test selected.

The selected test's header, read byte by byte (reads with no test selected, or past the header and
its NUL-terminated name, give 0)::

    +0  u8  test number       +8  u8  data: 0xFA (0xCE for the wildcard tests)
    +1  u8  width (1)         +12 u32 count of writes that reached the device
    +4  u32 offset            +16     name, e.g. "mmio-no-eventfd" ... "portio-datamatch-eventfd"

Offsets: 2048, 2049, 2050 for the mmio tests, 131, 132, 133 for the portio tests (2048 or 128 plus t).

Like QEMU's model (``impl.max_access_size = 1``) every access is handled as a run of byte accesses:
a write of width w at +a is w byte writes at +a..+a+w-1, and a byte write at the test's offset counts
when the test is the wildcard one, or when the byte equals the data value. While a wildcard or
datamatch test is selected, a 1-byte doorbell (no datamatch, or datamatch 0xFA) is registered at
BARn + offset through ``Doorbells`` (it follows BAR moves and goes away when the test is deselected);
KVM swallows those writes, so their count stays 0. If such a write reaches the device anyway (no
ioeventfd available), it rings the same handler instead of counting, as QEMU's own dispatch does.
(Recent QEMU makes the mmio wildcard doorbell any-length when KVM allows it; we keep length 1, as in
the issue and in QEMU without that capability.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ...core.bus import Device
from ...core.state import STATELESS, check_keys, take_int, take_list
from ...errors import SnapshotError
from ...pci import BarDoorbell, BarKind, PciFunction
from ...pci.config import CMD_IO, CMD_MEMORY

TESTDEV_VENDOR = 0x1B36
TESTDEV_DEVICE = 0x0005
TESTDEV_CLASS = 0x00FF00  # QEMU: class_id PCI_CLASS_OTHERS (0xff) -> base 0x00, sub 0xff
MEM_BAR_SIZE = 4096
IO_BAR_SIZE = 256
IOTEST_MEMSIZE = 2048
IOTEST_IOSIZE = 128
IOTEST_DATAMATCH = 0xFA
IOTEST_NOMATCH = 0xCE
TEST_KINDS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
TEST_TYPES = ("mmio", "portio")
HEADER_SIZE = 16


@dataclass(eq=False)
class IoTest:
    number: int
    name: str
    offset: int
    data: int
    match_data: bool
    has_notifier: bool
    count: int = 0

    @property
    def type(self) -> int:
        return self.number // len(TEST_KINDS)

    def header(self) -> bytes:
        return (
            bytes([self.number, 1, 0, 0])
            + self.offset.to_bytes(4, "little")
            + bytes([self.data, 0, 0, 0])
            + self.count.to_bytes(4, "little")
            + self.name.encode()
            + b"\0"
        )


def make_tests() -> list[IoTest]:
    tests = []
    for t in range(len(TEST_TYPES) * len(TEST_KINDS)):
        kind = TEST_KINDS[t % len(TEST_KINDS)]
        kind_type = TEST_TYPES[t // len(TEST_KINDS)]
        size = IOTEST_MEMSIZE if kind_type == "mmio" else IOTEST_IOSIZE
        match = kind != "wildcard-eventfd"
        tests.append(
            IoTest(
                t,
                f"{kind_type}-{kind}",
                size + t,
                IOTEST_DATAMATCH if match else IOTEST_NOMATCH,
                match,
                kind != "no-eventfd",
            )
        )
    return tests


class TestdevWindow(Device):
    """One BAR's view of the test window (type 0 = mmio, 1 = portio)."""

    __test__ = False  # not a pytest class
    state_fields = STATELESS  # the window's state is the function's

    def __init__(self, dev: PciTestDev, test_type: int) -> None:
        super().__init__()
        self.dev = dev
        self.test_type = test_type
        self.name = f"pci-testdev-{TEST_TYPES[test_type]}"

    def read(self, offset: int, size: int) -> int:
        return self.dev.window_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.dev.window_write(self.test_type, offset, size, value)


class PciTestDev(PciFunction):
    """QEMU's pci-testdev."""

    def __init__(self) -> None:
        super().__init__(
            vendor_id=TESTDEV_VENDOR,
            device_id=TESTDEV_DEVICE,
            class_code=TESTDEV_CLASS,
            revision=0,
            name="pci-testdev",
            command=CMD_IO | CMD_MEMORY,
        )
        self.add_bar(0, BarKind.MEM32, MEM_BAR_SIZE, TestdevWindow(self, 0))
        self.add_bar(1, BarKind.IO, IO_BAR_SIZE, TestdevWindow(self, 1))
        self.tests = make_tests()
        self.current = -1
        self.notifier_kicks = 0  # writes caught as doorbells (QEMU's event notifier)
        self._doorbell: BarDoorbell | None = None
        self._lock = threading.RLock()

    # -- snapshot --------------------------------------------------------------------------
    def save_function_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "current": self.current,
                "notifier_kicks": self.notifier_kicks,
                "counts": [test.count for test in self.tests],
            }

    def load_function_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("current", "notifier_kicks", "counts"), self.name)
        current = take_int(saved, "current", self.name, len(self.tests).bit_length(), low=-1)
        if current >= len(self.tests):
            raise SnapshotError(f"{self.name}: test {current} does not exist")
        counts = take_list(saved, "counts", self.name, len(self.tests))
        if len(counts) != len(self.tests):
            raise SnapshotError(f"{self.name}: {len(counts)} test counters saved, not {len(self.tests)}")
        checked = [take_int({"count": c}, "count", self.name, 32) for c in counts]
        with self._lock:
            self._stop()
            if current >= 0:
                self._start(current)  # its doorbell again, where the BAR decodes
            self.notifier_kicks = take_int(saved, "notifier_kicks", self.name)
            for test, count in zip(self.tests, checked, strict=True):
                test.count = count

    # -- test selection --------------------------------------------------------------------
    def _stop(self) -> None:
        if self._doorbell is not None:
            self.remove_doorbell(self._doorbell)
            self._doorbell = None
        self.current = -1

    def _start(self, number: int) -> None:
        test = self.tests[number]
        test.count = 0
        if test.has_notifier:
            self._doorbell = self.add_doorbell(
                test.type, test.offset, 1, self.notified, datamatch=test.data if test.match_data else None
            )
        self.current = number

    def notified(self, kicks: int) -> None:
        """The selected test's doorbell caught ``kicks`` writes (never counted in the header)."""
        with self._lock:
            self.notifier_kicks += kicks

    # -- the window ------------------------------------------------------------------------
    def window_read(self, offset: int, size: int) -> int:
        with self._lock:
            if self.current < 0:
                return 0
            header = self.tests[self.current].header()
        chunk = header[offset : offset + size] if offset < len(header) else b""
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def window_write(self, test_type: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            test = self.tests[self.current] if self.current >= 0 else None
            if (
                test is not None
                and test.has_notifier
                and offset == test.offset
                and size == 1
                and (not test.match_data or value == test.data)
            ):
                self.notified(1)
                return
            for i in range(size):
                self._byte_write(test_type, offset + i, (value >> (8 * i)) & 0xFF)

    def _byte_write(self, test_type: int, addr: int, value: int) -> None:
        if addr == 0:
            self._stop()
            if value < len(TEST_KINDS):
                self._start(test_type * len(TEST_KINDS) + value)
            return
        if self.current < 0:
            return
        test = self.tests[self.current]
        if addr != test.offset or (test.match_data and value != test.data):
            return
        test.count = (test.count + 1) & 0xFFFF_FFFF
