"""Repository-wide pytest setup, for the tests and the notebooks nbmake executes (their kernels
inherit this process's environment, so setting variables here is enough).

- ``ESJAX_SMOKE=1``: notebooks run in smoke mode (small budgets).
- ``XLA_FLAGS``: every program the suite compiles (in this process, in subprocesses and in the
  notebooks' kernels) skips LLVM's optimisation passes: compiling is faster on 2 cores (the
  determinism tests of 10 strategies: 141 s -> 63 s). The HLO passes are the default ones and
  the machine code only less optimised. Not also ``--xla_cpu_use_fusion_emitters=false``: the
  two together (another 1.5x) changed how XLA's CPU backend ranks an all-inf array
  (``searchsorted`` ties: tests/test_pgpe.py's all-NaN generation moved), so the suite would
  test a compiler configuration no user runs. Flags already in ``XLA_FLAGS`` are placed after
  these, so the caller's settings win.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"

os.environ.setdefault("ESJAX_SMOKE", "1")
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
