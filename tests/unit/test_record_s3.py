"""An S3 sleep and wake under record/replay, without KVM: the sleep request is an effect of the PM1a_CNT write,
the wake a cause after which replay applies the same device resets as the machine (vmm/wake_reset.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broiler.core.clock import DeviceClock
from broiler.core.memory import MiB
from broiler.devices.legacy import acpi_pm
from broiler.devices.legacy.acpi_pm import PM1A_CNT, PM1A_EVT, RTC_STS, S3_SLP_TYP, SLP_EN, SLP_TYP_SHIFT, WAK_STS
from broiler.devices.legacy.cmos import CMOS_INDEX, REG_B, REG_B_AIE
from broiler.devices.legacy.hpet import ENABLE_CNF, GEN_CONF, HPET_BASE
from broiler.vmm import recording as rec
from broiler.vmm.config import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.recorder import Recorder, recording_header
from broiler.vmm.replay import Replayer, replay_config
from broiler.vmm.wake_reset import WakeReset

SLEEP = (S3_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN


class HostTime:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        self.ns += 1_000_000
        return self.ns


def _record_sleep_and_wake(path: Path, *, by_rtc: bool) -> list[int]:
    """Arm the RTC alarm and enable the HPET, sleep, wake, then read what the wake reset; returns those reads."""
    clock = DeviceClock(HostTime(), lambda: 1_795_000_000.0)
    sketch = PlatformSketch(MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None), clock)
    wake = WakeReset(sketch.acpi_pm, sketch.rtc, sketch.devices)  # before the guest runs, as the machine's
    clock.start()
    pio, mmio = sketch.pio_bus, sketch.mmio_bus
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(sketch.config, [], sketch, "s3"))
        recorder.attach(sketch)
        pio.write(CMOS_INDEX, 1, REG_B)
        pio.write(CMOS_INDEX + 1, 1, REG_B_AIE | 0x02)  # alarm interrupts on, 24-hour mode
        mmio.write(HPET_BASE + GEN_CONF, 8, ENABLE_CNF)
        pio.write(PM1A_CNT, 2, SLEEP)
        wake.wake(by_rtc=by_rtc, observer=sketch.observer)
        reads = [pio.read(PM1A_EVT, 2), mmio.read(HPET_BASE + GEN_CONF, 8)]
        pio.write(CMOS_INDEX, 1, REG_B)
        reads.append(pio.read(CMOS_INDEX + 1, 1))
        recorder.close()
    return reads


def _events(path: Path) -> tuple[dict[str, object], list[rec.Event]]:
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        return header, list(rec.read_events(f, str(path)))


def _replay(header: dict[str, object], events: list[rec.Event]) -> Replayer:
    replayer = Replayer(replay_config(header, None), show=100)
    replayer.run(events)
    return replayer


@pytest.mark.parametrize("by_rtc", [True, False])
def test_a_recorded_wake_is_replayed_with_the_same_device_resets(tmp_path: Path, by_rtc: bool) -> None:
    path = tmp_path / "s3.rec"
    pm1_status, hpet_conf, rtc_b = _record_sleep_and_wake(path, by_rtc=by_rtc)
    assert pm1_status == WAK_STS | (RTC_STS if by_rtc else 0) and hpet_conf == 0 and not rtc_b & REG_B_AIE
    header, events = _events(path)
    kinds = [e.kind for e in events]
    sleep_at = kinds.index(rec.S3_SLEEP)
    assert events[sleep_at - 1].kind == rec.PIO_WRITE and events[sleep_at - 1].value == SLEEP  # its cause
    wake = events[kinds.index(rec.S3_WAKE)]
    assert wake.value == int(by_rtc) and wake.describe().endswith("the RTC alarm" if by_rtc else "command")
    assert _replay(header, events).result.divergences == 0


def test_without_its_wake_a_replay_diverges_at_each_read_the_reset_changed(tmp_path: Path) -> None:
    """The resets happen in replay only because the recording says the machine woke."""
    path = tmp_path / "s3.rec"
    _record_sleep_and_wake(path, by_rtc=True)
    header, events = _events(path)
    wake = [e.kind for e in events].index(rec.S3_WAKE)
    # Drop the wake and what its resets did (the clock reads of the HPET's reset): the rest as recorded.
    following = next(i for i in range(wake + 1, len(events)) if events[i].kind in rec.CAUSES)
    result = _replay(header, events[:wake] + events[following:]).result
    assert [d.recorded for d in result.first] == [f"{WAK_STS | RTC_STS:#x}", "0x0", "0x2"]
    assert [d.cause.split()[:2] for d in result.first] == [["pio", "read"], ["mmio", "read"], ["pio", "read"]]


def test_a_model_that_no_longer_asks_for_the_sleep_diverges_at_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s3.rec"
    _record_sleep_and_wake(path, by_rtc=True)
    header, events = _events(path)
    monkeypatch.setattr(acpi_pm, "S3_SLP_TYP", 2)  # the changed model sleeps on another SLP_TYP
    first = _replay(header, events).result.first[0]
    assert first.cause == f"pio write {PM1A_CNT:#x}/2 value {SLEEP:#x}"
    assert (first.recorded, first.now) == ("S3 sleep requested", "nothing more")
