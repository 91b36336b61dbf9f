"""A PCI function with one MMIO BAR and MSI: the guest writes INPUT, then GO; the device answers RESULT
= 2 * INPUT and signals MSI vector 0 as its completion.

BAR0 (4 KiB, memory): INPUT +0 (RW), RESULT +4 (RO), GO +8 (W), DONE +0xC (RO, completions so far).
"""

from broiler.api import BarKind, Device, DeviceContext, PciFunction, all_ones

INPUT, RESULT, GO, DONE = 0x0, 0x4, 0x8, 0xC


class DoublerRegisters(Device):
    def __init__(self, fn: "PciDoubler") -> None:
        super().__init__()
        self.fn = fn
        self.input = self.result = self.done = 0

    def read(self, offset: int, size: int) -> int:
        registers = {INPUT: self.input, RESULT: self.result, DONE: self.done}
        if size != 4 or offset not in registers:
            self.guest_error(f"{size}-byte read at {offset:#x}")  # counted, answered like nothing there
            return all_ones(size)
        return registers[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 4 and offset == INPUT:
            self.input = value
        elif size == 4 and offset == GO:
            self.result = (2 * self.input) & 0xFFFFFFFF
            self.done += 1
            self.fn.complete()
        else:
            self.guest_error(f"{size}-byte write at {offset:#x}")


class PciDoubler(PciFunction):
    name = "pci-doubler"

    def __init__(self, vendor_id: int = 0x1234, device_id: int = 0x11E0) -> None:
        super().__init__(vendor_id=vendor_id, device_id=device_id, class_code=0xFF0000)
        self.add_bar(0, BarKind.MEM32, 0x1000, DoublerRegisters(self))

    def attach(self, ctx: DeviceContext) -> None:
        self.add_msi(ctx.send_msi)  # the MSI capability delivers through the machine

    def complete(self) -> None:
        assert self.msi is not None
        self.msi.notify(0)  # dropped (and counted) while the guest has MSI disabled
