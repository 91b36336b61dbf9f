"""Only for the optional compiled exit loop; everything else is in pyproject.toml.

``optional=True``: where there is no C compiler or no Python headers the build skips the extension
and broiler runs its pure-Python exit loop (broiler/core/vcpu.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("broiler.core._fastexit", ["broiler/core/_fastexit.c"], optional=True,
                             extra_compile_args=["-O2"])])
