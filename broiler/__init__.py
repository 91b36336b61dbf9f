"""broiler: a KVM virtual machine monitor in Python, built around IO virtualization."""

__version__ = "0.1.0"
