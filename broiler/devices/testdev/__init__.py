"""QEMU's test devices: fw_cfg, pc-testdev, pci-testdev."""
