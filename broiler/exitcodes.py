"""Process exit statuses of ``broiler run``.

Odd statuses belong to the guest: isa-debug-exit turns a write of v into (v << 1) | 1. Broiler's own
statuses are therefore all even, so a script can always tell who ended the run.
"""

OK = 0  # the guest powered off, reset, or a flat64 guest halted
USAGE = 2  # bad command line or configuration (one line on stderr)
NO_KVM = 4  # this host cannot run KVM guests
GUEST_FATAL = 6  # triple fault, emulation failure, entry failure: register dump on stderr
TIMEOUT = 8  # --timeout expired
INTERNAL = 10  # a bug in broiler (traceback on stderr)
USER_QUIT = 12  # the user ended the VM at the console (Ctrl-A x)
DEVICE_FAULT = 14  # a user's device raised or answered a read with a non-int / too large a value
DIVERGED = 16  # `broiler replay`: the devices answered or acted differently from the recording
INTERRUPTED = 130  # Ctrl-C, SIGTERM or `broiler stop`

NAMES = {
    OK: "ok",
    USAGE: "usage",
    NO_KVM: "no-kvm",
    GUEST_FATAL: "guest-fatal",
    TIMEOUT: "timeout",
    INTERNAL: "internal-error",
    USER_QUIT: "user-quit",
    DEVICE_FAULT: "device-fault",
    DIVERGED: "diverged",
    INTERRUPTED: "interrupted",
}


def describe(status: int) -> str:
    if status & 1:
        return f"guest debug exit, value {status >> 1:#x}"
    return NAMES.get(status, f"status {status}")
