"""The core: guest memory, the two buses, the vCPU loop, interrupts, doorbells, the event loop."""
