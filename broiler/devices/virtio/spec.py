"""Numbers from the virtio 1.2 specification, by section. Values only, no logic.

The PCI IDs of §4.1.2: a modern function is 0x1040 + device type; a transitional one uses the
legacy table below (it is *not* 0x1000 + type: block is 0x1001, entropy 0x1005).
"""

from __future__ import annotations

# §5: device types
DEVICE_BLOCK = 2
DEVICE_CONSOLE = 3
DEVICE_ENTROPY = 4

# §4.1.2 PCI device discovery
PCI_VENDOR_ID = 0x1AF4
MODERN_DEVICE_ID_BASE = 0x1040
TRANSITIONAL_DEVICE_IDS = {1: 0x1000, DEVICE_BLOCK: 0x1001, DEVICE_CONSOLE: 0x1003, DEVICE_ENTROPY: 0x1005}
MODERN_REVISION = 1  # a non-transitional device must have revision >= 1 (legacy drivers skip it)
MODERN_SUBSYSTEM_ID = 0x40  # non-transitional devices should use 0x40 and up

# §2.1 device status field
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# §6 reserved feature bits (and the legacy-only ones of §6.3)
F_NOTIFY_ON_EMPTY = 24  # legacy
F_ANY_LAYOUT = 27  # legacy
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_VERSION_1 = 32

# §2.7.5 descriptor flags; §2.7.6 / §2.7.8 ring flags
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
DESC_SIZE = 16
USED_ELEM_SIZE = 8

# §4.1.4 PCI capabilities (vendor-specific, cap id 0x09)
PCI_CAP_VENDOR = 0x09
PCI_CAP_COMMON_CFG = 1
PCI_CAP_NOTIFY_CFG = 2
PCI_CAP_ISR_CFG = 3
PCI_CAP_DEVICE_CFG = 4
PCI_CAP_PCI_CFG = 5
MSI_NO_VECTOR = 0xFFFF
ISR_QUEUE = 1
ISR_CONFIG = 2

# §4.1.5.1.3: legacy drivers place the used ring at the next 4096-byte boundary.
LEGACY_VRING_ALIGN = 4096
LEGACY_PFN_SHIFT = 12


def bit(n: int) -> int:
    return 1 << n
