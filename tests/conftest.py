"""Shared fixtures and compiler settings. Shapes stay small: JAX compilation is the cost of this
suite.

Every program the suite compiles (in this process, in subprocesses and in the notebooks'
kernels, which inherit the environment) skips LLVM's optimisation passes and XLA's new CPU
fusion emitters: compiling is 2-4x faster on 2 cores (the determinism tests of 10 strategies:
141 s -> 71 s, the latter on a host twice as loaded). The HLO passes are the default ones;
the machine code is less optimised (the suite's small shapes do not notice) and elementwise
functions may round differently in the last bit, so a test compares only results computed
under these same flags, never numbers recorded by a run with the defaults. Flags already in
``XLA_FLAGS`` are placed after these, so the caller's settings win.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)
