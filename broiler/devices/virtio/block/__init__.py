"""virtio-blk: the device model (device.py), one request (request.py), the image file (disk.py) and
the IO thread (worker.py)."""

from .device import VirtioBlock
from .disk import DiskImage

__all__ = ["DiskImage", "VirtioBlock"]
