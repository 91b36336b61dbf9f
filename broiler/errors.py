"""Exception types, split by who is at fault (as h11 does).

- ``ConfigError``: the user asked for something impossible (bad size, missing file, overlap of two
  devices they configured). The CLI prints its message on one line and exits non-zero.
- ``KvmUnavailable``: the host cannot run VMs at all (no /dev/kvm, no permission, old API,
  missing capability). Tests skip with its message unless BROILER_REQUIRE_KVM=1.
- ``GuestMemoryError``: a guest-physical access outside RAM. Raised to device code, which turns it
  into a device-level error status; it never reaches the vCPU loop as a crash.
- ``BroilerError``: the base class; anything else is a bug in broiler.
"""


class BroilerError(Exception):
    """Base class of every error broiler raises on purpose."""


class ConfigError(BroilerError):
    """Bad user input or configuration: one clear line for the user."""


class KvmUnavailable(BroilerError):
    """The host cannot run KVM guests (device missing, permission, API version, capability)."""


class KvmError(BroilerError):
    """An ioctl failed where it should not have."""

    def __init__(self, what: str, errno: int, strerror: str) -> None:
        super().__init__(f"{what} failed: {strerror} (errno {errno})")
        self.errno = errno


class GuestMemoryError(BroilerError):
    """A guest-physical access that is not wholly inside guest RAM."""


class OverlapError(ConfigError):
    """Two registrations claim the same addresses."""


class SnapshotError(ConfigError):
    """A snapshot file that cannot be restored (damaged, truncated, foreign, from another broiler, or not
    fitting the machine): one clear line, exit 2, like any other bad input."""
