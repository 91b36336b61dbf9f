"""broiler: a KVM virtual machine monitor in Python, built around IO virtualization.

The public API lives in ``broiler.api`` (docs/api.md); importing ``broiler`` itself loads nothing else.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
