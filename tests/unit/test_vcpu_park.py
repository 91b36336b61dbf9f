"""A vCPU thread's side of `broiler pause` (core/vcpu.py), over the fake kvm_run page: pause asks for an
immediate exit, the EINTR path parks on an Event, queued calls run while parked, resume and stop release it."""

from __future__ import annotations

import threading

from broiler.kvm import abi
from tests.unit.test_vcpu_dispatch import Rig


def _park_in_background(rig: Rig) -> threading.Thread:
    """What the vCPU loop does when KVM_RUN returns EINTR after ``pause()``: ``_kicked``, here on a thread."""
    worker = threading.Thread(target=rig.thread._kicked, daemon=True)
    worker.start()
    assert rig.thread.parked.wait(5), "the vCPU thread did not park"
    return worker


def test_pause_parks_at_the_next_eintr_and_resume_releases() -> None:
    rig = Rig()
    rig.thread.pause()
    assert rig.page[abi.RUN_IMMEDIATE_EXIT] == 1  # the next (or current) KVM_RUN returns at once
    worker = _park_in_background(rig)
    assert rig.page[abi.RUN_IMMEDIATE_EXIT] == 0  # cleared: the KVM_RUN after the resume really runs
    intr_exits = rig.thread.exit_counts[abi.KVM_EXIT_INTR]
    rig.thread.resume()
    worker.join(5)
    assert not worker.is_alive() and not rig.thread.parked.is_set()
    assert intr_exits == 1


def test_calls_run_on_the_parked_thread_which_stays_parked() -> None:
    rig = Rig()
    rig.thread.pause()
    worker = _park_in_background(rig)
    ran_on: list[threading.Thread] = []
    done = threading.Event()

    def call() -> None:
        ran_on.append(threading.current_thread())
        done.set()

    rig.thread._calls.append(call)
    rig.thread.kick()  # what call_on_vcpu does once the thread is running
    assert done.wait(5)
    assert ran_on == [worker] and rig.thread.parked.is_set() and worker.is_alive()
    rig.thread.resume()
    worker.join(5)
    assert not worker.is_alive()


def test_a_stop_wakes_a_parked_thread() -> None:
    rig = Rig()
    rig.thread.pause()
    worker = _park_in_background(rig)
    rig.control.stopping = True
    rig.thread.kick()  # Machine.request_exit kicks every vCPU
    worker.join(5)
    assert not worker.is_alive() and not rig.thread.parked.is_set()
