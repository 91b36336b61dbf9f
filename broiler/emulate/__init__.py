"""Userspace completion of instructions the host's KVM instruction emulator cannot run."""

from .emulator import decode, emulate, fetch
from .state import EmulationResult, GuestCpu, GuestFault

__all__ = ["EmulationResult", "GuestCpu", "GuestFault", "decode", "emulate", "fetch"]
