"""The control socket: `broiler list`, `stat`, `stop`, `regs`, `pause`, `resume`, `wakeup` and `snapshot` talk to
a running VM.

Each running VM listens on a UNIX stream socket ``<dir>/<name>.sock``, where ``<dir>`` is
``$XDG_RUNTIME_DIR/broiler`` (or ``/tmp/broiler-<uid>``). A client sends one JSON line
(``{"cmd": "info" | "stats" | "stop" | "regs" | "pause" | "resume" | "wakeup"}``, or ``{"cmd": "snapshot",
"path": ABSOLUTE, "stop": BOOL}``) and reads one JSON line back. The protocol is plain so that
``socat - UNIX-CONNECT:...`` works too.

Names: a socket whose owner is gone (connect refused) is stale: it is removed at start-up, by
``broiler list``, and by any client that finds it. A second VM with a live name is refused.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import exitcodes
from ..core.dump import register_dump
from ..core.memory import GuestMemory
from ..core.vcpu import VcpuThread
from ..errors import ConfigError
from ..vmm.snapshot.api import take_snapshot
from .report import device_rows, snapshot_stats

if TYPE_CHECKING:
    from ..vmm.machine import Machine

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def socket_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "broiler" if runtime else Path(f"/tmp/broiler-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def socket_path(name: str) -> Path:
    if not NAME_RE.match(name):
        raise ConfigError(f"bad VM name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return socket_dir() / f"{name}.sock"


def _is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # something is there (busy); do not delete it


class ControlServer:
    def __init__(self, machine: Machine, name: str) -> None:
        self.machine = machine
        self.name = name
        self.path = socket_path(name)
        if self.path.exists():
            if _is_live(self.path):
                raise ConfigError(f"a VM named {name!r} is already running (socket {self.path})")
            self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="broiler-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                try:
                    request = json.loads(_recv_line(conn))
                    reply = self.handle(request.get("cmd", ""), request)
                except Exception as exc:  # a bad client must not take the VM down
                    reply = {"error": str(exc)}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def handle(self, cmd: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        m = self.machine
        if cmd == "info":
            return {
                "name": self.name,
                "pid": os.getpid(),
                "started": self.started,
                "uptime": time.time() - self.started,
                "cpus": m.config.cpus,
                "mem": m.config.mem_size,
                "guest": m.guest_name,
                "stopping": m.stopping,
                **run_state(m),
            }
        if cmd == "stats":
            return {
                "name": self.name,
                "uptime": time.time() - self.started,
                **run_state(m),
                **snapshot_stats(m),
                "devices": device_rows(m),
            }
        if cmd == "stop":
            m.request_exit(exitcodes.INTERRUPTED, "stopped by `broiler stop`")
            return {"ok": True}
        if cmd == "regs":
            return {"vcpus": vcpu_snapshots(m)}
        if cmd in ("pause", "resume"):
            # Pausing a paused VM (or resuming a running one) is an answer, not an error: "changed" says which.
            changed = m.pause_control.pause() if cmd == "pause" else m.pause_control.resume()
            return {"changed": changed, **run_state(m)}
        if cmd == "wakeup":  # QEMU's system_wakeup: end the guest's S3 sleep (vmm/sleep.py)
            return {"changed": m.sleep.wakeup(), **run_state(m)}
        if cmd == "snapshot":
            return self._snapshot(params or {})
        return {"error": f"unknown command {cmd!r}"}

    def _snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        path = params.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            return {"error": "snapshot needs an absolute path"}
        info = take_snapshot(self.machine, path, stop=bool(params.get("stop")))
        return {
            "path": info.path,
            "apparent_size": info.apparent_size,
            "disk_size": info.disk_size,
            "seconds": info.seconds,
        }

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        finally:
            self.path.unlink(missing_ok=True)
        self._thread.join(timeout=1)


def run_state(machine: Machine) -> dict[str, Any]:
    """``state`` (running or paused) and ``state_since`` (wall-clock seconds since the epoch)."""
    state = machine.pause_control.state
    return {"state": state.name, "state_since": state.since}


def vcpu_snapshots(machine: Machine) -> list[str]:
    """Each vCPU's register dump, taken between two KVM_RUNs on its own thread."""
    out = []
    for t in machine.threads:
        box: list[str] = []
        if t.call_on_vcpu(partial(_snapshot, t, machine.memory, box, machine.pause_control.state.name)):
            out.append(box[0] if box else f"vCPU {t.vcpu.id}: no snapshot")
        else:
            out.append(f"vCPU {t.vcpu.id}: did not answer within 2 s")
    return out


def _snapshot(thread: VcpuThread, memory: GuestMemory, box: list[str], state: str) -> None:
    box.append(register_dump(thread, state, memory=memory, snapshot=True))


def _recv_line(conn: socket.socket, limit: int = 1 << 24) -> str:
    chunks = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > limit:
            break
    return b"".join(chunks).decode()


def request(name: str, cmd: str, timeout: float = 10.0, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask the VM ``name``; ConfigError with one clear line if it is unknown or gone."""
    path = socket_path(name)
    if not path.exists():
        raise ConfigError(f"no running VM named {name!r} (see `broiler list`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
            raise ConfigError(f"VM {name!r} is gone (removed its stale socket)") from None
        s.sendall(json.dumps({**(params or {}), "cmd": cmd}).encode() + b"\n")
        reply = _recv_line(s)
    if not reply:
        raise ConfigError(f"VM {name!r} closed the connection without answering")
    data: dict[str, Any] = json.loads(reply)
    if "error" in data:
        raise ConfigError(f"VM {name!r}: {data['error']}")
    return data


def list_vms() -> tuple[list[dict[str, Any]], list[str]]:
    """(info of every live VM, names of stale sockets removed)."""
    live, stale = [], []
    for path in sorted(socket_dir().glob("*.sock")):
        name = path.name[: -len(".sock")]
        if not _is_live(path):
            path.unlink(missing_ok=True)
            stale.append(name)
            continue
        try:
            live.append(request(name, "info", timeout=2.0))
        except (ConfigError, OSError, ValueError):
            continue
    return live, stale
