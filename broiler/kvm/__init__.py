"""The only package that knows KVM ioctl numbers and structure layouts."""

from .ioctls import DEFAULT_KVM_PATH, Kvm, Vcpu, Vm

__all__ = ["DEFAULT_KVM_PATH", "Kvm", "Vcpu", "Vm"]
