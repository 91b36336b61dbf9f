"""Kernel loaders: they parse an image, write it into guest RAM and say how to enter it (sans-KVM)."""
