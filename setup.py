"""Only the optional C accelerator lives here; everything else is in setup.cfg.

``optional=True``: without a C compiler the build goes on and sipproxy runs
its pure-Python parser, which gives the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("sipproxy.message._speedups", ["sipproxy/message/_speedups.c"], optional=True),
    ],
)
