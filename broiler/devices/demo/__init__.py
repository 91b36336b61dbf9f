"""The seed's demo devices: sync and async PIO/MMIO, coalesced log, PCI demos and DMA."""
