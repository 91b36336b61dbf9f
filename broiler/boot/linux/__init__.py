"""Booting Linux: kernel image parsing, boot parameters, firmware tables, CPUID profiles.

Everything here is pure data processing (no KVM): the machine module applies the results.
See docs/linux.md for the addresses and the boot contract.
"""
