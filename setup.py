"""Build the compiled batch kernels (engine/core/_speedups.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the engine runs
its pure-Python twins (engine/core/speedups.py), about a third slower on a blast; `pigeon --version`
says which it runs.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "engine.core._speedups",
            sources=["engine/core/_speedups.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
